"""Scores as MERTools computes them: ACC, WAF, valence MSE, sentiment sign scores.

The formulas are scikit-learn's (`accuracy_score`, `f1_score(average='weighted', zero_division=0)`,
`mean_squared_error`, `confusion_matrix`), written in numpy here so that a `trainer` command does not pay scikit-learn's 1.4 s
import; tests/test_trainer_metrics.py checks them against scikit-learn on random labels.

MERTools (MER2024/toolkit/dataloader/*.py `calculate_results`, toolkit/utils/metric.py):
- emotion: argmax of the logits; `accuracy_score` and `f1_score(average='weighted')` (WAF);
- valence: `mean_squared_error`; MER2023 selects on `WAF - 0.25 * MSE` (`overall_metric`);
- sentiment (CMU-MOSI/MOSEI, SIMS, SIMS v2): the regression output is scored as binary -- samples whose
  label is 0 are dropped, then ACC/WAF of `label > 0` against `prediction > 0`.
Unlabelled rows (emotion code -1, NaN valence) are left out here, never scored as a class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SELECTIONS = ("waf", "waf-0.25mse", "sentiment")
MSE_WEIGHT = 0.25  # MERTools overall_metric: emo_fscore - val_mse * 0.25


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy: the share of rows predicted right (scikit-learn's accuracy_score)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def waf(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted-average F1 over the labels of truth and prediction, weighted by their support in the truth; a
    class never predicted (or never true) scores 0 (scikit-learn's f1_score(average='weighted', zero_division=0))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels, inv = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = inv[:len(y_true)], inv[len(y_true):]
    L = len(labels)
    tp = np.bincount(t[t == p], minlength=L).astype(np.float64)
    support = np.bincount(t, minlength=L).astype(np.float64)
    predicted = np.bincount(p, minlength=L).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(L), where=denom > 0)
    total = support.sum()
    return float((f1 * support).sum() / total) if total > 0 else 0.0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts, rows the true class, columns the predicted one (scikit-learn's
    confusion_matrix with labels=range(n_classes); codes outside that range are not counted)."""
    t, p = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_classes)
    return np.bincount(t[ok] * n_classes + p[ok], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean squared error (scikit-learn's mean_squared_error)."""
    d = np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)
    return float(np.mean(d * d))


def mer2023_score(waf_value: float, mse_value: float) -> float:
    """The MER2023 selection score: WAF - 0.25 x valence MSE."""
    return float(waf_value - MSE_WEIGHT * mse_value)


def sentiment_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, int]:
    """(ACC, WAF, n) of the sign, zero labels dropped (MERTools' CMU/SIMS scoring)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    keep = np.isfinite(y_true) & (y_true != 0)
    if not keep.any():
        return math.nan, math.nan, 0
    t, p = y_true[keep] > 0, y_pred[keep] > 0
    return accuracy(t, p), waf(t, p), int(keep.sum())


@dataclass(frozen=True)
class Scores:
    """The figures of one prediction against its labels (NaN where the labels do not allow a figure)."""

    acc: float = math.nan
    waf: float = math.nan
    mse: float = math.nan
    score: float = math.nan   # the selection score (WAF, WAF - 0.25 MSE, or the sentiment WAF)
    n: int = 0                # rows scored (labelled rows; non-zero labels for sentiment)

    def as_dict(self) -> dict[str, float | int]:
        return {"acc": self.acc, "waf": self.waf, "mse": self.mse, "score": self.score, "n": self.n}


def score(selection: str, *, emotion: np.ndarray | None = None, logits: np.ndarray | None = None,
          valence: np.ndarray | None = None, valence_pred: np.ndarray | None = None) -> Scores:
    """Score one prediction the way `selection` says.

    emotion: [n] int codes, -1 = unlabelled; logits: [n, C]. valence / valence_pred: [n] float, NaN = unlabelled
    (for sentiment datasets these are the sentiment labels and the regression output). A split without labels
    gets NaN figures and n = 0 (predict-only).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection '{selection}'; expected one of {', '.join(SELECTIONS)}")
    m = math.nan
    if valence is not None and valence_pred is not None:
        v = np.asarray(valence, np.float64)
        have = np.isfinite(v)
        if have.any():
            m = mse(v[have], np.asarray(valence_pred, np.float64)[have])
    if selection == "sentiment":
        if valence is None or valence_pred is None:
            return Scores(mse=m)
        acc, w, n = sentiment_scores(valence, valence_pred)
        return Scores(acc=acc, waf=w, mse=m, score=w, n=n)
    acc = w = math.nan
    n = 0
    if emotion is not None and logits is not None:
        y = np.asarray(emotion)
        have = y >= 0
        n = int(have.sum())
        if n:
            pred = np.asarray(logits)[have].argmax(axis=1)
            acc, w = accuracy(y[have], pred), waf(y[have], pred)
    if n == 0 and not math.isfinite(m):
        return Scores()
    s = w
    if selection == "waf-0.25mse" and math.isfinite(m):
        s = mer2023_score(w, m)
    if n == 0:  # valence only (e.g. a split with valence but no emotion labels)
        n = int(np.isfinite(np.asarray(valence, np.float64)).sum()) if valence is not None else 0
    return Scores(acc=acc, waf=w, mse=m, score=s, n=n)
