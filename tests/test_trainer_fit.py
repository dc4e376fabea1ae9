"""trainer.fit + trainer.protocol: the MER protocol on small synthetic stores.

Batched K models == K separate trainings; equal to plain torch (nn.Linear + torch.optim.Adam, MERTools'
module) step for step; no test leakage; determinism; failed rows; strict vs mertools; other fold kinds.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.data import FeatureSet, load_features
from trainer.fit import _GroupTrainer, _moments, model_seed, normalise_configs, run_experiment
from trainer.protocol import Protocol
from trainer.synthetic import make_store

from test_trainer_models import RefAttentionTopN

DIMS = {"aud": ("audio", 24), "txt": ("text", 32), "vid": ("visual", 16)}
FAST = Protocol(epochs=3, batch_size=32, hidden=16, lr=1e-3)


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> FeatureSet:
    p = tmp_path_factory.mktemp("fit") / "s.zarr"
    make_store(p, n_train=250, n_test=50, dims=DIMS, signal=(1.2, 1.5, 1.0), seed=1)
    return load_features(p, "synth", audio=["aud"], text=["txt"], video=["vid"])


def cv(res, split: str = "cv", config: int = 0) -> dict:
    return next(r for r in res.rows if r["fold"] == -1 and r["split"] == split and r["config"] == config)


def test_planted_signal_is_learned(feats: FeatureSet) -> None:
    res = run_experiment(feats, "attention", FAST.replace(epochs=12))
    assert cv(res)["waf"] > 0.6 and cv(res, "test1")["acc"] > 0.6  # chance is ~0.27 (largest class)
    assert len(res.selected_epochs) == 5 and all(1 <= e <= 12 for e in res.selected_epochs.values())
    out = res.test_outputs[(0, 0, "test1")]
    assert out.emotion.shape == (5, 50, 6) and out.valence.shape == (5, 50) and out.attention.shape == (5, 50, 3)
    pred = res.predictions("test1")
    assert np.allclose(pred["probs"].sum(1), 1) and len(res.prediction_rows("test1")) == 50
    # the CV figure is the mean of the folds' best held-out scores (MERTools gain_cv_results)
    folds = [r["waf"] for r in res.rows if r["split"] == "cv" and r["fold"] >= 0]
    assert cv(res)["waf"] == pytest.approx(np.mean(folds))
    assert all(r["score"] == pytest.approx(res.curves[(0, r["fold"], 0)][r["best_epoch"] - 1])
               for r in res.rows if r["split"] == "cv" and r["fold"] >= 0)


def test_batched_models_equal_separate_trainings(feats: FeatureSet) -> None:
    """K = 2 configs x 5 folds x 2 seeds as one module == each model trained alone (its own generator)."""
    configs = [{"lr": 1e-3, "dropout": 0.5}, {"lr": 3e-4, "dropout": 0.3, "weight_decay": 1e-4}]
    p = FAST.replace(epochs=1, seeds=(0, 1))
    together = run_experiment(feats, "attention", p, configs)
    alone = run_experiment(feats, "attention", p, configs, max_models=1)
    assert together.counts["models"] == 20
    for key, out in together.test_outputs.items():
        assert np.abs(out.emotion - alone.test_outputs[key].emotion).max() < 1e-5
        assert np.abs(out.valence - alone.test_outputs[key].valence).max() < 1e-5
    for key, curve in together.curves.items():
        assert np.allclose(curve, alone.curves[key], atol=1e-6)
    p4 = FAST.replace(epochs=4)
    sizes: list[int] = []
    chunked = run_experiment(feats, "attention", p4, configs, max_models=3,
                             progress=lambda ev, info: ev == "group" and sizes.append(info["models"]))
    assert sizes == [2, 3, 2, 3]          # 10 models, at most 3 a module: four modules of even sizes
    assert run_experiment(feats, "attention", p4, configs).selected_epochs == chunked.selected_epochs


def test_one_epoch_equals_plain_torch_mertools_module(feats: FeatureSet) -> None:
    """Without dropout, a fold model equals MERTools' nn.Module trained with torch.optim.Adam on the same
    minibatches (same initial weights, same permutation: both drawn from the model's seed)."""
    p = FAST.replace(epochs=1, dropout=0.0, batch_size=16, lr=1e-4)
    res = run_experiment(feats, "attention", p)
    cfg = normalise_configs(None, p)[0]
    plan = p.plan(feats, 0)
    names = [b.name for b in feats.branches]
    test_rows = plan.tests["test1"]
    y = feats.emotion
    v = feats.valence
    for fold in plan.folds[:2]:
        torch.manual_seed(model_seed(cfg, fold.index, 0))
        ref = RefAttentionTopN([feats.features[n].dim for n in names], 16, 0.0, 6, 1)
        opt = torch.optim.Adam(ref.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        order = torch.from_numpy(fold.train)[torch.randperm(len(fold.train))]
        ref.train()
        for s in range(0, len(order), p.batch_size):
            rows = order[s:s + p.batch_size]
            e, val = ref([feats.features[n].x[rows] for n in names])
            loss = F.cross_entropy(e, y[rows]) + F.mse_loss(val[:, 0], v[rows])  # MERTools CELoss + MSELoss
            opt.zero_grad()
            loss.backward()
            opt.step()
        ref.eval()
        with torch.no_grad():
            e, val = ref([feats.features[n].x_test[torch.from_numpy(test_rows)] for n in names])
        out = res.test_outputs[(0, 0, "test1")]
        # equal up to float rounding (~3e-8 here; summation orders differ). A weight whose gradient leaked from
        # one step into the next (the attention MLP's first layer once kept a summed gradient) ends ~lr = 1e-4 off.
        assert np.abs(out.emotion[fold.index] - e.numpy()).max() < 1e-6
        assert np.abs(out.valence[fold.index] - val[:, 0].numpy()).max() < 1e-6
        assert (out.emotion[fold.index].argmax(1) == e.numpy().argmax(1)).all()


def test_test_labels_never_influence_selection(feats: FeatureSet) -> None:
    p = FAST.replace(epochs=4)
    a = run_experiment(feats, "attention", p, [{}, {"lr": 3e-4}])
    test = torch.from_numpy(feats.subsets["test1"])
    emo, val = feats.emotion.clone(), feats.valence.clone()
    emo[test] = torch.randint(0, 6, (int(test.sum()),), generator=torch.Generator().manual_seed(5))
    val[test] = -val[test]
    b = run_experiment(dataclasses.replace(feats, emotion=emo, valence=val), "attention", p, [{}, {"lr": 3e-4}])
    assert a.selected_epochs == b.selected_epochs
    assert all(np.array_equal(a.curves[k], b.curves[k]) for k in a.curves)
    assert [dict(r, seconds=0) for r in a.rows if r["split"] == "cv"] == \
        [dict(r, seconds=0) for r in b.rows if r["split"] == "cv"]
    assert a.best_config() == b.best_config()
    assert cv(a, "test1")["waf"] != cv(b, "test1")["waf"]
    assert np.array_equal(a.test_outputs[(0, 0, "test1")].emotion, b.test_outputs[(0, 0, "test1")].emotion)


def test_deterministic_for_a_seed(feats: FeatureSet) -> None:
    p = FAST.replace(epochs=2, seeds=(3,))
    a, b = run_experiment(feats, "attention", p), run_experiment(feats, "attention", p)
    assert a.rows and [dict(r, seconds=0) for r in a.rows] == [dict(r, seconds=0) for r in b.rows]
    assert np.array_equal(a.test_outputs[(0, 3, "test1")].emotion, b.test_outputs[(0, 3, "test1")].emotion)
    c = run_experiment(feats, "attention", p.replace(seeds=(4,)))
    assert not np.array_equal(a.test_outputs[(0, 3, "test1")].emotion, c.test_outputs[(0, 4, "test1")].emotion)


def test_scoring_in_chunks_equals_one_pass(feats: FeatureSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selection, held-out and test rows scored 32 at a time give the outputs and choices of one pass."""
    from trainer import fit

    for mode in ("mertools", "strict"):
        p = FAST.replace(epochs=3, mode=mode)
        whole = run_experiment(feats, "attention", p)     # ~50 selection rows, 50 test rows: one chunk each
        monkeypatch.setattr(fit, "EVAL_CHUNK_BYTES", 1)   # the 32-row minimum: two chunks each
        chunked = run_experiment(feats, "attention", p)
        monkeypatch.undo()
        assert chunked.selected_epochs == whole.selected_epochs
        for key, curve in whole.curves.items():
            assert np.allclose(curve, chunked.curves[key], atol=1e-6)
        for key, out in whole.test_outputs.items():
            for name in ("emotion", "valence", "attention"):
                assert np.abs(getattr(out, name) - getattr(chunked.test_outputs[key], name)).max() < 1e-5
        assert [r["waf"] for r in whole.rows] == pytest.approx([r["waf"] for r in chunked.rows])


def test_failed_rows_are_not_trained_on_and_still_predicted(feats: FeatureSet) -> None:
    train_rows = np.flatnonzero(feats.subsets["train"])[[3, 50, 120]]
    test_rows = np.flatnonzero(feats.subsets["test1"])[[0, 7]]

    def broken(fill: float) -> FeatureSet:
        f = feats.features["txt"]
        x, avail = f.x.clone(), f.avail.clone()
        x[train_rows] = fill
        x[test_rows] = fill
        avail[train_rows] = False
        avail[test_rows] = False
        f2 = dataclasses.replace(f, x=x, x_test=x, avail=avail, avail_test=avail)
        return dataclasses.replace(feats, features={**feats.features, "txt": f2})

    p = FAST.replace(epochs=2, test_splits=("test1",))
    a, b = run_experiment(broken(0.0), "attention", p), run_experiment(broken(1e3), "attention", p)
    assert a.counts["excluded"] == {"missing features": 3} and a.counts["test_missing"] == {"test1": 2}
    assert any("3 training row(s) not trained on" in w for w in a.warnings)
    for f in p.plan(broken(0.0), 0).folds:
        assert not set(train_rows) & set(f.train)
    ea, eb = a.test_outputs[(0, 0, "test1")].emotion, b.test_outputs[(0, 0, "test1")].emotion
    assert np.isfinite(ea).all() and np.array_equal(ea, eb)  # whatever the failed rows hold is never used
    assert a.selected_epochs == b.selected_epochs


def test_strict_mode_selects_inside_the_training_fold_and_standardises_from_its_rows(feats: FeatureSet) -> None:
    p = FAST.replace(epochs=3, mode="strict")
    res = run_experiment(feats, "attention", p)
    assert {r["split"] for r in res.rows} == {"cv", "inner", "test1"}
    for f in p.plan(feats, 0).folds:
        assert not set(f.select) & set(f.train) and not set(f.heldout) & (set(f.train) | set(f.select))
        assert len(f.select) == pytest.approx(0.2 * (len(f.train) + len(f.select)), abs=1)
    # standardisation statistics: each model's own training rows, nothing else
    cfg = normalise_configs(None, p)[0]
    plan = p.plan(feats, 0)
    from trainer.fit import Job
    jobs = [Job(0, 0, f, cfg, model_seed(cfg, f.index, 0)) for f in plan.folds]
    tr = _GroupTrainer(jobs, feats, "attention", p, "waf", 6, True, torch.device("cpu"), {0: plan}, None, 0)
    shift, inv = tr.std["txt"]          # x * inv + shift = (x - mean) / std
    for k, f in enumerate(plan.folds):
        x = feats.features["txt"].x[torch.from_numpy(f.train)].double()
        assert torch.allclose(inv[k, 0].double(), 1 / x.std(0, unbiased=False), rtol=1e-4)
        assert torch.allclose(-shift[k, 0].double() / inv[k, 0].double(), x.mean(0), atol=1e-5)
        z = x * inv[k, 0].double() + shift[k, 0].double()
        assert torch.allclose(z.mean(0), torch.zeros(()).double(), atol=1e-5)
        assert torch.allclose(z.std(0, unbiased=False), torch.ones(()).double(), atol=1e-4)
    # so test-row features cannot move the selection
    f = feats.features["txt"]
    x = f.x.clone()
    x[torch.from_numpy(feats.subsets["test1"])] *= 100
    moved = dataclasses.replace(feats, features={**feats.features, "txt": dataclasses.replace(f, x=x, x_test=x)})
    assert run_experiment(moved, "attention", p).selected_epochs == res.selected_epochs
    mert = run_experiment(feats, "attention", p.replace(mode="mertools"))
    assert {r["split"] for r in mert.rows} == {"cv", "test1"}


def test_standardisation_moments_of_many_row_sets_in_one_pass_match_float64() -> None:
    """Every training-row set of a run in one pass (small chunks, so several): the float64 mean and biased std
    of those rows, also for a large mean (no cancellation) and for sequences over their real steps only."""
    g = np.random.default_rng(3)
    x = torch.from_numpy(g.normal(1e4, 0.5, (90, 7)).astype(np.float32))
    sets = [g.choice(90, size=n, replace=False) for n in (60, 45, 1)]
    for (mean, std), rows in zip(_moments(x, sets, None, chunk_bytes=8 * 7 * 16), sets):
        ref = x.double().numpy()[rows]
        np.testing.assert_allclose(mean.numpy(), ref.mean(0), rtol=1e-12)
        np.testing.assert_allclose(std.numpy(), ref.std(0), rtol=1e-6, atol=1e-9)
    seq, lengths = torch.randn(40, 9, 5) * 3 + 2, torch.from_numpy(g.integers(1, 10, 40))
    for i, n in enumerate(lengths.tolist()):
        seq[i, n:] = 1e6                                   # padding: must not count
    rows = np.arange(0, 40, 3)
    (mean, std), = _moments(seq, [rows], lengths, chunk_bytes=8 * 9 * 5 * 4)
    steps = torch.cat([seq[i, :int(lengths[i])] for i in rows]).double()
    assert torch.allclose(mean, steps.mean(0), rtol=1e-10) and torch.allclose(std, steps.std(0, unbiased=False), rtol=1e-8)


def test_mlp_sentiment_official_splits(tmp_path: Path) -> None:
    """A sentiment dataset (catalog cmu-mosi): regression head only, scored by the sign; official folds."""
    make_store(tmp_path / "s.zarr", n_train=120, n_test=40, dims={"aud": ("audio", 8)}, dataset="cmu-mosi",
               official=True, signal=1.5)
    fs = load_features(tmp_path / "s.zarr", "cmu-mosi", audio=["aud"])
    assert fs.sentiment and fs.emotion is None
    res = run_experiment(fs, "mlp", FAST.replace(epochs=3))
    assert res.folds == "official" and res.selection == "sentiment" and len(res.selected_epochs) == 1
    assert res.test_outputs[(0, 0, "test1")].emotion is None
    r = cv(res, "test1")
    assert 0 < r["n"] <= 40 and math.isfinite(r["waf"]) and math.isfinite(r["mse"])
    assert not Protocol().shuffles(fs) and Protocol(mode="strict").shuffles(fs)  # MERTools: no shuffle there


def test_leave_one_group_out_predict_only_test_and_no_valence(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", n_train=90, n_test=30, dims={"aud": ("audio", 8), "vid": ("visual", 6)},
               groups=3, valence=False, test_labels=False,
               proportions=(0.3, 0.3, 0.2, 0.2, 0.0, 0.0))
    fs = load_features(tmp_path / "s.zarr", "synth", audio=["aud"], video=["vid"])
    res = run_experiment(fs, "attention", FAST.replace(epochs=2))
    assert res.folds == "logo" and sorted({k[1] for k in res.selected_epochs}) == [0, 1, 2]
    out = res.test_outputs[(0, 0, "test1")]
    assert out.valence is None and out.emotion.shape == (3, 30, 6)
    r = cv(res, "test1")
    assert r["n"] == 0 and math.isnan(r["waf"])  # predict-only split
    assert res.counts["test_unlabelled"] == {"test1": 30}
    assert any("worried, surprise" in w for w in res.warnings)  # classes absent from the training folds
    assert all(row["predicted"] for row in res.prediction_rows("test1"))


def test_bad_protocols_are_refused(feats: FeatureSet) -> None:
    with pytest.raises(ValueError, match="mode"):
        Protocol(mode="paper")
    with pytest.raises(ValueError, match="folds"):
        Protocol(folds="kfold")
    with pytest.raises(ValueError, match="no 'val' subset"):
        run_experiment(feats, "attention", FAST.replace(folds="official"))
    with pytest.raises(ValueError, match="has no groups"):
        run_experiment(feats, "attention", FAST.replace(folds="logo"))
    with pytest.raises(ValueError, match="does not take option"):
        run_experiment(feats, "mlp", FAST, {"softmax": True})


def test_bf16_progress_and_results_database_rows(feats: FeatureSet, tmp_path: Path) -> None:
    from trainer.record import record, result_rows
    from trainer.results import ResultsDB

    events: list[str] = []
    res = run_experiment(feats, "attention", FAST.replace(epochs=2, bf16=True), [{}, {"hidden": 8}],
                         progress=lambda ev, info: events.append(ev))
    assert np.isfinite(res.test_outputs[(1, 0, "test1")].emotion).all()
    assert events.count("group") == 2 and events.count("epoch") == 4  # two hidden sizes: two batched modules
    db = ResultsDB(tmp_path / "r.sqlite")
    rows = result_rows(res)
    assert record(db, res) == len(rows) and record(db, res) == 0  # no duplicates on a rerun
    hashes = sorted({r["config_hash"] for r in rows})
    assert len(hashes) == 2 and db.done_trials(hashes, [0]) == {(h, 0) for h in hashes}


def test_train_bf16_trains_in_bfloat16_evaluates_in_float32_or_says_why_not(feats: FeatureSet,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.fit as fit
    from trainer.models.attention import Attention

    p = FAST.replace(epochs=2)
    ref = run_experiment(feats, "attention", p)
    emotion = lambda r: r.test_outputs[(0, 0, "test1")].emotion  # noqa: E731
    seen: list[tuple[bool, torch.dtype]] = []                        # (training, dtype of the emotion logits)
    forward = Attention.forward
    monkeypatch.setattr(Attention, "forward", lambda self, *a, **k: (lambda o: seen.append(
        (self.training, o["emotion"].dtype)) or o)(forward(self, *a, **k)))
    monkeypatch.setattr(fit, "native_bf16", lambda device: True)
    a, b = (run_experiment(feats, "attention", p.replace(train_bf16=True)) for _ in range(2))
    assert np.array_equal(emotion(a), emotion(b))                    # deterministic for a seed
    assert not np.array_equal(emotion(a), emotion(ref))              # the bf16 path ran ...
    assert abs(cv(a)["waf"] - cv(ref)["waf"]) < 0.05                 # ... and learned as much
    assert {d for t, d in seen if t} == {torch.bfloat16} and {d for t, d in seen if not t} == {torch.float32}
    assert not any("train_bf16" in w for w in a.warnings)
    seen.clear()
    monkeypatch.setattr(fit, "native_bf16", lambda device: False)   # e.g. an AVX2-only CPU: float32, said so
    c = run_experiment(feats, "attention", p.replace(train_bf16=True))
    assert np.array_equal(emotion(c), emotion(ref)) and {d for _, d in seen} == {torch.float32}
    assert any("no native bfloat16 matmuls" in w for w in c.warnings)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_without_native_bf16_runs_and_says_it_is_slow(feats: FeatureSet, native: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.fit as fit

    monkeypatch.setattr(fit, "native_bf16", lambda device: native)
    r = run_experiment(feats, "attention", FAST.replace(epochs=1, bf16=True))
    said = [w for w in r.warnings if w.startswith("bf16:")]
    assert len(said) == (0 if native else 1) and all("emulated" in w for w in said)
    assert np.isfinite(r.test_outputs[(0, 0, "test1")].emotion).all()


def test_bad_configs_are_one_line_errors(feats: FeatureSet) -> None:
    from featstore.errors import FeatstoreError

    with pytest.raises(FeatstoreError, match="dropout"):
        run_experiment(feats, "attention", FAST, {"dropout": 1.0})
    with pytest.raises(FeatstoreError, match="fusion model 'atention'"):
        run_experiment(feats, "atention", FAST)
