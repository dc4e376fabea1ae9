"""Adapter for the MER2024 release (mer2024-dataset/, EULA required), laid out as MERTools' preprocessing reads it.

Reads, under the release root:
  label-disdim.csv                  name, discrete (six emotions); Train&Val = subset `train` (5,030)
  video-labeled/<name>.mp4          the Train&Val clips
  video-unlabeled-with-test2noise/<name>.mp4 (or video-unlabeled/)
                                    the 115,595 unlabelled clips = subset `semi_pool` (the MER-SEMI and
                                    MER-NOISE test samples are hidden inside it)
  label-transcription.csv           name, chinese, english subtitles of every clip (optional; text = chinese)
  test-semi.csv, test-noise.csv     name, discrete: released test labels (optional; subsets `test_semi`,
                                    `test_noise`, memberships inside `semi_pool`, their labels stored)
  check-openset.csv                 name, openset: the MER-OV samples (optional; subset `test_ov`, inside train)

Emotion names are matched case-insensitively to the catalog's six (neutral, angry, happy, sad, worried,
surprise); anything else is an error listing them. Expected counts (MER2024 paper, Table 1): train 5,030,
semi_pool 115,595, test_semi 1,169, test_noise 1,170, test_ov 332.
MER-NOISE clips already carry the challenge's noise: the catalog lists `test_noise` as `precorrupted`, so
`featstore build --corruption snr5-10` (or blur) encodes them as they are.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex
from featstore.datasets.csv import has_bad_bytes
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

UNLABELLED_DIRS = ("video-unlabeled-with-test2noise", "video-unlabeled")
TEST_FILES = {"test_semi": "test-semi.csv", "test_noise": "test-noise.csv"}


def _rows(path: Path, name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise FeatstoreError(f"dataset {name}: {path} lacks column '{missing[0]}'")
        return list(reader)


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a MER2024 release at `root` into a DatasetIndex (see the module docstring)."""
    root = Path(root)
    name = getattr(spec, "name", "mer2024")
    classes = list(getattr(spec, "emotions", ()) or ())
    code = {c.lower(): i for i, c in enumerate(classes)}
    label_file = root / "label-disdim.csv"
    if not label_file.is_file():
        raise FeatstoreError(f"dataset {name}: no label-disdim.csv under {root} (is this mer2024-dataset/?)")
    train = _rows(label_file, name, ("name", "discrete"))
    pool_dir = next((root / d for d in UNLABELLED_DIRS if (root / d).is_dir()), None)
    pool = sorted(p.stem for p in pool_dir.glob("*.mp4")) if pool_dir is not None else []
    if pool_dir is None:
        log.warning("dataset %s: no %s folder; the unlabelled pool is empty", name, " or ".join(UNLABELLED_DIRS))

    ids = [r["name"].strip() for r in train]
    train_set = set(ids)
    overlap = train_set & set(pool)
    if overlap:
        raise FeatstoreError(f"dataset {name}: {len(overlap)} clip(s) both labelled and unlabelled, e.g. "
                             f"{sorted(overlap)[0]}")
    ids += pool
    n = len(ids)
    pos = {s: i for i, s in enumerate(ids)}
    if len(pos) != n:
        dup = next(s for s, c in Counter(ids).items() if c > 1)
        raise FeatstoreError(f"dataset {name}: duplicate name '{dup}' in {label_file.name}")
    emotion = np.full(n, -1, np.int16)
    unknown: dict[str, int] = {}

    def put_labels(rows: list[dict[str, str]], where: str) -> np.ndarray:
        member = np.zeros(n, bool)
        absent = []
        for r in rows:
            sid, e = r["name"].strip(), (r["discrete"] or "").strip().lower()
            if sid not in pos:
                absent.append(sid)
                continue
            member[pos[sid]] = True
            if e not in code:
                unknown[e] = unknown.get(e, 0) + 1
            else:
                emotion[pos[sid]] = code[e]
        if absent:
            log.warning("dataset %s: %d name(s) of %s have no clip (first: %s)", name, len(absent), where,
                        ", ".join(absent[:3]))
        return member

    subsets = {"train": put_labels(train, label_file.name), "semi_pool": np.zeros(n, bool)}
    subsets["semi_pool"][len(train):] = True
    for subset, fname in TEST_FILES.items():
        if (root / fname).is_file():
            subsets[subset] = put_labels(_rows(root / fname, name, ("name", "discrete")), fname)
    if unknown:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in sorted(unknown.items()))
        raise FeatstoreError(f"dataset {name}: emotions not in the catalog's label space: {listed} "
                             f"(known: {', '.join(classes)})")
    if (root / "check-openset.csv").is_file():
        ov = np.zeros(n, bool)
        for r in _rows(root / "check-openset.csv", name, ("name",)):
            if r["name"].strip() in pos:
                ov[pos[r["name"].strip()]] = True
        subsets["test_ov"] = ov

    media: list[str | None] = []
    no_clip = []
    for i, sid in enumerate(ids):
        folder = root / "video-labeled" if i < len(train) else pool_dir
        clip = folder / f"{sid}.mp4" if folder is not None else None
        media.append(str(clip.resolve()) if clip is not None and clip.is_file() else None)
        if media[-1] is None:
            no_clip.append(sid)
    if no_clip:
        log.warning("dataset %s: %d labelled name(s) have no clip in video-labeled/ (first: %s)", name, len(no_clip),
                    ", ".join(no_clip[:3]))
    text: list[str | None] = [None] * n
    text_errors: dict[int, str] = {}
    subs = root / "label-transcription.csv"
    if subs.is_file():
        for r in _rows(subs, name, ("name", "chinese")):
            i = pos.get(r["name"].strip())
            if i is None:
                continue
            t = r["chinese"]
            if t and has_bad_bytes(t):
                text_errors[i] = "subtitle is not valid UTF-8"
            elif t and t.strip():
                text[i] = t.strip()
    return DatasetIndex(name=name, root=str(root.resolve()), ids=ids, media=media, text=text,
                        labels={"emotion": emotion}, label_classes={"emotion": classes}, subsets=subsets,
                        text_errors=text_errors)
