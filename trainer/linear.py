"""The convex baseline (`--fusion linear`): standardised features, multinomial logistic regression for the
emotions and ridge regression for valence (scikit-learn), the regularisation chosen on each fold's selection
rows (the inner split in strict mode, the held-out fold in mertools mode, as the epoch is for neural models).

Every feature of the set is one block of the input: one feature gives the per-feature baseline, several give
the stacked baseline (blocks concatenated after standardising each column with the fold's training rows; a
row missing a feature has zeros there -- its mean -- at test time). One fit per (config, fold, seed) and C:
the C path runs from strong to weak regularisation with warm starts. Deterministic (lbfgs, no sampling): the
seed only changes the folds. `trainer rank --fast` uses it to rank every stored encoder in about a second each.
"""

from __future__ import annotations

import time
import warnings as _warnings
from typing import Any

import numpy as np

from trainer.data import FeatureSet
from trainer.experiment import Job, Outcome
from trainer.metrics import score

C_GRID = (0.001, 0.01, 0.1, 1.0)          # inverse L2 strength of the logistic regression, tried in this order
ALPHA_GRID = (1.0, 10.0, 100.0, 1000.0)   # ridge strength for valence


def _matrix(fs: FeatureSet, test: bool) -> np.ndarray:
    """[n, sum D] float64: every feature's vectors side by side; rows a feature lacks are NaN there."""
    blocks = []
    for f in fs.features.values():
        x = (f.x_test if test else f.x).numpy().astype(np.float64)
        ok = (f.avail_test if test else f.avail).numpy()
        x = x.reshape(len(x), -1).copy()
        x[~ok] = np.nan
        blocks.append(x)
    return np.concatenate(blocks, axis=1)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = np.nanmean(train, axis=0)
    sd = np.nanstd(train, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [np.nan_to_num((a - mu) / sd, nan=0.0) for a in (train, *others)]


def fit_jobs(fs: FeatureSet, jobs: list[Job], plans: dict[int, Any], selection: str, n_classes: int,
             has_valence: bool) -> dict[int, Outcome]:
    """An Outcome per job (keyed by id(job)), as the neural trainer gives them."""
    from sklearn.linear_model import LogisticRegression, Ridge

    X, XT = _matrix(fs, False), _matrix(fs, True)
    y = fs.emotion.numpy() if fs.emotion is not None and n_classes else None
    v = fs.valence.numpy() if fs.valence is not None and has_valence else None
    out: dict[int, Outcome] = {}
    for j in jobs:
        t0 = time.perf_counter()
        f = j.fold
        tests = plans[j.seed].tests
        xs = _standardise(X[f.train], X[f.select], X[f.heldout], *[XT[r] for r in tests.values()])
        tr, sel, held, test_x = xs[0], xs[1], xs[2], xs[3:]
        emo: dict[str, Any] = {}
        if y is not None:
            lab = y[f.train] >= 0
            model = LogisticRegression(C=C_GRID[0], max_iter=300, tol=1e-4, warm_start=True)
            best = (-np.inf, None)
            for c in C_GRID:
                model.set_params(C=c)
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore")   # lbfgs may stop at max_iter on the weakest C
                    model.fit(tr[lab], y[f.train][lab])
                logits = _logits(model, sel, n_classes)
                s = score(selection if selection != "sentiment" else "waf", emotion=y[f.select], logits=logits).score
                if s > best[0] or best[1] is None:
                    best = (s, (c, model.coef_.copy(), model.intercept_.copy()))
            c, coef, icpt = best[1]
            model.set_params(C=c)
            model.coef_, model.intercept_ = coef, icpt
            emo = {"model": model, "C": c}
        val: dict[str, Any] = {}
        if v is not None:
            lab = np.isfinite(v[f.train])
            best_v = (np.inf, None)
            for a in ALPHA_GRID:
                r = Ridge(alpha=a).fit(tr[lab], v[f.train][lab])
                ok = np.isfinite(v[f.select])
                mse = float(np.mean((r.predict(sel[ok]) - v[f.select][ok]) ** 2)) if ok.any() else 0.0
                if mse < best_v[0]:
                    best_v = (mse, r)
            val = {"model": best_v[1]}

        def predict(x: np.ndarray) -> dict[str, np.ndarray | None]:
            return {"emotion": _logits(emo["model"], x, n_classes) if emo else None,
                    "valence": val["model"].predict(x) if val else None, "attention": None}

        def scores(rows: np.ndarray, p: dict[str, np.ndarray | None]):  # noqa: ANN202
            return score(selection, emotion=y[rows] if y is not None else None, logits=p["emotion"],
                         valence=v[rows] if v is not None else None, valence_pred=p["valence"])

        p_sel, p_held = predict(sel), predict(held)
        out[id(j)] = Outcome(best_epoch=1, curve=np.array([np.nan]), select=scores(f.select, p_sel),
                             heldout=scores(f.heldout, p_held),
                             heldout_out={k: val_ for k, val_ in p_held.items() if val_ is not None},
                             tests={s: predict(x) for s, x in zip(tests, test_x)},
                             seconds=time.perf_counter() - t0)
    return out


def _logits(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """[n, n_classes] log-probabilities (classes the training rows lacked get -inf... a large negative)."""
    lp = np.full((len(x), n_classes), -1e9)
    lp[:, model.classes_.astype(int)] = model.predict_log_proba(x)
    return lp
