"""Shared fixtures: a tiny demo corpus generated once per session, and fresh stores; trainer.native's kernel is
compiled into a cache of the session's own (a test run never depends on, nor writes to, ~/.cache)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from featstore.store import FeatureStore


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FEATSTORE_KERNEL_CACHE for this session (subprocesses inherit it)."""
    from trainer import native

    before = os.environ.get("FEATSTORE_KERNEL_CACHE")
    path = tmp_path_factory.mktemp("kernels")
    os.environ["FEATSTORE_KERNEL_CACHE"] = str(path)
    native.reset()
    yield path
    if before is None:
        os.environ.pop("FEATSTORE_KERNEL_CACHE", None)
    else:
        os.environ["FEATSTORE_KERNEL_CACHE"] = before
    native.reset()


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
