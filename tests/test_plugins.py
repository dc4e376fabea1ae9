"""featstore.plugins: catalog names resolve to modules; missing implementations fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.catalog import load_catalog
from featstore.datasets import load_index
from featstore.encoders import load_encoder
from featstore.errors import FeatstoreError
from featstore.plugins import plugin_module


def test_names_map_to_modules() -> None:
    assert plugin_module("featstore.encoders", "hf-audio", "family").__name__ == "featstore.encoders.hf_audio"


def test_unimplemented_adapter_is_named(tmp_path: Path) -> None:
    import dataclasses

    cat = load_catalog()
    odd = dataclasses.replace(cat.datasets["meld"], adapter="meld-v2")
    cat = dataclasses.replace(cat, datasets={**cat.datasets, "meld": odd})
    with pytest.raises(FeatstoreError, match=r"dataset meld: adapter 'meld-v2' is not implemented"):
        load_index("meld", tmp_path, cat)


def test_import_only_and_remote_code_encoders_are_refused_in_one_line() -> None:
    cat = load_catalog()
    with pytest.raises(FeatstoreError, match="import-only"):
        load_encoder(cat.encoder("vggish"))
    with pytest.raises(FeatstoreError, match="--trust-remote-code"):
        load_encoder(cat.encoder("chatglm2-6b"))
