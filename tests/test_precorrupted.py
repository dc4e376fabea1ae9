"""MER-NOISE clips already carry the challenge's noise: a noise corruption leaves them as the release made them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from featstore.build import BuildOptions, build
from featstore.catalog import load_catalog
from featstore.corrupt import make_corruptor, protect
from featstore.datasets import load_index
from featstore.store import FeatureStore, KeyName


def test_protect_marks_only_noise_and_blur_corruptions(demo_corpus: Path) -> None:
    cat = load_catalog()
    index = load_index("demo", demo_corpus, cat)
    assert protect(make_corruptor(cat.corruption("snr5-10")), index, ["test1"]) == int(index.subsets["test1"].sum())
    assert protect(make_corruptor(cat.corruption("punc-all")), index, ["test1"]) == 0


def test_precorrupted_subset_is_encoded_as_is_under_a_noise_key(demo_corpus: Path, tmp_path: Path,
                                                               monkeypatch) -> None:  # noqa: ANN001
    cat = load_catalog()
    demo = dataclasses.replace(cat.datasets["demo"], precorrupted=("test1",))
    cat2 = dataclasses.replace(cat, datasets={**cat.datasets, "demo": demo})
    store = FeatureStore(tmp_path / "s.zarr", create=True)
    opts = BuildOptions(rows_per_chunk=4)
    build(store, "demo", "egemaps", root=demo_corpus, options=opts, catalog=cat2)
    build(store, "demo", "egemaps", "snr5-10", options=opts, catalog=cat2)
    clean = store.read("demo", "egemaps")
    noisy = store.read("demo", "egemaps", corruption="snr5-10")
    test = store.subsets("demo")["test1"]
    assert np.array_equal(clean[test], noisy[test])                # left as they were
    assert not np.array_equal(clean[~test], noisy[~test])          # the others got noise
    drawn = store.open_key(KeyName("demo", "egemaps", "snr5-10")).drawn_params()
    ids = store.ids("demo")
    assert all(drawn[sid] == {"kept": "the release already corrupted this clip"} for sid in ids[test])
