"""Cross-corpus: train on one dataset, test on another over the classes they share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import FeatstoreError
from trainer.cross import merge, shared_classes
from trainer.data import FeatureSet, load_features
from trainer.fit import run_experiment
from trainer.protocol import Protocol

DIMS = {"a1": ("audio", 10), "v1": ("visual", 8)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSet, FeatureSet]:
    from trainer.synthetic import make_store

    path = tmp_path_factory.mktemp("cross") / "s.zarr"
    make_store(path, dataset="dsa", n_train=120, n_test=30, dims=DIMS, signal=2.0)
    make_store(path, dataset="dsb", n_train=60, n_test=40, dims=DIMS, signal=2.0, proportions=(0.3, 0.3, 0.2, 0.2))
    a = load_features(path, "dsa", audio=["a1"], video=["v1"])
    b = load_features(path, "dsb", audio=["a1"], video=["v1"])
    return a, dataclasses.replace(b, classes=["Neutral", "anger", "joy", "sadness"])   # MELD-style names


def test_shared_labels_through_synonyms_and_the_merged_layout(pair: tuple[FeatureSet, FeatureSet]) -> None:
    a, b = pair
    assert shared_classes(a, b) == ["neutral", "angry", "happy", "sad"]
    m = merge(a, b)
    assert m.n == a.n + b.n and m.classes == ["neutral", "angry", "happy", "sad"]
    assert m.subsets["dsb"].sum() == b.n and m.subsets["dsb:test1"].sum() == b.subsets["test1"].sum()
    ea, eb = a.emotion.numpy(), m.emotion.numpy()
    assert (eb[:a.n][ea >= 4] == -1).all()                                 # worried / surprise: unlabelled
    assert (eb[:a.n][ea < 4] == ea[ea < 4]).all() and (eb[a.n:] == b.emotion.numpy()).all()
    assert "left unlabelled: worried, surprise" in m.warnings[-1]
    res = run_experiment(m, "attention", Protocol(epochs=3, folds="cv3", lr=1e-3))
    assert "dsb" in res.test_ids and len(res.test_ids["dsb"]) == b.n
    row = next(r for r in res.rows if r["split"] == "dsb" and r["fold"] == -1)
    assert np.isfinite(row["waf"]) and row["n"] == b.n
    assert all(not set(j) & set(range(a.n, a.n + b.n)) for j in [res.heldout_outputs[(0, 0)]["rows"]])


def test_pairs_without_shared_labels_are_refused(pair: tuple[FeatureSet, FeatureSet]) -> None:
    a, b = pair
    with pytest.raises(FeatstoreError, match="share no emotion labels"):
        merge(a, dataclasses.replace(b, classes=["bored", "tired", "calm", "excited?"]))
    with pytest.raises(FeatstoreError, match="one is scored on sentiment"):
        merge(a, dataclasses.replace(b, selection="sentiment"))


def test_sentiment_pairs_meet_on_a_normalised_scale(pair: tuple[FeatureSet, FeatureSet]) -> None:
    import torch

    a, b = pair
    mosi = dataclasses.replace(a, selection="sentiment", emotion=None, classes=[],
                               valence=torch.clamp(a.valence, -3, 3))          # [-3, 3]
    sims = dataclasses.replace(b, selection="sentiment", emotion=None, classes=[],
                               valence=torch.clamp(b.valence / 3, -1, 1))      # [-1, 1]
    m = merge(mosi, sims)
    v = m.valence.numpy()
    assert np.allclose(v[:a.n], mosi.valence.numpy() / 3, equal_nan=True)
    assert np.allclose(v[a.n:], sims.valence.numpy(), equal_nan=True) and np.nanmax(np.abs(v)) <= 1
    assert m.emotion is None and m.classes == []
