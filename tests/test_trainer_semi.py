"""MER-SEMI pseudo-labelling: out-of-fold thresholds, selection from the pool, retraining on the same folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featstore.errors import FeatstoreError
from trainer.data import FeatureSet, load_features
from trainer.protocol import Protocol
from trainer import semi as semi_mod
from trainer.semi import class_thresholds, run_semi, select

PROTO = Protocol(epochs=4, folds="cv3", lr=1e-3)


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> FeatureSet:
    from trainer.synthetic import make_store

    store = make_store(tmp_path_factory.mktemp("semi") / "s.zarr", n_train=150, n_test=160,
                       dims={"a1": ("audio", 12), "v1": ("visual", 10)}, signal=2.0)
    f = load_features(store, "synth", audio=["a1"], video=["v1"])
    test = f.subsets["test1"]
    idx = np.flatnonzero(test)
    pool = np.zeros(f.n, bool)
    pool[idx[40:]] = True                                 # 120 rows become the unlabelled pool
    test1 = test & ~pool
    emotion = f.emotion.clone()
    emotion[torch.from_numpy(np.flatnonzero(pool))] = -1
    return FeatureSet(**{**f.__dict__, "subsets": {"train": f.subsets["train"], "test1": test1, "pool": pool},
                         "emotion": emotion})


def test_thresholds_come_from_out_of_fold_correct_predictions(fs: FeatureSet) -> None:
    from trainer.fit import run_experiment

    res = run_experiment(fs, "attention", PROTO)
    thr = class_thresholds(res, 0.5)
    oof = res.heldout_outputs[(0, 0)]
    probs = torch.softmax(torch.from_numpy(oof["emotion"]).double(), 1).numpy()
    pred, conf = probs.argmax(1), probs.max(1)
    for c in range(len(fs.classes)):
        ok = (pred == c) & (oof["true"] == c)
        assert thr[c] == (pytest.approx(np.quantile(conf[ok], 0.5)) if ok.any() else np.inf)
    rows, codes = select(res, fs, "pool", thr)
    p = res.predictions("pool")
    assert set(rows) <= set(np.flatnonzero(fs.subsets["pool"])) and len(rows) > 0
    assert all(p["probs"][list(p["ids"]).index(fs.ids[r])].max() >= thr[c] for r, c in zip(rows, codes))


def test_semi_round_retrains_with_pseudo_labels_on_the_same_folds(fs: FeatureSet) -> None:
    rep = run_semi(fs, "attention", PROTO, pool="pool", eta=0.5, rounds=1)
    rnd = rep.rounds[0]
    assert rnd.result is not None and sum(rnd.selected.values()) > 0
    sup, new = rep.supervised, rnd.result
    assert "pool" in sup.test_ids and "pool" not in new.test_ids and "test1" in new.test_ids
    # same folds: the held-out rows of every fold are identical, and never contain pool rows
    sup_held = {f: r for (c, s), o in sup.heldout_outputs.items() for f, r in [(s, tuple(o["rows"]))]}
    new_held = {f: r for (c, s), o in new.heldout_outputs.items() for f, r in [(s, tuple(o["rows"]))]}
    assert sup_held == new_held
    pool_rows = set(np.flatnonzero(fs.subsets["pool"]))
    assert not pool_rows & set(sup_held[0])
    plan = PROTO.plan(fs.with_pseudo_labels(*select(sup, fs, "pool", class_thresholds(sup, 0.5))), 0)
    for f in plan.folds:
        assert len(pool_rows & set(f.train)) == sum(rnd.selected.values())
        assert not pool_rows & set(f.select)


def test_a_round_that_selects_nothing_is_reported_not_retrained(fs: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semi_mod, "class_thresholds", lambda res, eta, config=0: np.full(len(fs.classes), np.inf))
    rep = run_semi(fs, "attention", PROTO, pool="pool", rounds=2)
    assert len(rep.rounds) == 1 and rep.rounds[0].result is None and "no retrain" in rep.notes[-1]
    with pytest.raises(FeatstoreError, match="no subset 'semi'"):
        run_semi(fs, "attention", PROTO, pool="semi")
    with pytest.raises(FeatstoreError, match="overlaps the training rows"):
        run_semi(fs, "attention", PROTO, pool="train")
