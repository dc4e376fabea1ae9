"""Adapter for the sentiment corpora in the MMSA / MMSA-FET release layout: CMU-MOSI, CMU-MOSEI, CH-SIMS, CH-SIMS v2.

Reads, under the release root:
  label.csv   columns video_id, clip_id, text, label, mode (train | valid | test); the optional label_T,
              label_A, label_V (CH-SIMS unimodal labels) and annotation (Negative | Neutral | Positive) are
              kept too. UTF-8 (the Chinese subtitles of SIMS included); a text that is not valid UTF-8 is a
              per-sample text error.
  Raw/<video_id>/<clip_id>.mp4   the clips.

Gives: ids `<video_id>$_$<clip_id>` (MMSA's own id form), subsets train / val / test (mode 'valid' -> val),
`sentiment` (float: [-3, 3] for MOSI/MOSEI, [-1, 1] for SIMS), `sentiment_T/_A/_V` when present, the text.
Expected counts (MERBench Table 4): MOSI 2,199, MOSEI 22,856, SIMS 2,281, SIMS v2 4,403 (supervised part).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex, clips_not_named, report_unlabelled_clips
from featstore.datasets.csv import has_bad_bytes, parse_number, read_rows
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

REQUIRED = ("video_id", "clip_id", "text", "label", "mode")
MODES = {"train": "train", "valid": "val", "val": "val", "dev": "val", "test": "test"}
EXTRA = {"label_T": "sentiment_T", "label_A": "sentiment_A", "label_V": "sentiment_V"}


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read an MMSA-layout release at `root` into a DatasetIndex (see the module docstring)."""
    root = Path(root)
    name = getattr(spec, "name", "mmsa")
    path = root / "label.csv"
    if not path.is_file():
        raise FeatstoreError(f"dataset {name}: no label.csv at {path} (the MMSA layout: label.csv + Raw/)")
    rows, header = read_rows(path, name, REQUIRED)
    n = len(rows)
    ids: list[str] = []
    media: list[str | None] = []
    text: list[str | None] = []
    text_errors: dict[int, str] = {}
    labels = {"sentiment": np.full(n, np.nan, np.float32)}
    labels.update({v: np.full(n, np.nan, np.float32) for k, v in EXTRA.items() if k in header})
    modes: list[str] = []
    unknown_modes: dict[str, int] = {}
    no_clip: list[str] = []
    for j, r in enumerate(rows):
        line = j + 2
        vid, cid = (r["video_id"] or "").strip(), (r["clip_id"] or "").strip()
        if not vid or not cid:
            raise FeatstoreError(f"dataset {name}: {path} line {line}: empty video_id or clip_id")
        sid = f"{vid}$_${cid}"
        ids.append(sid)
        clip = root / "Raw" / vid / f"{cid}.mp4"
        media.append(str(clip.resolve()) if clip.is_file() else None)
        if media[-1] is None:
            no_clip.append(sid)
        t = r["text"]
        if t is not None and has_bad_bytes(t):
            text_errors[j] = "text is not valid UTF-8"
            t = None
        text.append(t.strip() if t else None)
        for col, key in (("label", "sentiment"), *EXTRA.items()):
            if key in labels and (r.get(col) or "").strip():
                labels[key][j] = parse_number(r[col].strip(), col, name, path, line)
        mode = (r["mode"] or "").strip().lower()
        if mode not in MODES:
            unknown_modes[mode] = unknown_modes.get(mode, 0) + 1
        modes.append(MODES.get(mode, ""))
    if unknown_modes:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in sorted(unknown_modes.items()))
        raise FeatstoreError(f"dataset {name}: {path}: unknown mode value(s) {listed}; expected train, valid or test")
    if no_clip:
        log.warning("dataset %s: %d of %d clips missing under %s (first: %s)", name, len(no_clip), n, root / "Raw",
                    ", ".join(no_clip[:3]))
    by_video: dict[str, set[str]] = {}
    for sid in ids:
        vid, _, cid = sid.partition("$_$")
        by_video.setdefault(vid, set()).add(cid)
    extra = [f"{vdir.name}/{c}" for vdir in ((root / "Raw").glob("*") if (root / "Raw").is_dir() else [])
             for c in clips_not_named(vdir, by_video.get(vdir.name, set()))]
    report_unlabelled_clips(name, str(root / "Raw"), extra)
    m = np.array(modes)
    return DatasetIndex(name=name, root=str(root.resolve()), ids=ids, media=media, text=text, labels=labels,
                        subsets={s: m == s for s in ("train", "val", "test")}, text_errors=text_errors)
