"""Presets and the fast recipe (issue #9): named data, determinism, early stopping on selection rows only, time
budgets and small-data fallbacks reported; the linear baseline equals scikit-learn's own fit; `rank --fast`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import trainer_app
from featstore.errors import UnknownNameError
from trainer.data import load_features
from trainer.fit import run_experiment
from trainer.presets import PRESETS, apply_preset
from trainer.protocol import Protocol, ProtocolError
from trainer.synthetic import make_store

ENCS = dict(audio=["audio-a"], video=["video-v"])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "s.zarr"
    make_store(path, n_train=200, n_test=60, signal=1.0)
    return path


def fast(**kw: object) -> Protocol:
    return apply_preset(Protocol(folds="cv3", **kw), "fast")


def test_a_preset_fills_only_the_fields_left_at_their_defaults() -> None:
    p = apply_preset(Protocol(epochs=7), "fast")
    assert p.epochs == 7 and p.batch_size == PRESETS["fast"]["batch_size"] and p.mode == "strict"
    assert p.schedule == "cosine" and p.inner_fraction == 0 and p.patience is None and p.train_bf16
    assert apply_preset(Protocol(train_bf16=False), "fast").train_bf16 is False   # --fp32-train wins over the preset
    assert apply_preset(Protocol(epochs=7, mode="strict", inner_fraction=0.3), "fast").inner_fraction == 0.3
    assert apply_preset(Protocol(), "default") == Protocol()
    kept = apply_preset(Protocol(), "fast", keep={"lr", "batch_size"})   # given explicitly, equal to the defaults
    assert (kept.lr, kept.batch_size) == (Protocol().lr, Protocol().batch_size)
    assert kept.epochs == PRESETS["fast"]["epochs"] and kept.valence_weight == PRESETS["fast"]["valence_weight"]
    with pytest.raises(UnknownNameError, match="unknown preset 'fsat'.*fast"):
        apply_preset(Protocol(), "fsat")
    with pytest.raises(ProtocolError, match="unknown lr schedule 'linear'"):
        Protocol(schedule="linear")
    with pytest.raises(ProtocolError, match="valence_weight must be a finite number >= 0, got -1"):
        Protocol(valence_weight=-1.0)
    with pytest.raises(ProtocolError, match="valence_weight must be a finite number >= 0, got nan"):
        Protocol(valence_weight=float("nan"))
    with pytest.raises(ProtocolError, match="patience must be a positive integer"):
        Protocol(patience=0)
    with pytest.raises(ProtocolError, match="early stopping .patience. needs selection rows"):
        Protocol(mode="strict", inner_fraction=0, patience=3)
    assert Protocol(mode="mertools", inner_fraction=0, patience=3).patience == 3   # mertools selects on the fold


def early_stopping(**kw: object) -> Protocol:
    """The fast recipe with an inner split that picks the epoch and stops training (patience 3)."""
    patience = kw.pop("patience", 3)
    return fast(**kw).replace(inner_fraction=0.2, patience=patience)


def test_without_selection_every_model_trains_on_its_whole_fold_and_keeps_its_last_epoch(store: Path) -> None:
    f = load_features(store, "synth", **ENCS)
    p = fast(epochs=5)
    plan = p.plan(f, 0)
    assert all(len(fo.select) == 0 for fo in plan.folds)
    assert sum(len(fo.train) for fo in plan.folds) == 2 * len(plan.training_rows)   # cv3: each row in 2 folds
    r = run_experiment(f, "attention", p)
    assert set(r.selected_epochs.values()) == {5}
    assert {x["split"] for x in r.rows} == {"cv", "test1"}                # no empty 'inner' rows
    assert all(np.isfinite(x["waf"]) for x in r.rows)
    lin = run_experiment(f, "linear", p)                                   # the linear baseline needs rows to
    assert any("inner split of 20% of each training fold" in w for w in lin.warnings)   # choose C on
    assert {x["split"] for x in lin.rows} == {"cv", "inner", "test1"}


def test_cosine_schedule_warms_up_then_decays() -> None:
    p = Protocol(schedule="cosine", warmup=0.2)
    f = [p.lr_factor(t) for t in (0.0, 0.1, 0.2, 0.6, 0.999)]
    assert f[0] < 0.01 and f[1] == pytest.approx(0.5) and f[2] == pytest.approx(1.0)
    assert f[3] == pytest.approx(0.5) and f[4] < 1e-4
    assert Protocol().lr_factor(0.7) == 1.0


def test_the_fast_preset_is_deterministic_for_a_seed(store: Path) -> None:
    f = load_features(store, "synth", **ENCS)
    a = run_experiment(f, "attention", fast(seeds=(3,)))
    b = run_experiment(f, "attention", fast(seeds=(3,)))
    assert [(r["split"], r["fold"], r["waf"], r["mse"]) for r in a.rows] == \
        [(r["split"], r["fold"], r["waf"], r["mse"]) for r in b.rows]
    assert a.selected_epochs == b.selected_epochs


@pytest.mark.parametrize("recipe", [fast, early_stopping])
def test_early_stopping_never_looks_at_test_or_held_out_data(store: Path, recipe) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS)
    base = run_experiment(f, "attention", recipe(epochs=30))
    g = load_features(store, "synth", **ENCS)
    test_rows = ~torch.from_numpy(np.isin(np.arange(g.n), base_training_rows(g)))
    for feat in g.features.values():                          # scramble every test row's features
        feat.x[test_rows] = torch.randn_like(feat.x[test_rows]) * 5
    changed = run_experiment(g, "attention", recipe(epochs=30))
    assert changed.selected_epochs == base.selected_epochs
    cv = lambda r: [x["waf"] for x in r.rows if x["split"] in ("cv", "inner")]  # noqa: E731
    assert cv(changed) == cv(base)
    test = lambda r: next(x for x in r.summary() if x["split"] == "test1")["waf_mean"]  # noqa: E731
    assert test(changed) != test(base)                         # the test rows did change


def base_training_rows(f) -> np.ndarray:  # noqa: ANN001
    return Protocol(folds="cv3").plan(f, 0).training_rows


def test_early_stopping_stops_and_says_so(store: Path) -> None:
    f = load_features(store, "synth", **ENCS)
    r = run_experiment(f, "attention", early_stopping(epochs=200, patience=2))
    assert any(w.startswith("early stopping: all 3 models stopped by epoch") for w in r.warnings), r.warnings
    stopped_at = [int(np.isfinite(c).sum()) for c in r.curves.values()]
    assert max(stopped_at) < 200 and all(e + 2 <= n or n == 200 for e, n in zip(r.selected_epochs.values(), stopped_at))


def test_a_time_budget_is_reported_never_silent(store: Path) -> None:
    f = load_features(store, "synth", **ENCS)
    r = run_experiment(f, "attention", Protocol(folds="cv3", epochs=500, time_budget=0.05))
    assert any("time budget of 0.05 s reached after epoch" in w and "had not converged" in w for w in r.warnings)
    last = run_experiment(f, "attention", fast(epochs=500, time_budget=0.05))   # no selection rows: the last
    note = next(w for w in last.warnings if "time budget of 0.05 s reached after epoch" in w)   # epoch trained
    assert "last epochs kept" in note
    assert set(last.selected_epochs.values()) == {int(note.split("after epoch ")[1].split()[0])}


def test_a_small_dataset_falls_back_to_a_smaller_batch_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "small.zarr"
    make_store(path, n_train=60, n_test=20, signal=1.0)
    f = load_features(path, "synth", **ENCS)
    r = run_experiment(f, "attention", fast(epochs=3))
    note = next(w for w in r.warnings if w.startswith(f"batch size {PRESETS['fast']['batch_size']} is too large"))
    assert "40 training rows" in note and "using batch size 10" in note   # 40 a fold (no inner split), / 4
    assert r.protocol.batch_size == 10


def test_linear_baseline_equals_scikit_learns_own_fit(store: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    f = load_features(store, "synth", **ENCS)
    proto = Protocol(folds="cv3", mode="strict")
    r = run_experiment(f, "linear", proto)
    plan = proto.plan(f, 0)
    fold = plan.folds[1]
    X = np.concatenate([f.features[k].x.numpy().astype(np.float64) for k in f.features], axis=1)
    mu, sd = X[fold.train].mean(0), X[fold.train].std(0)
    Z = (X - mu) / np.where(sd > 0, sd, 1)
    y = f.emotion.numpy()
    test_rows = plan.tests["test1"]
    ours = r.test_outputs[(0, 0, "test1")].emotion[1]          # fold 1's log-probabilities
    best = None
    for c in (0.001, 0.01, 0.1, 1.0):                           # one of the C it tried reproduces it exactly
        ref = LogisticRegression(C=c, max_iter=1000, tol=1e-8).fit(Z[fold.train], y[fold.train])
        lp = ref.predict_log_proba(Z[test_rows])
        err = float(np.abs(np.exp(lp) - np.exp(ours[:, ref.classes_])).max())
        best = err if best is None else min(best, err)
    assert best < 2e-3
    assert {x["split"] for x in r.rows} == {"cv", "inner", "test1"}
    assert next(x for x in r.summary() if x["split"] == "test1")["waf_mean"] > 0.5


@pytest.mark.parametrize("n, d", [(80, 12), (12, 40)])        # primal (n >= D) and dual (n < D) forms
def test_ridge_path_equals_scikit_learns_ridge_for_every_alpha(n: int, d: int) -> None:
    from sklearn.linear_model import Ridge

    from trainer.linear import ridge_path

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 2.0, rng.normal(size=(n, 3))
    alphas = (0.1, 1.0, 100.0)
    for (coef, icpt), a in zip(ridge_path(x, y, alphas), alphas):
        ref = Ridge(alpha=a).fit(x, y)
        assert np.allclose(coef, ref.coef_.T, atol=1e-8) and np.allclose(icpt, ref.intercept_, atol=1e-8)


def test_the_ridge_solver_equals_scikit_learns_ridge_classifier(store: Path) -> None:
    from sklearn.linear_model import RidgeClassifier

    from trainer.linear import ALPHA_GRID

    f = load_features(store, "synth", **ENCS)
    proto = Protocol(folds="cv3", mode="strict")
    r = run_experiment(f, "linear", proto, {"solver": "ridge"})
    plan = proto.plan(f, 0)
    fold = plan.folds[2]
    X = np.concatenate([f.features[k].x.numpy().astype(np.float64) for k in f.features], axis=1)
    mu, sd = X[fold.train].mean(0), X[fold.train].std(0)
    Z = (X - mu) / np.where(sd > 0, sd, 1)
    y = f.emotion.numpy()
    test_rows = plan.tests["test1"]
    ours = r.test_outputs[(0, 0, "test1")].emotion[2]
    # RidgeClassifier codes the targets -1/+1: its decision values are 2 x ours - 1 for the same alpha x 1
    errs = [float(np.abs(2 * ours - 1 - RidgeClassifier(alpha=a).fit(Z[fold.train], y[fold.train])
                         .decision_function(Z[test_rows])).max()) for a in ALPHA_GRID]
    assert min(errs) < 1e-6
    assert next(x for x in r.summary() if x["split"] == "test1")["waf_mean"] > 0.5
    with pytest.raises(ProtocolError, match="unknown solver 'lbfgs'"):
        run_experiment(f, "linear", proto, {"solver": "lbfgs"})
    with pytest.raises(ProtocolError, match="takes only the option solver"):
        run_experiment(f, "linear", proto, {"rank": 4})


def test_rank_fast_and_the_report_marks_the_preset(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "r.sqlite")
    res = runner.invoke(trainer_app, ["rank", "--store", str(store), "--dataset", "synth", "--fast", "--folds", "cv3",
                                      "--results", db, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    ranked = {m: [e["encoder"] for e in v] for m, v in out["ranking"].items()}
    assert sorted(sum(ranked.values(), [])) == ["audio-a", "text-t", "video-v"] and out["trained"] == 3
    res = runner.invoke(trainer_app, ["run", "--store", str(store), "--dataset", "synth", "--audio", "audio-a",
                                      "--video", "video-v", "--preset", "fast", "--epochs", "3", "--folds", "cv3",
                                      "--results", db, "--json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.output[res.output.index("{"):])
    assert run["preset"] == "fast" and run["mode"] == "strict" and run["protocol"]["schedule"] == "cosine"
    assert run["protocol"]["batch_size"] == PRESETS["fast"]["batch_size"]
    # options typed on the command line stay, even at their default values; the rest comes from the preset
    res = runner.invoke(trainer_app, ["run", "--store", str(store), "--dataset", "synth", "--audio", "audio-a",
                                      "--preset", "fast", "--epochs", "2", "--folds", "cv3", "--lr", "1e-4",
                                      "--batch-size", "32", "--hidden-dim", "128", "--valence-weight", "1", "--results", db,
                                      "--json"])
    assert res.exit_code == 0, res.output
    typed = json.loads(res.output[res.output.index("{"):])["protocol"]
    assert (typed["lr"], typed["batch_size"], typed["hidden"], typed["epochs"]) == (1e-4, 32, 128, 2)
    assert typed["valence_weight"] == 1.0 and PRESETS["fast"]["valence_weight"] != 1.0
    assert typed["schedule"] == "cosine" and typed["dropout"] == PRESETS["fast"]["dropout"]
    rep = runner.invoke(trainer_app, ["report", "--store", str(store), "--results", db])
    assert "strict, fast preset" in rep.output
    bad = runner.invoke(trainer_app, ["run", "--store", str(store), "--dataset", "synth", "--audio", "audio-a",
                                      "--preset", "quick", "--results", db])
    assert bad.exit_code == 1 and "unknown preset 'quick'" in bad.output
