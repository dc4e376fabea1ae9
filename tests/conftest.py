"""Shared fixtures: a tiny demo corpus generated once per session, and fresh stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featstore.store import FeatureStore


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-clip demo corpus (read-only for tests: copy it with `corpus_copy` before changing files)."""
    from featstore.demo_data import generate

    return generate(tmp_path_factory.mktemp("demo") / "corpus", n=12, seed=0)


@pytest.fixture
def corpus_copy(demo_corpus: Path, tmp_path: Path) -> Path:
    """A private copy of the demo corpus that a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(demo_corpus, dst)
    return dst


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    """An empty store in a temporary folder."""
    return FeatureStore(tmp_path / "fs.zarr", create=True)
