"""MER-SEMI: confidence-based pseudo-labelling of an unlabelled pool (MERBench, Algorithm 1).

1. Train the supervised model (every fold and seed) with the pool as a predict-only test split.
2. Class thresholds: for each class c, the eta-quantile of the max-softmax confidences of the labelled
   training rows that the out-of-fold models predicted correctly as c. Out-of-fold: each row is scored by
   the one fold model that never trained on it.
3. Pool rows whose fold-averaged prediction clears its class's threshold get that class as a pseudo-label.
4. Retrain with them added to every fold's training rows (never to a held-out fold or a selection split), on
   the same folds and test splits, and compare with the supervised model. More rounds repeat 2-4 with the
   newest model.
The pool's pseudo-labels come from the fold-averaged models, which together saw every labelled row, as in
MERBench; the CV figure of a retrained model is therefore slightly optimistic, the test splits are not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.errors import FeatstoreError
from trainer.data import FeatureSet
from trainer.experiment import ExperimentResult
from trainer.fit import run_experiment
from trainer.protocol import Protocol


@dataclass
class SemiRound:
    """One pseudo-labelling round: thresholds per class, what was selected, and the retrained result."""

    round: int
    thresholds: dict[str, float]
    selected: dict[str, int]                      # class -> pool rows pseudo-labelled with it
    result: ExperimentResult | None               # None when nothing was selected (no retrain)


@dataclass
class SemiReport:
    supervised: ExperimentResult
    rounds: list[SemiRound] = field(default_factory=list)
    pool: str = "semi_pool"
    notes: list[str] = field(default_factory=list)


def class_thresholds(result: ExperimentResult, eta: float, config: int = 0) -> np.ndarray:
    """[C] thresholds: the eta-quantile of out-of-fold max-softmax confidences of correct predictions per class
    (inf for a class never predicted correctly: nothing is pseudo-labelled with it)."""
    C = len(result.classes)
    confs: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for (ci, _seed), oof in result.heldout_outputs.items():
        if ci != config or "emotion" not in oof or "true" not in oof:
            continue
        probs = torch.softmax(torch.from_numpy(oof["emotion"]).double(), dim=1).numpy()
        pred = probs.argmax(axis=1)
        ok = (pred == oof["true"]) & (oof["true"] >= 0)
        confs.append(probs.max(axis=1)[ok])
        preds.append(pred[ok])
    conf, pred = (np.concatenate(confs), np.concatenate(preds)) if confs else (np.zeros(0), np.zeros(0, int))
    return np.array([np.quantile(conf[pred == c], eta) if (pred == c).any() else np.inf for c in range(C)])


def select(result: ExperimentResult, features: FeatureSet, pool: str, thresholds: np.ndarray,
           config: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `features`, class codes) of the pool samples whose prediction clears its class's threshold."""
    p = result.predictions(pool, config)
    conf, pred = p["probs"].max(axis=1), p["pred"]
    keep = conf >= thresholds[pred]
    pos = {sid: i for i, sid in enumerate(features.ids)}
    rows = np.array([pos[sid] for sid in p["ids"][keep]], np.int64)
    return rows, pred[keep].astype(np.int64)


def without_split(result: ExperimentResult, split: str) -> ExperimentResult:
    """The result minus one test split's rows and outputs (the pool: its labels are pseudo or absent)."""
    return dataclasses.replace(result, rows=[r for r in result.rows if r["split"] != split],
                               test_outputs={k: v for k, v in result.test_outputs.items() if k[2] != split})


def run_semi(features: FeatureSet, fusion: str, protocol: Protocol, config: dict[str, Any] | None = None, *,
             pool: str = "semi_pool", eta: float = 0.5, rounds: int = 1, max_models: int | None = None) -> SemiReport:
    """Supervised model, then `rounds` of pseudo-labelling and retraining (see the module docstring)."""
    if pool not in features.subsets:
        raise FeatstoreError(f"dataset {features.dataset} has no subset '{pool}' to pseudo-label "
                             f"(subsets: {', '.join(features.subsets)})")
    if not 0 < eta < 1:
        raise FeatstoreError(f"--eta must be in (0, 1), got {eta}")
    if features.emotion is None or not features.classes:
        raise FeatstoreError(f"dataset {features.dataset}: pseudo-labelling needs discrete emotion labels")
    labelled_pool = int((features.emotion.numpy()[features.subsets[pool]] >= 0).sum())
    tests = protocol.test_splits
    first = run_experiment(features, fusion, protocol.replace(test_splits=None if tests is None else
                                                              tuple(dict.fromkeys((*tests, pool)))),
                           config, max_models=max_models)
    if pool not in first.test_ids:
        raise FeatstoreError(f"subset '{pool}' overlaps the training rows; it cannot be the unlabelled pool")
    report = SemiReport(supervised=first, pool=pool)
    if labelled_pool:
        report.notes.append(f"{labelled_pool} '{pool}' row(s) carry labels; they are treated as unlabelled")
    current = first
    keep_tests = tuple(s for s in first.test_ids if s != pool)
    for k in range(1, rounds + 1):
        thr = class_thresholds(current, eta)
        rows, codes = select(current, features, pool, thr)
        counts = {c: int((codes == i).sum()) for i, c in enumerate(features.classes)}
        thresholds = {c: float(thr[i]) for i, c in enumerate(features.classes)}
        if len(rows) == 0:
            report.rounds.append(SemiRound(k, thresholds, counts, None))
            report.notes.append(f"round {k}: no pool sample cleared its class threshold (eta {eta}); no retrain")
            break
        fs = features.with_pseudo_labels(rows, codes)
        more = tuple(dict.fromkeys((*keep_tests, pool))) if k < rounds else keep_tests
        current = run_experiment(fs, fusion, protocol.replace(test_splits=more), config, max_models=max_models)
        report.rounds.append(SemiRound(k, thresholds, counts, current))
    return report
