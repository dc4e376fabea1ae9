"""Predictions streamed from the store in chunks equal the in-memory test predictions of the same models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import FeatstoreError, UnknownNameError
from trainer.data import load_features
from trainer.fit import run_experiment
from trainer.predict import predict_split, write_submission
from trainer.protocol import Protocol


@pytest.mark.parametrize("mode", ["mertools", "strict"])
def test_streamed_predictions_equal_the_experiment_outputs(tmp_path: Path, mode: str) -> None:
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=90, n_test=50, dims={"a1": ("audio", 8), "v1": ("visual", 6)},
                       test_labels=False)
    fs = load_features(store, "synth", audio=["a1"], video=["v1"])
    res = run_experiment(fs, "attention", Protocol(epochs=3, folds="cv3", seeds=(0, 1), mode=mode), keep_models=True)
    want = res.predictions("test1")
    chunks = list(predict_split(res, fs, store, "test1", chunk=16))
    assert len(chunks) == 4                                                   # 50 rows, 16 at a time
    got_ids = np.concatenate([c["ids"] for c in chunks])
    assert list(got_ids) == list(want["ids"])
    np.testing.assert_allclose(np.concatenate([c["logits"] for c in chunks]), want["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([c["valence"] for c in chunks]), want["valence"], rtol=1e-5, atol=1e-6)
    n = write_submission(iter(chunks), fs.classes, tmp_path / "sub.csv", probabilities=True)
    rows = list(csv.DictReader(open(tmp_path / "sub.csv", encoding="utf-8")))
    assert n == 50 and rows[0]["name"] == want["ids"][0] and rows[0]["discrete"] == want["predicted"][0]
    assert abs(sum(float(rows[0][f"prob_{c}"]) for c in fs.classes) - 1) < 1e-5


def test_models_must_be_kept_and_the_split_must_exist(tmp_path: Path) -> None:
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=60, n_test=20, dims={"a1": ("audio", 8)})
    fs = load_features(store, "synth", audio=["a1"])
    res = run_experiment(fs, "mlp", Protocol(epochs=1, folds="cv3"))
    with pytest.raises(FeatstoreError, match="keep_models=True"):
        next(predict_split(res, fs, store, "test1"))
    res = run_experiment(fs, "mlp", Protocol(epochs=1, folds="cv3"), keep_models=True)
    with pytest.raises(UnknownNameError, match="test2"):
        next(predict_split(res, fs, store, "test2"))
