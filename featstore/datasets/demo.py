"""Adapter for the synthetic demo corpus written by `featstore.demo_data.generate`.

Reads, under the release root:
  labels.csv        columns name, emotion, valence, subtitle, split (UTF-8, header row; extra columns ignored)
  clips/<name>.mp4  one clip per row; a missing clip gives media None (counted and logged, never fatal:
                    the extraction stage records per-sample errors)

Gives: ids in labels.csv order; text = subtitle; labels `emotion` (int16 codes into the catalog's emotion
list, -1 for an empty cell) and `valence` (float32, NaN for an empty cell); subsets from the split column
as bool arrays (`train`, `test1`, plus any other split name found).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

COLUMNS = ("name", "emotion", "valence", "subtitle", "split")
DEFAULT_EMOTIONS = ("neutral", "angry", "happy", "sad", "worried", "surprise")


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a demo corpus at `root` into a DatasetIndex (see the module docstring for files and columns)."""
    root = Path(root)
    name = getattr(spec, "name", "demo")
    path = root / "labels.csv"
    if not path.is_file():
        hint = " (make one with `featstore demo-data DIR`)" if not root.is_dir() or not any(root.iterdir()) else ""
        raise FeatstoreError(f"dataset {name}: no labels.csv at {path}{hint}")
    # surrogateescape: a subtitle that is not valid UTF-8 fails that sample's text features, not the dataset
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise FeatstoreError(f"dataset {name}: {path} lacks column '{missing[0]}' "
                                 f"(needs {', '.join(COLUMNS)}; found {', '.join(header) or 'no header'})")
        rows = list(reader)

    classes = list(getattr(spec, "emotions", ()) or DEFAULT_EMOTIONS)
    code = {e: i for i, e in enumerate(classes)}
    unknown = sorted({(r["emotion"] or "").strip() for r in rows} - set(code) - {""})
    if unknown:
        raise FeatstoreError(f"dataset {name}: {path} has emotions not in the catalog's label space: "
                             f"{', '.join(unknown)} (known: {', '.join(classes)})")

    ids, media, text, n_missing, first_missing = [], [], [], 0, None
    text_errors: dict[int, str] = {}
    emotion = np.full(len(rows), -1, dtype=np.int16)
    valence = np.full(len(rows), np.nan, dtype=np.float32)
    splits: list[str] = []
    seen: set[str] = set()
    clips = root.resolve() / "clips"
    for i, r in enumerate(rows, start=2):  # line numbers: the header is line 1
        sid = (r["name"] or "").strip()
        if _has_bad_bytes(sid) or _has_bad_bytes(r["emotion"] or "") or _has_bad_bytes(r["split"] or ""):
            raise FeatstoreError(f"dataset {name}: {path} line {i}: name/emotion/split is not valid UTF-8")
        if not sid:
            raise FeatstoreError(f"dataset {name}: {path} line {i}: empty 'name'")
        if sid in seen:
            raise FeatstoreError(f"dataset {name}: {path} line {i}: duplicate name '{sid}'")
        seen.add(sid)
        j = len(ids)
        ids.append(sid)
        clip = clips / f"{sid}.mp4"
        if clip.is_file():
            media.append(str(clip))
        else:
            media.append(None)
            n_missing += 1
            first_missing = first_missing or sid
        subtitle = r["subtitle"] or None
        if subtitle is not None and _has_bad_bytes(subtitle):
            text_errors[j] = "subtitle is not valid UTF-8"
            subtitle = None
        text.append(subtitle)
        e = (r["emotion"] or "").strip()
        if e:
            emotion[j] = code[e]
        v = (r["valence"] or "").strip()
        if v:
            try:
                valence[j] = float(v)
            except ValueError:
                raise FeatstoreError(f"dataset {name}: {path} line {i}: valence '{v}' is not a number") from None
            if not math.isfinite(valence[j]):
                raise FeatstoreError(f"dataset {name}: {path} line {i}: valence '{v}' is not finite")
        splits.append((r["split"] or "").strip())

    split_names = list(getattr(spec, "splits", ()) or ("train", "test1"))
    split_names += sorted({s for s in splits if s} - set(split_names))
    split_arr = np.array(splits, dtype=object)
    subsets = {s: (split_arr == s).astype(bool) if splits else np.zeros(0, bool) for s in split_names}
    if n_missing:
        log.warning("dataset %s: %d of %d clips missing under %s (first: %s)", name, n_missing, len(ids), clips,
                    first_missing)
    return DatasetIndex(
        name=name, root=str(root.resolve()), ids=ids, media=media, text=text,
        labels={"emotion": emotion, "valence": valence}, label_classes={"emotion": classes},
        subsets=subsets, text_errors=text_errors,
    )


def _has_bad_bytes(value: str) -> bool:
    """True when `value` holds bytes that were not valid UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)
