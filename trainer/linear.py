"""The convex baseline (`--fusion linear`): standardised features, a linear classifier for the emotions and
ridge regression for valence, the regularisation chosen on each fold's selection rows (the inner split in
strict mode, the held-out fold in mertools mode, as the epoch is for neural models).

Two emotion solvers (`--model-option solver=...`):
  logistic  multinomial logistic regression (scikit-learn, lbfgs), C from C_GRID tried strong to weak with
            warm starts; outputs log-probabilities. The default of `--fusion linear`.
  ridge     a ridge classifier: least squares on one-hot targets (scikit-learn's RidgeClassifier, with 0/1
            targets), every alpha of ALPHA_GRID from one factorisation of the fold's Gram matrix; outputs decision
            values (argmax = the class; not calibrated probabilities). `trainer rank --fast` uses it: a 5-fold
            ranking of a 1024-d encoder on 5,000 rows costs well under a second (benchmarks/rank_agreement.py).
Valence always uses the closed-form ridge path (scikit-learn's Ridge, solved for all alphas at once).

Every feature of the set is one block of the input: one feature gives the per-feature baseline, several give
the stacked baseline (blocks concatenated after standardising each column with the fold's training rows; a
row missing a feature has zeros there -- its mean -- at test time). Deterministic (no sampling): the seed only
changes the folds.
"""

from __future__ import annotations

import time
import warnings as _warnings
from typing import Any

import numpy as np

from trainer.data import FeatureSet
from trainer.experiment import Job, Outcome
from trainer.metrics import score
from trainer.models.linear import Linear
from trainer.protocol import ProtocolError

C_GRID = (0.001, 0.01, 0.1, 1.0)                 # logistic: inverse L2 strength, tried in this order
ALPHA_GRID = (1.0, 10.0, 100.0, 1000.0)          # ridge strength (valence; emotions with solver=ridge)
SOLVERS = Linear.space["solver"]


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


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(coef [D, T], intercept [T]) of ridge regression with an intercept for each alpha: scikit-learn's
    Ridge(alpha) on (x, y [n, T]), from one eigendecomposition of the centred Gram matrix (XᵀX when n >= D,
    XXᵀ otherwise), so the whole path costs about one fit."""
    y2 = y.reshape(len(y), -1)
    xm, ym = x.mean(0), y2.mean(0)
    xc, yc = x - xm, y2 - ym
    n, d = xc.shape
    out = []
    if n >= d:
        lam, q = np.linalg.eigh(xc.T @ xc)
        qty = q.T @ (xc.T @ yc)
        for a in alphas:
            coef = q @ (qty / (np.maximum(lam, 0.0) + a)[:, None])
            out.append((coef, ym - xm @ coef))
    else:
        lam, q = np.linalg.eigh(xc @ xc.T)
        qty = q.T @ yc
        for a in alphas:
            coef = xc.T @ (q @ (qty / (np.maximum(lam, 0.0) + a)[:, None]))
            out.append((coef, ym - xm @ coef))
    return out


def fit_jobs(fs: FeatureSet, jobs: list[Job], plans: dict[int, Any], selection: str, n_classes: int,
             has_valence: bool) -> dict[int, Outcome]:
    """An Outcome per job (keyed by id(job)), as the neural trainer gives them."""
    opts = dict(jobs[0].options) if jobs else {}
    solver = opts.pop("solver", "logistic")
    if opts:
        raise ProtocolError(f"fusion 'linear' takes only the option solver ({'|'.join(SOLVERS)}), got {sorted(opts)}")
    if solver not in SOLVERS:
        raise ProtocolError(f"fusion 'linear': unknown solver '{solver}'; expected one of {', '.join(SOLVERS)}")
    X, XT = _matrix(fs, False), _matrix(fs, True)
    y = fs.emotion.numpy() if fs.emotion is not None and n_classes else None
    v = fs.valence.numpy() if fs.valence is not None and has_valence else None
    sel_metric = selection if selection != "sentiment" else "waf"
    out: dict[int, Outcome] = {}
    for j in jobs:
        t0 = time.perf_counter()
        f = j.fold
        tests = plans[j.seed].tests
        xs = _standardise(X[f.train], X[f.select], X[f.heldout], *[XT[r] for r in tests.values()])
        tr, sel, held, test_x = xs[0], xs[1], xs[2], xs[3:]
        emo = None
        if y is not None:
            fit = _fit_logistic if solver == "logistic" else _fit_ridge_classifier
            emo = fit(tr, y[f.train], sel, y[f.select], n_classes, sel_metric)
        val = None
        if v is not None:
            lab, ok = np.isfinite(v[f.train]), np.isfinite(v[f.select])
            best_v = (np.inf, None)
            for coef, icpt in ridge_path(tr[lab], v[f.train][lab], ALPHA_GRID):
                mse = float(np.mean((sel[ok] @ coef[:, 0] + icpt[0] - v[f.select][ok]) ** 2)) if ok.any() else 0.0
                if mse < best_v[0] or best_v[1] is None:
                    best_v = (mse, (coef[:, 0], float(icpt[0])))
            val = best_v[1]

        def predict(x: np.ndarray) -> dict[str, np.ndarray | None]:
            return {"emotion": emo(x) if emo is not None else None,
                    "valence": x @ val[0] + val[1] if val is not None else None, "attention": None}

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


def _fit_logistic(tr: np.ndarray, y_tr: np.ndarray, sel: np.ndarray, y_sel: np.ndarray, n_classes: int,
                  metric: str) -> Any:
    """x -> [n, n_classes] log-probabilities of the logistic regression whose C scores best on `sel`."""
    from sklearn.linear_model import LogisticRegression

    lab = y_tr >= 0
    model = LogisticRegression(C=C_GRID[0], max_iter=300, tol=1e-4, warm_start=True)
    best: tuple[float, Any] = (-np.inf, None)
    for c in C_GRID:
        model.set_params(C=c)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")   # lbfgs may stop at max_iter on the weakest C
            model.fit(tr[lab], y_tr[lab])
        s = score(metric, emotion=y_sel, logits=_log_proba(model, sel, n_classes)).score
        if s > best[0] or best[1] is None:
            best = (s, (c, model.coef_.copy(), model.intercept_.copy()))
    c, coef, icpt = best[1]
    model.set_params(C=c)
    model.coef_, model.intercept_ = coef, icpt
    return lambda x: _log_proba(model, x, n_classes)


def _fit_ridge_classifier(tr: np.ndarray, y_tr: np.ndarray, sel: np.ndarray, y_sel: np.ndarray, n_classes: int,
                          metric: str) -> Any:
    """x -> [n, n_classes] decision values of the ridge classifier whose alpha scores best on `sel`."""
    lab = y_tr >= 0
    onehot = np.eye(n_classes)[y_tr[lab]]
    best: tuple[float, Any] = (-np.inf, None)
    for coef, icpt in ridge_path(tr[lab], onehot, ALPHA_GRID):
        s = score(metric, emotion=y_sel, logits=sel @ coef + icpt).score
        if s > best[0] or best[1] is None:
            best = (s, (coef, icpt))
    coef, icpt = best[1]
    return lambda x: x @ coef + icpt


def _log_proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """[n, n_classes] log-probabilities (classes the training rows lacked get a large negative value)."""
    lp = np.full((len(x), n_classes), -1e9)
    lp[:, model.classes_.astype(int)] = model.predict_log_proba(x)
    return lp
