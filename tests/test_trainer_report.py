"""trainer.report / trainer.plots / the outputs table: tables and plots from the results database alone."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from featstore.errors import FeatstoreError, UnknownNameError
from trainer.data import load_features
from trainer.fit import run_experiment
from trainer.plots import plot_all
from trainer.protocol import Protocol
from trainer.record import record, result_rows
from trainer.report import multimodal_table, render, tables, trials, unimodal_table
from trainer.results import ResultsDB

DIMS = {"a1": ("audio", 12), "t1": ("text", 10), "v1": ("visual", 8), "v2": ("visual", 6)}
PROTO = Protocol(epochs=3, folds="cv3", seeds=(0, 1))
CONFIGS = [{"hidden": 16, "lr": 1e-3}, {"hidden": 32, "lr": 1e-3, "dropout": 0.2}]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResultsDB, dict]:
    from trainer.synthetic import make_store

    root = tmp_path_factory.mktemp("report")
    store = make_store(root / "s.zarr", n_train=120, n_test=40, dims=DIMS)
    db = ResultsDB(root / "results.sqlite")
    results = {}
    for enc, (mod, _) in DIMS.items():
        fs = load_features(store, "synth", **{"video" if mod == "visual" else mod: [enc]})
        results[enc] = run_experiment(fs, "mlp", PROTO, CONFIGS)
        record(db, results[enc])
    for videos in (["v1"], ["v1", "v2"]):
        fs = load_features(store, "synth", audio=["a1"], text=["t1"], video=videos)
        results[f"top{len(videos)}"] = run_experiment(fs, "attention", PROTO, CONFIGS)
        record(db, results[f"top{len(videos)}"])
    return db, results


def _independent_best(db: ResultsDB, features: dict) -> tuple[str, float, float]:
    """Best config (by mean CV score over seeds) of one feature set, recomputed from the raw rows."""
    rows = [r for r in db.rows("fold = -1") if r["features"] == features]
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        d = by.setdefault(r["config_hash"], {})
        d.setdefault(r["split"] + "_score", []).append(r["score"])
        d.setdefault(r["split"] + "_waf", []).append(r["waf"])
    best = max(by, key=lambda h: np.mean(by[h]["cv_score"]))
    return best, float(np.mean(by[best]["cv_waf"])), float(np.std(by[best]["cv_waf"]))


def test_tables_report_the_best_config_with_mean_and_std_over_seeds(filled: tuple[ResultsDB, dict]) -> None:
    db, _ = filled
    ts = trials(db)
    uni, multi = unimodal_table(ts), multimodal_table(ts)
    assert len(uni.rows) == 4 and len(multi.rows) == 2
    cv = uni.columns.index("CV WAF")
    for row in uni.rows:
        feat = row[uni.columns.index("feature")]
        mod = row[uni.columns.index("modality")]
        h, mean, std = _independent_best(db, {mod: [feat]})
        assert row[cv] == pytest.approx((mean, std))
        assert row[uni.columns.index("seeds")] == "2"
    by_mod: dict[str, list[float]] = {}
    for row in uni.rows:
        by_mod.setdefault(row[2], []).append(row[cv][0])
    assert all(v == sorted(v, reverse=True) for v in by_mod.values())   # ranked by CV WAF within a modality
    top2 = next(r for r in multi.rows if r[multi.columns.index("top-N")] == "2")
    _, mean, std = _independent_best(db, {"audio": ["a1/clean"], "text": ["t1/clean"], "visual": ["v1/clean", "v2/clean"]})
    assert top2[multi.columns.index("CV WAF")] == pytest.approx((mean, std))
    assert top2[multi.columns.index("modalities")] == "AVT"


def test_outputs_hold_the_confusion_matrix_and_attention_weights(filled: tuple[ResultsDB, dict]) -> None:
    db, results = filled
    res = results["top2"]
    h = result_rows(res)[0]["config_hash"]   # config 0
    outs = {(o["seed"], o["split"]): o for o in db.outputs(h)}
    assert {k[1] for k in outs} == {"cv", "test1"}
    p = res.predictions("test1", config=0, seed=1)
    true = res.test_labels["test1"]["emotion"]
    want = confusion_matrix(true, p["pred"], labels=list(range(len(res.classes))))
    assert np.array_equal(np.asarray(outs[(1, "test1")]["confusion"]), want)
    att = res.test_outputs[(0, 1, "test1")].attention
    assert outs[(1, "test1")]["branches"] == res.branches == ["a1", "t1", "v1", "v2"]
    assert np.allclose(outs[(1, "test1")]["attention"], att.reshape(-1, att.shape[-1]).mean(axis=0))
    oof = res.heldout_outputs[(0, 0)]
    cv = confusion_matrix(oof["true"], oof["emotion"].argmax(axis=1), labels=list(range(len(res.classes))))
    assert np.array_equal(np.asarray(outs[(0, "cv")]["confusion"]), cv)
    n, n_out = db.count(), len(db.outputs())
    assert record(db, res) == 0 and db.count() == n and len(db.outputs()) == n_out     # never duplicated
    mlp = result_rows(results["a1"])[0]["config_hash"]
    assert all(o["attention"] is None for o in db.outputs(mlp))                       # mlp has no weights


def test_a_version_1_database_opens_and_gains_the_outputs_table(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    ResultsDB(path).add([{"config_hash": "h", "dataset": "d", "mode": "mertools", "preset": "default",
                          "fusion": "mlp", "features": {}, "feature_hashes": {}, "hyper": {}, "fold": -1,
                          "seed": 0, "split": "cv"}])
    con = sqlite3.connect(path)
    con.execute("DROP TABLE outputs")      # what a database written before the outputs table looks like
    con.commit()
    con.close()
    db = ResultsDB(path)
    assert db.count() == 1 and db.outputs() == []


def test_formats_parse(filled: tuple[ResultsDB, dict]) -> None:
    db, _ = filled
    tabs = tables(db, "synth")
    md = render(tabs, "md")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.count("|") for ln in lines if ln.startswith("| synth | mertools | audio")}) == 1
    assert sum(1 for ln in lines if ln.startswith("| synth")) == 6 and "±" in md
    rows = list(csv.DictReader(io.StringIO(render(tabs, "csv"))))
    assert {r["table"] for r in rows} == {"unimodal", "multimodal"}
    uni = tables(db)[0]
    first = uni.rows[0]
    got = next(r for r in rows if r["table"] == "unimodal" and r["column"] == "CV WAF" and first[3] in r["group"])
    assert float(got["mean"]) == pytest.approx(first[uni.columns.index("CV WAF")][0])
    tex = render(tabs, "latex")
    assert tex.count(r"\begin{tabular}") == 2 and r"$\pm$" not in tex and r"\pm" in tex
    assert all(ln.endswith(r"\\") for ln in tex.splitlines() if ln.startswith("synth"))
    with pytest.raises(UnknownNameError, match="report format"):
        render(tabs, "xlsx")


def test_plots_are_png_files(filled: tuple[ResultsDB, dict], tmp_path: Path) -> None:
    db, _ = filled
    files = plot_all(db, trials(db), tmp_path / "plots")
    names = {f.name for f in files}
    assert {"confusion-synth-test1.png", "confusion-synth-cv.png", "topn-synth-mertools.png", "attention-synth.png"} <= names
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 2000


def test_empty_database_and_unknown_dataset_are_named(filled: tuple[ResultsDB, dict], tmp_path: Path) -> None:
    with pytest.raises(FeatstoreError, match="no results yet"):
        trials(ResultsDB(tmp_path / "empty.sqlite"))
    with pytest.raises(UnknownNameError, match="synth"):
        trials(filled[0], "synht")


def test_a_noisy_test_corruption_is_its_own_row(tmp_path: Path) -> None:
    """Train clean, test on a corrupted key: the report names the corruption and keeps it apart from clean."""
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=90, n_test=30, dims={"a1": ("audio", 8), "v1": ("visual", 6)},
                       corruptions=("clean", "snr5"))
    db = ResultsDB(tmp_path / "r.sqlite")
    proto = Protocol(epochs=2, folds="cv3")
    for test_cor in (None, "snr5"):
        fs = load_features(store, "synth", audio=["a1"], video=["v1"], test_corruption=test_cor)
        record(db, run_experiment(fs, "attention", proto), test_corruption=test_cor)
        fs1 = load_features(store, "synth", audio=["a1"], test_corruption=test_cor)
        record(db, run_experiment(fs1, "mlp", proto), test_corruption=test_cor)
    multi = multimodal_table(trials(db))
    assert sorted(r[multi.columns.index("corruption")] for r in multi.rows) == ["clean", "clean -> snr5"]
    uni = unimodal_table(trials(db))
    assert sorted(r[uni.columns.index("feature")] for r in uni.rows) == ["a1/clean", "a1/clean -> snr5"]
