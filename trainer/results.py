"""results.sqlite: one tidy row per (trial, fold, seed, split); one writer, readable while a grid writes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from featstore.catalog import spec_hash

SCHEMA_VERSION = 2   # 2: the outputs table (added on open to version-1 databases)
COLUMNS: dict[str, str] = {
    "config_hash": "TEXT NOT NULL",   # hash of everything that defines the trial (features+spec hashes, fusion, hyper, protocol)
    "dataset": "TEXT NOT NULL",
    "mode": "TEXT NOT NULL",          # protocol mode: mertools | strict
    "preset": "TEXT NOT NULL",        # named training recipe (e.g. default, fast)
    "fusion": "TEXT NOT NULL",
    "features": "TEXT NOT NULL",      # JSON {modality: [encoder/corruption, ...]}
    "feature_hashes": "TEXT NOT NULL",  # JSON {encoder/corruption: store spec hash}
    "test_corruption": "TEXT",
    "hyper": "TEXT NOT NULL",         # JSON of every hyper-parameter
    "hidden": "INTEGER", "lr": "REAL", "dropout": "REAL", "weight_decay": "REAL",
    "epochs": "INTEGER", "batch_size": "INTEGER",
    "fold": "INTEGER NOT NULL",       # fold index; -1 = the fold-averaged figure of this seed
    "seed": "INTEGER NOT NULL",
    "split": "TEXT NOT NULL",         # cv (held-out folds) or a test subset name
    "acc": "REAL", "waf": "REAL", "mse": "REAL", "score": "REAL",
    "n": "INTEGER", "best_epoch": "INTEGER",
    "seconds": "REAL", "code_version": "TEXT", "created": "TEXT",
}
KEY = ("config_hash", "fold", "seed", "split")
# what a report draws besides the metrics, per (trial, seed, split) of the fold-averaged prediction
OUTPUT_COLUMNS: dict[str, str] = {
    "config_hash": "TEXT NOT NULL", "seed": "INTEGER NOT NULL", "split": "TEXT NOT NULL",
    "classes": "TEXT",                # JSON class names (rows and columns of the confusion matrix)
    "confusion": "TEXT",              # JSON [C][C] counts: true class (row) x predicted class (column)
    "branches": "TEXT",               # JSON branch names of the attention weights
    "attention": "TEXT",              # JSON mean attention weight per branch (fusions that have them)
}
OUTPUT_KEY = ("config_hash", "seed", "split")


def default_results_path(store_path: str | Path) -> Path:
    """results.sqlite beside the store."""
    return Path(store_path).resolve().parent / "results.sqlite"


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a trial's defining config (sorted JSON)."""
    return spec_hash(config)


def code_version() -> str:
    """The git commit of the code that produced a row (or the package version outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from featstore import __version__
    return __version__


class ResultsDB:
    """The results database. Write from one process (the one that runs the grid); read from any."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if {"results", "outputs"} <= have:
            return  # an existing database: opening it never writes (a grid may hold the write lock)
        with closing(self._connect()) as con, con:
            con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor the reverse
            cols = ", ".join(f"{k} {t}" for k, t in COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, {cols}, UNIQUE ({', '.join(KEY)}))")
            con.execute("CREATE INDEX IF NOT EXISTS results_dataset ON results (dataset, split)")
            ocols = ", ".join(f"{k} {t}" for k, t in OUTPUT_COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS outputs ({ocols}, PRIMARY KEY ({', '.join(OUTPUT_KEY)}))")
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def add(self, rows: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]] = ()) -> int:
        """Insert result rows (and their output rows, see OUTPUT_COLUMNS) in one transaction; a row whose key
        (config_hash, fold, seed, split) -- or (config_hash, seed, split) for outputs -- exists is kept, never
        duplicated. Returns the number of result rows inserted.
        """
        if not rows and not outputs:
            return 0
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        version = code_version()
        names, onames = list(COLUMNS), list(OUTPUT_COLUMNS)
        stamp = {"created": now, "code_version": version}
        values = _values(rows, names, KEY, "result", stamp)
        ovalues = _values(outputs, onames, OUTPUT_KEY, "output", {})
        with closing(self._connect()) as con, con:
            before = con.total_changes
            con.executemany(f"INSERT OR IGNORE INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            values)
            added = con.total_changes - before
            con.executemany(f"INSERT OR IGNORE INTO outputs ({', '.join(onames)}) VALUES ({', '.join('?' * len(onames))})",
                            ovalues)
            return added

    def done_trials(self, config_hashes: Iterable[str], seeds: Iterable[int]) -> set[tuple[str, int]]:
        """(config_hash, seed) pairs already complete in the database (their fold-averaged cv row exists)."""
        hashes, seeds = list(config_hashes), [int(s) for s in seeds]
        if not hashes or not seeds:
            return set()
        with closing(self._connect()) as con:
            q = (f"SELECT DISTINCT config_hash, seed FROM results WHERE split = 'cv' AND fold = -1 "
                 f"AND config_hash IN ({', '.join('?' * len(hashes))}) AND seed IN ({', '.join('?' * len(seeds))})")
            return {(r["config_hash"], int(r["seed"])) for r in con.execute(q, [*hashes, *seeds])}

    def rows(self, where: str = "1=1", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, JSON columns decoded (`where` is an SQL condition over the columns above)."""
        with closing(self._connect()) as con:
            out = []
            for r in con.execute(f"SELECT * FROM results WHERE {where} ORDER BY id", list(params)):
                d = dict(r)
                for k in ("features", "feature_hashes", "hyper"):
                    d[k] = json.loads(d[k]) if d.get(k) else d.get(k)
                out.append(d)
            return out

    def outputs(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """Output rows (confusion matrices, attention weights), JSON decoded; all, or one trial's."""
        where, params = ("config_hash = ?", [config_hash]) if config_hash else ("1=1", [])
        with closing(self._connect()) as con:
            out = []
            for r in con.execute(f"SELECT * FROM outputs WHERE {where} ORDER BY config_hash, seed, split", params):
                d = dict(r)
                for k in ("classes", "confusion", "branches", "attention"):
                    d[k] = json.loads(d[k]) if d.get(k) else None
                out.append(d)
            return out

    def count(self) -> int:
        """Number of result rows."""
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _values(rows: Sequence[dict[str, Any]], names: list[str], key: Sequence[str], what: str,
            defaults: dict[str, Any]) -> list[tuple[Any, ...]]:
    """SQL value tuples of `rows` in column order; a row missing a key field is refused."""
    out = []
    for r in rows:
        missing = [k for k in key if r.get(k) is None]
        if missing:
            raise ValueError(f"{what} row lacks {', '.join(missing)}")
        row = {**defaults, **{k: v for k, v in r.items() if v is not None or k not in defaults}}
        out.append(tuple(_sql(row.get(k)) for k in names))
    return out


def _sql(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value
