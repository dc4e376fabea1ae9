"""Tables from the results database alone: Table-3 style (unimodal features ranked) and Table-4 style (Top-N
multimodal), mean ± std over seeds of the fold-averaged rows, as Markdown, CSV or LaTeX.

A trial is one config hash. Its figures per split are the mean and (numpy, population) std over its seeds of
the fold -1 rows: the CV figure (mean over folds) and each test split's fold-averaged prediction. Within a
group (a feature for Table 3; a fusion x modality combination x Top-N for Table 4) the reported trial is the
one with the best mean CV selection score -- never chosen on a test split.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError, UnknownNameError
from trainer.data import ARG_OF_MODALITY
from trainer.results import ResultsDB
from trainer.search import combo_letters

FORMATS = ("md", "csv", "latex")
METRICS = ("waf", "acc", "mse", "score")


@dataclass
class Trial:
    """One config hash with its per-split mean and std over seeds."""

    config_hash: str
    dataset: str
    mode: str
    fusion: str
    features: dict[str, list[str]]
    hyper: dict[str, Any]
    test_corruption: str | None = None
    seeds: int = 0
    stats: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)   # split -> metric -> (mean, std)

    @property
    def n_features(self) -> int:
        return sum(len(v) for v in self.features.values())

    @property
    def combo(self) -> str:
        """Modality letters, A V T order."""
        return combo_letters([ARG_OF_MODALITY.get(m, m) for m in self.features])

    @property
    def topn(self) -> int:
        """The largest number of features of one modality (Top-N)."""
        return max((len(v) for v in self.features.values()), default=0)

    @property
    def feature(self) -> str:
        """The single feature of a unimodal trial ('encoder/corruption', '-> test corruption' when it differs)."""
        key = next(k for v in self.features.values() for k in v)
        test = self.test_corruption_name
        return key + (f" -> {test}" if test != self.train_corruption else "")

    @property
    def train_corruption(self) -> str:
        """The corruption trained on: the non-clean corruption(s) of its keys (a corruption leaves the other
        modalities on clean keys), else 'clean'."""
        cors = sorted({k.split("/")[-1] for v in self.features.values() for k in v} - {"clean"})
        return ",".join(cors) or "clean"

    @property
    def test_corruption_name(self) -> str:
        """The corruption tested on (the train corruption when none was given)."""
        return self.test_corruption or self.train_corruption

    @property
    def corruptions(self) -> str:
        """'train -> test' corruptions of a trial ('clean' when neither is corrupted)."""
        train, test = self.train_corruption, self.test_corruption_name
        return train + (f" -> {test}" if test != train else "")

    def get(self, split: str, metric: str) -> tuple[float, float]:
        return self.stats.get(split, {}).get(metric, (math.nan, math.nan))

    @property
    def cv_score(self) -> float:
        v = self.get("cv", "score")[0]
        return v if math.isfinite(v) else -math.inf


def trials(db: ResultsDB, dataset: str | None = None, mode: str | None = None) -> list[Trial]:
    """Every trial in the database (of `dataset` and protocol `mode` when given), with its statistics."""
    where, params = "fold = -1", []
    if dataset:
        where += " AND dataset = ?"
        params.append(dataset)
    if mode:
        where += " AND mode = ?"
        params.append(mode)
    rows = db.rows(where, params)
    if not rows:
        have = sorted({r["dataset"] for r in db.rows("fold = -1")})
        if not have:
            raise FeatstoreError(f"the results database {db.path} holds no results yet; run `trainer run`, "
                                 f"`trainer rank` or `trainer grid` first")
        if dataset and dataset not in have:
            raise UnknownNameError("dataset in the results database", dataset, have)
        raise FeatstoreError(f"no {mode} results for {dataset or 'any dataset'} in {db.path}")
    by: dict[str, Trial] = {}
    values: dict[tuple[str, str, str], list[float]] = {}
    seeds: dict[str, set[int]] = {}
    for r in rows:
        h = r["config_hash"]
        if h not in by:
            preset = r.get("preset") or "default"        # a preset's numbers are marked in the mode column
            mode = r["mode"] if preset == "default" else f"{r['mode']}, {preset} preset"
            by[h] = Trial(h, r["dataset"], mode, r["fusion"], r["features"] or {}, r["hyper"] or {},
                          r.get("test_corruption"))
        seeds.setdefault(h, set()).add(int(r["seed"]))
        for m in METRICS:
            values.setdefault((h, r["split"], m), []).append(r[m] if r[m] is not None else math.nan)
    for (h, split, m), vals in values.items():
        a = np.asarray(vals, np.float64)
        a = a[np.isfinite(a)]
        by[h].stats.setdefault(split, {})[m] = (float(a.mean()), float(a.std())) if len(a) else (math.nan, math.nan)
    for h, t in by.items():
        t.seeds = len(seeds[h])
    return list(by.values())


def best_by(trials_: Sequence[Trial], key: Any) -> dict[Any, Trial]:
    """{key(trial): the trial with the best mean CV selection score} (ties: the first in the database)."""
    out: dict[Any, Trial] = {}
    for t in trials_:
        k = key(t)
        if k not in out or t.cv_score > out[k].cv_score:
            out[k] = t
    return out


def test_splits(trials_: Sequence[Trial]) -> list[str]:
    return sorted({s for t in trials_ for s in t.stats if s not in ("cv", "inner")})


@dataclass
class Table:
    """A rendered-agnostic table: title, column names, rows of cell values (str, or (mean, std) pairs)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]


def unimodal_table(trials_: Sequence[Trial]) -> Table:
    """Table 3 style: per dataset, protocol mode and feature, its best config; ranked by CV WAF per modality."""
    uni = [t for t in trials_ if t.n_features == 1]
    best = best_by(uni, lambda t: (t.dataset, t.mode, t.fusion, t.feature))
    splits = test_splits(list(best.values()))
    cols = ["dataset", "mode", "modality", "feature", "fusion", "hidden", "lr", "dropout", "seeds", "CV WAF", "CV ACC"]
    cols += [f"{s} {m}" for s in splits for m in ("WAF", "ACC")]
    order = sorted(best.values(), key=lambda t: (t.dataset, t.mode, t.combo, -_finite(t.get("cv", "waf")[0])))
    rows = [[t.dataset, t.mode, next(iter(t.features)), t.feature, t.fusion, *_hyper(t), str(t.seeds),
             t.get("cv", "waf"), t.get("cv", "acc"), *[t.get(s, m) for s in splits for m in ("waf", "acc")]]
            for t in order]
    return Table("unimodal", "Unimodal features (Table 3 style): best config per feature by CV score; %, mean ± std over seeds", cols, rows)


def multimodal_table(trials_: Sequence[Trial]) -> Table:
    """Table 4 style: per dataset, mode, fusion, modality combination and Top-N, the best config by CV score."""
    multi = [t for t in trials_ if len(t.features) > 1 or t.n_features > 1]
    best = best_by(multi, lambda t: (t.dataset, t.mode, t.fusion, t.corruptions, t.combo, t.topn))
    splits = test_splits(list(best.values()))
    cols = ["dataset", "mode", "fusion", "corruption", "modalities", "top-N", "features", "hidden", "lr", "dropout", "seeds",
            "CV WAF", "CV ACC"] + [f"{s} {m}" for s in splits for m in ("WAF", "ACC")]
    order = sorted(best.values(), key=lambda t: (t.dataset, t.mode, t.fusion, t.corruptions, len(t.combo), t.combo,
                                                 t.topn))
    rows = [[t.dataset, t.mode, t.fusion, t.corruptions, t.combo, str(t.topn),
             " + ".join(k.split("/")[0] for v in t.features.values() for k in v), *_hyper(t), str(t.seeds),
             t.get("cv", "waf"), t.get("cv", "acc"), *[t.get(s, m) for s in splits for m in ("waf", "acc")]]
            for t in order]
    return Table("multimodal", "Multimodal Top-N (Table 4 style): best config per fusion, modalities and N by CV score; %, mean ± std over seeds",
                 cols, rows)


def noise_table(trials_: Sequence[Trial]) -> Table:
    """MERBench Tables 14-15 style: for a feature set trained and tested under several corruptions, the first
    test split's WAF of the best config (by CV score) per train corruption (rows) x test corruption (columns)."""
    def base(t: Trial) -> tuple[Any, ...]:
        encs = tuple(sorted(k.split("/")[0] for v in t.features.values() for k in v))
        return (t.dataset, t.mode, t.fusion, encs)

    def pair(t: Trial) -> tuple[str, str]:
        return t.train_corruption, t.test_corruption_name

    groups: dict[tuple[Any, ...], list[Trial]] = {}
    for t in trials_:
        groups.setdefault(base(t), []).append(t)
    rows, tests_all = [], set()
    for key, ts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        best = best_by(ts, pair)
        if len({p[1] for p in best}) < 2 and len({p[0] for p in best}) < 2:
            continue
        splits = test_splits(list(best.values()))
        if not splits:
            continue
        for train in sorted({p[0] for p in best}):
            cells = {te: best[(tr, te)].get(splits[0], "waf") for (tr, te) in best if tr == train}
            tests_all |= set(cells)
            rows.append((key, train, splits[0], cells))
    tests = sorted(tests_all, key=lambda c: (c != "clean", c))
    cols = ["dataset", "mode", "fusion", "features", "split", "train \\ test"] + tests
    out = [[k[0], k[1], k[2], " + ".join(k[3]), split, train] + [cells.get(te, (math.nan, math.nan)) for te in tests]
           for k, train, split, cells in rows]
    return Table("noise", "Noise robustness (MERBench Tables 14-15 style): test WAF, train corruption x test corruption; "
                          "%, mean ± std over seeds", cols, out)


def fusion_table(trials_: Sequence[Trial]) -> Table:
    """MERBench Table 9 style: fusion (rows) x dataset (columns), the first test split's WAF of each fusion's best
    multimodal trial (by CV score) on the clean features; shown when two or more fusions were tried."""
    multi = [t for t in trials_ if len(t.features) > 1 and t.corruptions == "clean"]
    best = best_by(multi, lambda t: (t.mode, t.fusion, t.dataset))
    if len({k[1] for k in best}) < 2:
        return Table("fusion", "", [], [])
    datasets = sorted({k[2] for k in best})
    rows = []
    for mode, fusion in sorted({(k[0], k[1]) for k in best}):
        cells = []
        for d in datasets:
            t = best.get((mode, fusion, d))
            splits = test_splits([t]) if t else []
            cells.append(t.get(splits[0], "waf") if splits else (math.nan, math.nan))
        rows.append([mode, fusion, *cells])
    return Table("fusion", "Fusion strategies (MERBench Table 9 style): test WAF of each fusion's best multimodal "
                           "config by CV score; %, mean ± std over seeds", ["mode", "fusion", *datasets], rows)


def tables(db: ResultsDB, dataset: str | None = None, mode: str | None = None) -> list[Table]:
    """The report's tables (those with rows)."""
    ts = trials(db, dataset, mode)
    return [t for t in (unimodal_table(ts), multimodal_table(ts), noise_table(ts), fusion_table(ts)) if t.rows]


def render(tabs: Sequence[Table], fmt: str = "md") -> str:
    """Tables as GitHub Markdown, one tidy CSV (one row per cell of a metric: mean and std columns) or LaTeX."""
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    if fmt == "csv":
        return _csv(tabs)
    out = []
    for t in tabs:
        cells = [[_cell(v, fmt) for v in row] for row in t.rows]
        if fmt == "md":
            out.append(f"### {t.title}\n")
            out.append("| " + " | ".join(t.columns) + " |")
            out.append("|" + "---|" * len(t.columns))
            out += ["| " + " | ".join(r) + " |" for r in cells]
            out.append("")
        else:
            esc = lambda s: s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")  # noqa: E731
            out.append(f"% {t.title}")
            out.append(r"\begin{tabular}{" + "l" * len(t.columns) + "}")
            out.append(r"\hline")
            out.append(" & ".join(esc(c) for c in t.columns) + r" \\")
            out.append(r"\hline")
            out += [" & ".join(esc(c) if "$" not in c else c for c in r) + r" \\" for r in cells]
            out.append(r"\hline")
            out.append(r"\end{tabular}")
            out.append("")
    return "\n".join(out)


def _csv(tabs: Sequence[Table]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "dataset", "mode", "group", "column", "mean", "std"])
    for t in tabs:
        for row in t.rows:
            labels = [str(v) for v in row if not isinstance(v, tuple)]
            group = " / ".join(labels[2:])
            for col, v in zip(t.columns, row):
                if isinstance(v, tuple):
                    w.writerow([t.name, row[0], row[1], group, col, _num(v[0]), _num(v[1])])
    return buf.getvalue()


def _hyper(t: Trial) -> list[str]:
    return [str(t.hyper.get("hidden", "")), f"{t.hyper.get('lr', math.nan):g}", f"{t.hyper.get('dropout', math.nan):g}"]


def _cell(v: Any, fmt: str) -> str:
    if not isinstance(v, tuple):
        return str(v)
    mean, std = v
    if not math.isfinite(mean):
        return "—" if fmt == "md" else "--"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if fmt == "md" else f"${100 * mean:.2f} \\pm {100 * std:.2f}$"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ""
