"""Adapter for any folder of clips described by one CSV file (the custom-dataset path).

Reads `<root>/labels.csv` (or `root` itself when it is a .csv file): UTF-8, a header row, one row per sample.
Columns (names fixed; extra columns are ignored):
  id          sample id (required, unique)
  path        clip path, relative to the CSV's folder or absolute (empty: no media; then only text features)
  subtitle    transcript (optional column)
  emotion     class name (optional column; empty cell = unlabelled). Classes: the catalog entry's emotions
              when it lists them (unknown names are an error listing them), else the sorted names found
  valence     float (optional column; empty = unlabelled); `sentiment` likewise for sentiment corpora
  split       subset name per row (optional column; e.g. train / val / test); empty = in no subset
  group       group per row (optional column; e.g. a session, for leave-one-group-out)
  subtitle@V, path@V   an input variant V (a catalog variant such as lang-eng or tts): other subtitles or
              other media per sample, built as the key (dataset, encoder, V)

Gives a DatasetIndex in file order. Media paths that do not exist are counted and the first few named in a
warning (their samples fail at decode, recorded per sample); subtitles that are not valid UTF-8 are per-sample
text errors.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

REQUIRED = ("id",)


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read `root` (a folder holding labels.csv, or a .csv file) into a DatasetIndex."""
    root = Path(root)
    path = root if root.suffix.lower() == ".csv" else root / "labels.csv"
    return read_table(path, spec, columns={"id": "id", "path": "path", "subtitle": "subtitle", "emotion": "emotion",
                                           "valence": "valence", "sentiment": "sentiment", "split": "split",
                                           "group": "group"})


def read_table(path: Path, spec, columns: dict[str, str], media: str | None = None,  # noqa: ANN001
               required: Sequence[str] = REQUIRED, default_classes: Sequence[str] = ()) -> DatasetIndex:
    """Read a one-row-per-sample CSV into a DatasetIndex.

    columns: role -> column name (roles: id, path, subtitle, emotion, valence, sentiment, split, group).
    media: a pattern such as 'clips/{id}.mp4' (relative to the CSV's folder) used instead of a path column.
    required: roles whose columns must exist. default_classes: the emotion classes when the catalog lists none.
    """
    name = getattr(spec, "name", path.stem)
    if not path.is_file():
        raise FeatstoreError(f"dataset {name}: no {path.name} at {path}")
    base = path.parent.resolve()
    rows, header = read_rows(path, name, [columns[r] for r in required])
    has = {role: col in header for role, col in columns.items()}

    def cell(r: dict[str, str], role: str) -> str:
        return (r.get(columns[role]) or "").strip() if has.get(role) else ""

    classes = list(getattr(spec, "emotions", ()) or ())
    if has["emotion"]:
        found = sorted({cell(r, "emotion") for r in rows} - {""})
        if not classes:
            classes = list(default_classes) or found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise FeatstoreError(f"dataset {name}: {path} has emotions not in the catalog's label space: {', '.join(unknown)} "
                                 f"(known: {', '.join(classes)})")
    code = {e: i for i, e in enumerate(classes)}
    n = len(rows)
    ids: list[str] = []
    media_paths: list[str | None] = []
    text: list[str | None] = []
    text_errors: dict[int, str] = {}
    emotion = np.full(n, -1, np.int16)
    cont = {role: np.full(n, np.nan, np.float32) for role in ("valence", "sentiment") if has[role]}
    splits, groups = [], []
    seen: set[str] = set()
    missing_media: list[str] = []
    for j, r in enumerate(rows):
        line = j + 2                                           # the header is line 1
        sid = cell(r, "id")
        if not sid:
            raise FeatstoreError(f"dataset {name}: {path} line {line}: empty '{columns['id']}'")
        if has_bad_bytes(sid) or has_bad_bytes(cell(r, "emotion")) or has_bad_bytes(cell(r, "split")):
            raise FeatstoreError(f"dataset {name}: {path} line {line}: id/emotion/split is not valid UTF-8")
        if sid in seen:
            raise FeatstoreError(f"dataset {name}: {path} line {line}: duplicate id '{sid}'")
        seen.add(sid)
        ids.append(sid)
        rel = media.format(id=sid) if media else cell(r, "path")
        clip = (base / rel) if rel else None
        if clip is not None and clip.is_file():
            media_paths.append(str(clip))
        else:
            media_paths.append(None)
            if rel:
                missing_media.append(sid)
        sub = (r.get(columns["subtitle"]) or None) if has["subtitle"] else None
        if sub is not None and has_bad_bytes(sub):
            text_errors[j] = "subtitle is not valid UTF-8"
            sub = None
        text.append(sub)
        e = cell(r, "emotion")
        if e:
            emotion[j] = code[e]
        for role, arr in cont.items():
            v = cell(r, role)
            if v:
                arr[j] = parse_number(v, role, name, path, line)
        splits.append(cell(r, "split"))
        groups.append(cell(r, "group"))

    split_names = list(getattr(spec, "splits", ()) or ())
    split_names += sorted({s for s in splits if s} - set(split_names))
    split_arr = np.array(splits, dtype=object)
    subsets = {s: (split_arr == s).astype(bool) for s in split_names} if has["split"] else {}
    if missing_media:
        log.warning("dataset %s: %d of %d clips missing (first: %s)", name, len(missing_media), n,
                    ", ".join(missing_media[:3]))
    variants: dict[str, dict[str, list[str | None]]] = {}
    for col in header:
        role, _, variant = col.partition("@")
        if variant and role in ("subtitle", "path"):
            vals = [(r.get(col) or None) for r in rows]
            if role == "path":
                vals = [str((base / v).resolve()) if v and (base / v).is_file() else None for v in vals]
            else:
                vals = [None if v is None or has_bad_bytes(v) else v for v in vals]
            variants.setdefault(variant, {})["text" if role == "subtitle" else "media"] = vals
    labels: dict[str, np.ndarray] = dict(cont)
    label_classes: dict[str, list[str]] = {}
    if has["emotion"]:
        labels["emotion"], label_classes["emotion"] = emotion, classes
    return DatasetIndex(name=name, root=str(base), ids=ids, media=media_paths, text=text, labels=labels,
                        label_classes=label_classes, subsets=subsets,
                        groups=np.array(groups, dtype=str) if has["group"] else None, text_errors=text_errors,
                        variants=variants)


def read_rows(path: Path, name: str, required: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, header) of a UTF-8 CSV with a header row; bytes that are not UTF-8 survive as surrogates (see
    has_bad_bytes) so one bad cell fails one sample, not the file. A missing required column is an error."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        missing = [c for c in required if c not in header]
        if missing:
            raise FeatstoreError(f"dataset {name}: {path} lacks column '{missing[0]}' (needs {', '.join(required)}; "
                                 f"found {', '.join(header) or 'no header'})")
        return list(reader), header


def parse_number(value: str, what: str, name: str, path: Path, line: int) -> float:
    """A finite float from a CSV cell, or an error naming the file, line and column."""
    try:
        x = float(value)
    except ValueError:
        raise FeatstoreError(f"dataset {name}: {path} line {line}: {what} '{value}' is not a number") from None
    if not math.isfinite(x):
        raise FeatstoreError(f"dataset {name}: {path} line {line}: {what} '{value}' is not finite")
    return x


def has_bad_bytes(value: str) -> bool:
    """True when `value` holds bytes that were not valid UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)
