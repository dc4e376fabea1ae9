"""trainer.metrics: the figures equal scikit-learn's on random labels; MERTools' sentiment and MER2023 rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

from trainer.metrics import Scores, mer2023_score, score, sentiment_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emotion_scores_equal_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 200)
    logits = rng.normal(size=(200, 6))
    y[rng.random(200) < 0.1] = -1  # unlabelled rows are left out
    s = score("waf", emotion=y, logits=logits)
    keep = y >= 0
    pred = logits.argmax(1)[keep]
    assert s.acc == pytest.approx(accuracy_score(y[keep], pred), abs=0)
    assert s.waf == pytest.approx(f1_score(y[keep], pred, average="weighted"), abs=0)
    assert s.score == s.waf and s.n == keep.sum() and math.isnan(s.mse)


def test_valence_mse_and_the_mer2023_selection_score() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 100)
    logits = rng.normal(size=(100, 6))
    v, vp = rng.normal(size=100), rng.normal(size=100)
    v[:7] = np.nan  # no valence label: not scored
    s = score("waf-0.25mse", emotion=y, logits=logits, valence=v, valence_pred=vp)
    m = mean_squared_error(v[7:], vp[7:])
    w = f1_score(y, logits.argmax(1), average="weighted")
    assert s.mse == pytest.approx(m) and s.waf == pytest.approx(w)
    assert s.score == pytest.approx(w - 0.25 * m) == pytest.approx(mer2023_score(w, m))
    assert score("waf", emotion=y, logits=logits, valence=v, valence_pred=vp).score == pytest.approx(w)


def test_sentiment_scores_the_sign_with_zero_labels_dropped() -> None:
    """MERTools' CMU/SIMS calculate_results: non-zero labels only, (label > 0) vs (prediction > 0)."""
    rng = np.random.default_rng(4)
    y = np.round(rng.uniform(-3, 3, 300) * 2) / 2  # many exact zeros
    pred = y + rng.normal(0, 1.5, 300)
    nz = y != 0
    acc, w, n = sentiment_scores(y, pred)
    assert n == nz.sum() and n < 300
    assert acc == pytest.approx(accuracy_score(y[nz] > 0, pred[nz] > 0))
    assert w == pytest.approx(f1_score(y[nz] > 0, pred[nz] > 0, average="weighted"))
    s = score("sentiment", valence=y, valence_pred=pred)
    assert (s.acc, s.waf, s.score, s.n) == (acc, w, w, n)
    assert s.mse == pytest.approx(mean_squared_error(y, pred))


def test_predict_only_splits_get_nan_figures() -> None:
    s = score("waf", emotion=np.full(10, -1), logits=np.zeros((10, 6)))
    assert s == Scores() and s.n == 0 and math.isnan(s.waf)
    with pytest.raises(ValueError, match="selection"):
        score("f1", emotion=np.zeros(3, int), logits=np.zeros((3, 2)))


@pytest.mark.parametrize("seed", range(6))
def test_numpy_scores_equal_scikit_learns(seed: int) -> None:
    from sklearn.metrics import accuracy_score, f1_score, mean_squared_error

    from trainer.metrics import accuracy, mse, waf

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    t = rng.integers(0, 6, n)
    p = rng.integers(0, 4 + seed % 3, n)          # some classes never predicted, some predicted but never true
    assert waf(t, p) == pytest.approx(f1_score(t, p, average="weighted", zero_division=0), abs=1e-12)
    assert accuracy(t, p) == pytest.approx(accuracy_score(t, p), abs=1e-12)
    a, b = rng.normal(size=n), rng.normal(size=n)
    assert mse(a, b) == pytest.approx(mean_squared_error(a, b), rel=1e-12)
    from sklearn.metrics import confusion_matrix as sk_confusion

    from trainer.metrics import confusion_matrix
    assert confusion_matrix(t, p, 6).tolist() == sk_confusion(t, p, labels=list(range(6))).tolist()
