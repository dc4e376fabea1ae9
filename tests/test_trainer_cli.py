"""`trainer run | rank | grid | report` end to end on a small synthetic store (typer's runner)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import trainer_app
from trainer.models import available_models, model_level
from trainer.results import ResultsDB

runner = CliRunner()
DIMS = {"a1": ("audio", 12), "a2": ("audio", 8), "t1": ("text", 10), "v1": ("visual", 8)}


def trainer(*args: str, code: int = 0) -> str:
    result = runner.invoke(trainer_app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def _json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from trainer.synthetic import make_store

    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    make_store(path, n_train=120, n_test=40, dims=DIMS)
    return str(path)


def test_run_options_reach_the_experiment(store: str, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    base = ["run", "--store", store, "--dataset", "synth", "--audio", "a1,a2", "--video", "v1", "--epochs", "2",
            "--folds", "cv3", "--results", str(db), "--json"]
    plain = _json(trainer(*base))
    assert plain["branches"] == ["a1", "a2", "v1"] and plain["config"] == {"hidden": 128, "dropout": 0.5, "lr": 1e-4,
                                                                         "weight_decay": 1e-5}
    concat = _json(trainer(*base, "--concat", "--softmax", "--threads", "2", "--max-models", "1",
                           "--test-splits", "test1", "--save-predictions", str(tmp_path / "preds")))
    assert concat["branches"] == ["audio:a1+a2", "visual:v1"] and concat["config"]["softmax"] is True
    assert concat["protocol"]["threads"] == 2 and concat["protocol"]["test_splits"] == ["test1"]
    assert set(concat["splits"]) == {"cv", "test1"} and concat["splits"]["test1"]["n"] == 40
    with open(tmp_path / "preds" / "synth-test1.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {"sample", "true", "predicted", "prob_neutral"} <= set(rows[0])
    assert ResultsDB(db).count() > 0
    trainer(*base, "--test-splits", "nope", code=1)


def test_rank_grid_and_report_from_the_command_line(store: str, tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    common = ["--store", store, "--dataset", "synth", "--epochs", "2", "--folds", "cv3", "--results", db]
    ranked = _json(trainer("rank", *common, "--trials", "2", "--json"))
    assert [r["encoder"] for r in ranked["ranking"]["audio"]] in (["a1", "a2"], ["a2", "a1"])
    assert ranked["trained"] == 8 and set(ranked["ranking"]) == {"audio", "text", "video"}
    grid = _json(trainer("grid", *common, "--topn", "1-2", "--modalities", "AV,AT", "--trials", "3", "--json"))
    # AV top-2 and AT top-2 add the second audio encoder; one video and one text encoder only (noted)
    assert grid["trained"] == 12 and [s["label"] for s in grid["sets"]] == ["AV top-1", "AV top-2", "AT top-1", "AT top-2"]
    assert any("only 1 visual" in n or "only 1 video" in n for n in grid["notes"])
    again = _json(trainer("grid", *common, "--topn", "1-2", "--modalities", "AV,AT", "--trials", "3", "--json"))
    assert again["trained"] == 0 and again["skipped"] == 12 and again["rows_added"] == 0
    md = trainer("report", "--store", store, "--results", db, "--plot", str(tmp_path / "plots"))
    assert "Table 3 style" in md and "Table 4 style" in md and "| synth | mertools | attention | clean | AV | 2 |" in md
    assert (tmp_path / "plots" / "topn-synth-mertools.png").is_file()


def test_bad_names_and_missing_features_are_one_line_errors(store: str, tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    out = trainer("run", "--store", store, "--dataset", "synth", "--audio", "a3", "--results", db, code=1)
    assert "did you mean" in out and "a1" in out
    out = trainer("run", "--store", store, "--dataset", "synth", "--audio", "a1", "--corruption", "snr5",
                  "--results", db, code=1)
    assert "featstore build" in out
    assert "unknown letter" in trainer("grid", "--store", store, "--dataset", "synth", "--modalities", "AQ",
                                        "--results", db, code=1)
    assert "no results database" in trainer("report", "--store", store, "--results", db, code=1)  # nothing written


def test_noise_matrix_from_the_command_line(tmp_path: Path) -> None:
    from trainer.synthetic import make_store

    store = str(tmp_path / "n.zarr")
    make_store(store, n_train=90, n_test=30, dims={"a1": ("audio", 8), "v1": ("visual", 6)},
               corruptions=("clean", "snr5", "snr10"))
    db = str(tmp_path / "r.sqlite")
    args = ["noise", "--store", store, "--dataset", "synth", "--audio", "a1", "--video", "v1", "--train", "clean,snr10",
            "--test", "clean,snr5,snr10", "--epochs", "2", "--folds", "cv3", "--results", db, "--json"]
    assert _json(trainer(*args))["trained"] == 6
    assert _json(trainer(*args))["skipped"] == 6                      # resumable
    md = trainer("report", "--store", store, "--results", db)
    assert "Noise robustness" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| synth | mertools | attention | a1 + v1 | test1 |")]
    assert len(rows) == 2 and rows[0].count("±") == 3 and "| clean |" in rows[0] and "| snr10 |" in rows[1]
    header = next(ln for ln in md.splitlines() if "train \\ test" in ln)
    assert header.endswith("| clean | snr10 | snr5 |")


def test_semi_from_the_command_line(tmp_path: Path) -> None:
    from trainer.synthetic import make_store

    store = str(tmp_path / "p.zarr")
    make_store(store, n_train=120, n_test=80, dims={"a1": ("audio", 8)}, signal=2.0, test_labels=False)
    db = str(tmp_path / "r.sqlite")
    out = _json(trainer("semi", "--store", store, "--dataset", "synth", "--audio", "a1", "--pool", "test1",
                        "--epochs", "3", "--folds", "cv3", "--lr", "1e-3", "--results", db, "--json"))
    sup, rnd = out["models"]
    assert sup["model"] == "supervised" and rnd["model"] == "round 1" and 0 < rnd["pseudo_labels"] <= 80
    assert "cv" in sup and "cv" in rnd and "test1" not in rnd
    presets = {r["preset"] for r in ResultsDB(db).rows("fold = -1 AND split = 'cv'")}
    assert presets == {"default", "semi-eta0.5-round1"}


def test_cross_corpus_from_the_command_line(tmp_path: Path) -> None:
    from trainer.synthetic import make_store

    store = str(tmp_path / "c.zarr")
    make_store(store, dataset="dsa", n_train=90, n_test=20, dims={"a1": ("audio", 8)}, signal=2.0)
    make_store(store, dataset="dsb", n_train=30, n_test=30, dims={"a1": ("audio", 8)}, signal=2.0,
               proportions=(0.5, 0.5))
    out = _json(trainer("cross", "--store", store, "--train-dataset", "dsa", "--test-dataset", "dsb", "--audio", "a1",
                        "--epochs", "2", "--folds", "cv3", "--results", str(tmp_path / "r.sqlite"), "--json"))
    assert out["classes"] == ["neutral", "angry"] and out["splits"]["dsb"]["n"] == 60
    assert set(out["splits"]) == {"cv", "test1", "dsb", "dsb:train", "dsb:test1"}


def test_predict_writes_a_submission_for_every_sample_of_a_split(tmp_path: Path) -> None:
    from trainer.synthetic import make_store

    store = str(tmp_path / "q.zarr")
    make_store(store, n_train=60, n_test=45, dims={"a1": ("audio", 8)}, test_labels=False)
    out = tmp_path / "sub.csv"
    msg = trainer("predict", "--store", store, "--dataset", "synth", "--split", "test1", "--out", str(out),
                  "--audio", "a1", "--epochs", "2", "--folds", "cv3", "--chunk", "10")
    assert "wrote 45 predictions" in msg
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 45 and set(rows[0]) == {"name", "discrete", "valence"}
    assert {r["discrete"] for r in rows} <= {"neutral", "angry", "happy", "sad", "worried", "surprise"}
    before = out.read_bytes()
    err = trainer("predict", "--store", store, "--dataset", "synth", "--split", "tets1", "--out", str(out),
                  "--audio", "a1", "--epochs", "1", "--folds", "cv3", code=1)
    assert "unknown subset of synth 'tets1'" in err and "test1" in err and out.read_bytes() == before


def test_concatenated_branches_are_a_trial_of_their_own(store: str, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    base = ["run", "--store", store, "--dataset", "synth", "--audio", "a1,a2", "--epochs", "1", "--folds", "cv3",
            "--results", str(db), "--json"]
    trainer(*base)
    n = ResultsDB(db).count()
    trainer(*base, "--concat")
    assert ResultsDB(db).count() == 2 * n        # recorded next to the per-feature-branch trial, not ignored


def test_grid_over_every_fusion_and_the_table_9_report(store: str, tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    out = _json(trainer("grid", "--store", store, "--dataset", "synth", "--topn", "1", "--modalities", "AV",
                        "--fusion", "all", "--trials", "1", "--rank-trials", "1", "--epochs", "1", "--folds", "cv3",
                        "--results", db, "--json"))
    fusions = {r["fusion"] for r in ResultsDB(db).rows("split = 'cv' AND fold = -1")} - {"mlp"}
    utterance = {f for f in available_models() if model_level(f) == "utt"} - {"mlp"}   # the store has no frames
    assert {"attention", "tfn", "lmf", "lf_dnn", "misa"} <= utterance
    assert fusions == utterance and out["trained"] == len(utterance)
    md = trainer("report", "--store", store, "--results", db)
    table9 = md[md.index("Table 9 style"):]
    assert all(f"| mertools | {f} |" in table9 for f in fusions)
    assert "unknown fusion model 'tnf'" in trainer("grid", "--store", store, "--dataset", "synth", "--fusion", "tnf",
                                                  "--results", db, code=1)


def test_model_options_reach_the_fusion(store: str, tmp_path: Path) -> None:
    base = ["run", "--store", store, "--dataset", "synth", "--audio", "a1", "--video", "v1", "--fusion", "lmf",
            "--epochs", "1", "--folds", "cv3", "--results", str(tmp_path / "r.sqlite"), "--json"]
    assert _json(trainer(*base, "--model-option", "rank=3"))["config"]["rank"] == 3
    assert "does not take option" in trainer(*base, "--model-option", "subnet=8", code=1)
    assert "expected KEY=VALUE" in trainer(*base, "--model-option", "rank", code=1)


def test_the_model_registry_drives_the_fusion_choices(store: str, tmp_path: Path) -> None:
    from trainer.models import MODELS, register
    from trainer.models.lf_dnn import LateFusionDNN

    listed = _json(trainer("fusions", "--json"))
    assert sorted(listed) == available_models()
    assert {f: listed[f]["level"] for f in ("mult", "mfm", "misa")} == {"mult": "seq", "mfm": "seq", "misa": "utt"}
    assert all(set(v["space"]) >= {"hidden", "lr", "dropout"} for f, v in listed.items() if v["space"] and f != "linear")
    assert listed["linear"]["space"] == {"solver": ["logistic", "ridge"]}     # the convex baseline searches its solver

    @register("my_fusion")
    class MyFusion(LateFusionDNN):
        """A fusion registered by a test: one file's decorator is all it takes."""

    try:
        assert "my_fusion" in _json(trainer("fusions", "--json"))
        out = _json(trainer("run", "--store", store, "--dataset", "synth", "--audio", "a1", "--video", "v1",
                            "--fusion", "my_fusion", "--epochs", "1", "--folds", "cv3",
                            "--results", str(tmp_path / "r.sqlite"), "--json"))
        assert out["fusion"] == "my_fusion"
    finally:
        del MODELS["my_fusion"]
    assert "did you mean my_fusion" not in trainer("run", "--store", store, "--dataset", "synth", "--audio", "a1",
                                                   "--fusion", "my_fusion", code=1)


def test_predict_refuses_a_sequence_model_before_training(store: str, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    err = trainer("predict", "--store", store, "--dataset", "synth", "--split", "test1", "--out", str(out),
                  "--audio", "a1", "--video", "v1", "--fusion", "mfn", code=1)
    assert "sequence model 'mfn' is not supported there yet" in err and not out.exists()
