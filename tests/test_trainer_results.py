"""trainer.results: tidy rows, no duplicates, resume bookkeeping, readable while written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from trainer.results import ResultsDB, config_hash, default_results_path


def _row(h: str, fold: int, seed: int, split: str, waf: float) -> dict:
    return {"config_hash": h, "dataset": "demo", "mode": "mertools", "preset": "default", "fusion": "attention",
            "features": {"audio": ["egemaps/clean"]}, "feature_hashes": {"egemaps/clean": "abc"},
            "hyper": {"hidden": 128, "lr": 1e-4}, "hidden": 128, "lr": 1e-4, "fold": fold, "seed": seed,
            "split": split, "acc": waf, "waf": waf, "n": 10}


def test_rows_round_trip_and_json_columns(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    assert db.add([_row("h1", 0, 0, "cv", 0.5), _row("h1", -1, 0, "cv", 0.55), _row("h1", -1, 0, "test1", 0.6)]) == 3
    rows = db.rows("split = ?", ["test1"])
    assert len(rows) == 1 and rows[0]["features"] == {"audio": ["egemaps/clean"]} and rows[0]["waf"] == 0.6
    assert rows[0]["code_version"] and rows[0]["created"]


def test_duplicates_are_ignored_and_resume_sees_complete_trials(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    db.add([_row("h1", -1, 0, "cv", 0.5)])
    assert db.add([_row("h1", -1, 0, "cv", 0.9), _row("h1", -1, 1, "cv", 0.4)]) == 1  # first one already there
    assert db.rows("seed = 0")[0]["waf"] == 0.5  # nothing overwritten
    db.add([_row("h2", 0, 0, "cv", 0.3)])  # fold rows only: trial h2 not complete
    assert db.done_trials(["h1", "h2", "h3"], [0, 1]) == {("h1", 0), ("h1", 1)}


def test_missing_key_fields_are_refused(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    bad = _row("h1", 0, 0, "cv", 0.5)
    del bad["split"]
    with pytest.raises(ValueError, match="split"):
        db.add([bad])
    assert db.count() == 0


def test_readers_see_committed_rows_while_a_writer_is_open(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    db.add([_row("h1", -1, 0, "cv", 0.5)])
    writer = sqlite3.connect(tmp_path / "r.sqlite")
    writer.execute("BEGIN IMMEDIATE")  # a grid holding the write lock
    writer.execute("INSERT INTO results (config_hash, dataset, mode, preset, fusion, features, feature_hashes, hyper, "
                   "fold, seed, split) VALUES ('h9', 'demo', 'm', 'p', 'f', '{}', '{}', '{}', -1, 0, 'cv')")
    assert ResultsDB(tmp_path / "r.sqlite").count() == 1  # WAL: the reader is not blocked, sees committed rows
    writer.commit()
    assert db.count() == 2


def test_config_hash_is_order_independent_and_db_sits_beside_the_store(tmp_path: Path) -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert default_results_path(tmp_path / "x" / "featstore.zarr") == (tmp_path / "x" / "results.sqlite").resolve()
