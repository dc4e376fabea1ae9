"""The MER challenge releases (MER2023, MER2024), read from the folder layout their MERTools scripts use.

A release is a labelled Train&Val folder with a label CSV (name, discrete[, valence]), folders of test or
unlabelled clips (each folder a subset), optional test label CSVs (name, discrete[, valence]) that either label a
clip folder's samples or name a labelled subset inside it, an optional transcription CSV (name, chinese |
sentence, english; the English column is the `lang-eng` input variant) and, for MER2024, the open-vocabulary
sample list (name, openset): subset `test_ov`, and its label lists as the categorical store label `openset`
(featstore.label_lists: one class per distinct list). `Layout` says which files; the
mer2023 and mer2024 modules each hold one.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex, clips_not_named, report_unlabelled_clips
from featstore.datasets.csv import has_bad_bytes, parse_number, read_rows
from featstore.errors import FeatstoreError
from featstore.label_lists import OPENSET_LABEL, LabelListError, encode_label_lists, parse_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where a MER release keeps what (candidates are tried in order)."""

    labels: tuple[str, ...]                                 # Train&Val label CSV
    train_dirs: tuple[str, ...]                             # Train&Val clips
    clip_dirs: dict[str, tuple[str, ...]]                   # subset -> folder of its clips (test / unlabelled)
    test_labels: dict[str, str] = field(default_factory=dict)  # subset -> label CSV (name, discrete[, valence])
    transcripts: tuple[str, ...] = ()                       # name, chinese | sentence, english
    openset: str | None = None                              # MER-OV sample list (name, ...): subset test_ov


def _read_openset(path: Path, name: str, pos: dict[str, int]) -> tuple[list[int], dict[int, list[str]] | None]:
    """Rows of the MER-OV samples and, when the file has an `openset` column, their label lists (row -> labels;
    a malformed list is an error naming the line). Names without a clip row are logged and left out."""
    rows, header = read_rows(path, name, ("name",))
    got: list[int] = []
    lists: dict[int, list[str]] | None = {} if OPENSET_LABEL in header else None
    absent = []
    for line, r in enumerate(rows, start=2):
        sid = r["name"].strip()
        if sid not in pos:
            absent.append(sid)
            continue
        got.append(pos[sid])
        if lists is not None:
            try:
                lists[pos[sid]] = parse_labels(r.get(OPENSET_LABEL))
            except LabelListError as exc:
                raise FeatstoreError(f"dataset {name}: {path} line {line} (sample {sid}): malformed label list: "
                                     f"{exc}") from None
    if absent:
        log.warning("dataset %s: %d name(s) of %s are not Train&Val or clip samples (first: %s)", name, len(absent),
                    path.name, ", ".join(absent[:3]))
    return got, lists


def _first(root: Path, names: tuple[str, ...], is_dir: bool) -> Path | None:
    return next((root / n for n in names if ((root / n).is_dir() if is_dir else (root / n).is_file())), None)


def load_release(root: Path, spec, layout: Layout) -> DatasetIndex:  # noqa: ANN001 - spec is a DatasetSpec
    """Read a MER release at `root` laid out as `layout` into a DatasetIndex."""
    root = Path(root)
    name = getattr(spec, "name", "mer")
    classes = list(getattr(spec, "emotions", ()) or ())
    code = {c.lower(): i for i, c in enumerate(classes)}
    label_file = _first(root, layout.labels, is_dir=False)
    if label_file is None:
        raise FeatstoreError(f"dataset {name}: none of {', '.join(layout.labels)} under {root} (is this the "
                             f"{name} release folder?)")
    train, header = read_rows(label_file, name, ("name", "discrete"))
    ids = [r["name"].strip() for r in train]
    folder_of = {i: _first(root, layout.train_dirs, is_dir=True) for i in range(len(ids))}
    members: dict[str, list[int]] = {"train": list(range(len(ids)))}
    for subset, dirs in layout.clip_dirs.items():
        d = _first(root, dirs, is_dir=True)
        if d is None:
            log.warning("dataset %s: no %s folder; subset %s is empty", name, " or ".join(dirs), subset)
            members[subset] = []
            continue
        start = len(ids)
        ids += sorted(p.stem for p in d.glob("*.mp4"))
        members[subset] = list(range(start, len(ids)))
        folder_of.update({i: d for i in members[subset]})
    dups = [s for s, c in Counter(ids).items() if c > 1]
    if dups:
        raise FeatstoreError(f"dataset {name}: {len(dups)} name(s) appear twice (in the labels and a clip folder, "
                             f"or twice in {label_file.name}), e.g. '{dups[0]}'")
    n = len(ids)
    pos = {s: i for i, s in enumerate(ids)}
    emotion = np.full(n, -1, np.int16)
    valence = np.full(n, np.nan, np.float32)
    unknown: dict[str, int] = {}

    def put(rows: list[dict[str, str]], where: str) -> list[int]:
        got, absent = [], []
        for line, r in enumerate(rows, start=2):
            sid = r["name"].strip()
            if sid not in pos:
                absent.append(sid)
                continue
            i = pos[sid]
            got.append(i)
            e = (r.get("discrete") or "").strip().lower()
            if e and e not in code:
                unknown[e] = unknown.get(e, 0) + 1
            elif e:
                emotion[i] = code[e]
            v = (r.get("valence") or "").strip()
            if v:
                valence[i] = parse_number(v, "valence", name, Path(where), line)
        if absent:
            log.warning("dataset %s: %d name(s) of %s have no clip (first: %s)", name, len(absent), where,
                        ", ".join(absent[:3]))
        return got

    put(train, label_file.name)
    train_dir = folder_of.get(0)
    report_unlabelled_clips(name, str(train_dir), clips_not_named(train_dir, set(ids[:len(train)])))
    for subset, fname in layout.test_labels.items():
        if (root / fname).is_file():
            rows = put(read_rows(root / fname, name, ("name", "discrete"))[0], fname)
            if subset not in layout.clip_dirs:            # a labelled subset hidden inside a clip folder
                members[subset] = rows
    if unknown:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in sorted(unknown.items()))
        raise FeatstoreError(f"dataset {name}: emotions not in the catalog's label space: {listed} "
                             f"(known: {', '.join(classes)})")
    openset: dict[int, list[str]] | None = None
    if layout.openset and (root / layout.openset).is_file():
        members["test_ov"], openset = _read_openset(root / layout.openset, name, pos)
    subsets = {}
    for s, rows_ in members.items():
        m = np.zeros(n, bool)
        m[rows_] = True
        subsets[s] = m

    media: list[str | None] = []
    for i, sid in enumerate(ids):
        d = folder_of.get(i)
        clip = d / f"{sid}.mp4" if d is not None else None
        media.append(str(clip.resolve()) if clip is not None and clip.is_file() else None)
    no_clip = [sid for sid, m in zip(ids, media) if m is None]
    if no_clip:
        log.warning("dataset %s: %d labelled name(s) have no clip (first: %s)", name, len(no_clip),
                    ", ".join(no_clip[:3]))
    text: list[str | None] = [None] * n
    english: list[str | None] = [None] * n
    text_errors: dict[int, str] = {}
    subs = _first(root, layout.transcripts, is_dir=False) if layout.transcripts else None
    if subs is not None:
        rows, header_t = read_rows(subs, name, ("name",))
        col = next((c for c in ("chinese", "sentence", "english") if c in header_t), None)
        if col is None:
            raise FeatstoreError(f"dataset {name}: {subs} has no chinese, sentence or english column")
        for r in rows:
            i = pos.get(r["name"].strip())
            if i is not None and col != "english" and (r.get("english") or "").strip() \
                    and not has_bad_bytes(r["english"]):
                english[i] = r["english"].strip()
            t = r[col]
            if i is None or not t:
                continue
            if has_bad_bytes(t):
                text_errors[i] = "subtitle is not valid UTF-8"
            elif t.strip():
                text[i] = t.strip()
    labels = {"emotion": emotion}
    label_classes = {"emotion": classes}
    if np.isfinite(valence).any():
        labels["valence"] = valence
    if openset is not None:
        labels[OPENSET_LABEL], label_classes[OPENSET_LABEL] = encode_label_lists([openset.get(i) for i in range(n)])
    return DatasetIndex(name=name, root=str(root.resolve()), ids=ids, media=media, text=text, labels=labels,
                        label_classes=label_classes, subsets=subsets, text_errors=text_errors,
                        variants={"lang-eng": {"text": english}} if any(english) else {})
