"""Adapter for MELD (Poria et al., ACL 2019) as released in MELD.Raw.tar.gz.

Reads, under the release root (MELD.Raw/ with its three split archives extracted):
  train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv
      columns used: Utterance, Emotion, Sentiment, Dialogue_ID, Utterance_ID (others -- Sr No., Speaker,
      Season, Episode, StartTime, EndTime -- are ignored). The files are UTF-8 with a few utterances whose
      bytes are not (they become per-sample text errors, never a failed dataset).
  clips: dia<Dialogue_ID>_utt<Utterance_ID>.mp4 in train_splits/ (train), dev_splits_complete/ (dev) and
      output_repeated_splits_test/ (test); each may also sit one level down (e.g. train/train_splits/).

Gives: ids `<split>_dia<D>_utt<U>` (dialogue numbers restart in every split), subsets train / val / test,
emotion codes into the catalog's classes, the three-way sentiment as a categorical label `sentiment3`, the
utterance as text. Expected counts (MELD paper, MERBench Table 4): 9,989 / 1,109 / 2,610 = 13,708.
Unknown emotions are listed (never dropped); labelled utterances without a clip are counted and named.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex, clips_not_named, report_unlabelled_clips
from featstore.datasets.csv import has_bad_bytes, read_rows
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

SPLITS = {  # subset -> (label file, clip folders tried in order)
    "train": ("train_sent_emo.csv", ("train_splits", "train/train_splits")),
    "val": ("dev_sent_emo.csv", ("dev_splits_complete", "dev/dev_splits_complete", "dev_splits")),
    "test": ("test_sent_emo.csv", ("output_repeated_splits_test", "test/output_repeated_splits_test", "test_splits")),
}
COLUMNS = ("Utterance", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
SENTIMENTS = ["negative", "neutral", "positive"]


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a MELD.Raw release at `root` into a DatasetIndex (see the module docstring)."""
    root = Path(root)
    name = getattr(spec, "name", "meld")
    classes = list(getattr(spec, "emotions", ()) or ())
    code = {c: i for i, c in enumerate(classes)}
    ids: list[str] = []
    media: list[str | None] = []
    text: list[str | None] = []
    text_errors: dict[int, str] = {}
    emo: list[int] = []
    senti: list[int] = []
    split_of: list[str] = []
    unknown: dict[str, int] = {}
    no_clip: list[str] = []
    for subset, (fname, folders) in SPLITS.items():
        path = root / fname
        if not path.is_file():
            raise FeatstoreError(f"dataset {name}: no {fname} under {root} (is this the extracted MELD.Raw folder?)")
        clip_dir = next((root / f for f in folders if (root / f).is_dir()), None)
        rows, _ = read_rows(path, name, COLUMNS)
        named = {f"dia{(r['Dialogue_ID'] or '').strip()}_utt{(r['Utterance_ID'] or '').strip()}" for r in rows}
        report_unlabelled_clips(name, str(clip_dir), clips_not_named(clip_dir, named))
        for line, r in enumerate(rows, start=2):
            d, u = (r["Dialogue_ID"] or "").strip(), (r["Utterance_ID"] or "").strip()
            if not (d.isdigit() and u.isdigit()):
                raise FeatstoreError(f"dataset {name}: {path} line {line}: Dialogue_ID/Utterance_ID "
                                     f"'{d}'/'{u}' are not numbers")
            sid = f"{subset}_dia{d}_utt{u}"
            ids.append(sid)
            clip = clip_dir / f"dia{d}_utt{u}.mp4" if clip_dir is not None else None
            media.append(str(clip.resolve()) if clip is not None and clip.is_file() else None)
            if media[-1] is None:
                no_clip.append(sid)
            utt = r["Utterance"]
            if utt is not None and has_bad_bytes(utt):
                text_errors[len(ids) - 1] = "utterance is not valid UTF-8 in the label file"
                utt = None
            text.append(utt)
            e = (r["Emotion"] or "").strip().lower()
            if e not in code:
                unknown[e] = unknown.get(e, 0) + 1
            emo.append(code.get(e, -1))
            s = (r["Sentiment"] or "").strip().lower()
            senti.append(SENTIMENTS.index(s) if s in SENTIMENTS else -1)
            split_of.append(subset)
    if unknown:
        listed = ", ".join(f"'{k}' ({v}x)" for k, v in sorted(unknown.items()))
        raise FeatstoreError(f"dataset {name}: emotions not in the catalog's label space: {listed} "
                             f"(known: {', '.join(classes)})")
    if no_clip:
        log.warning("dataset %s: %d of %d utterances have no clip (first: %s)", name, len(no_clip), len(ids),
                    ", ".join(no_clip[:3]))
    split_arr = np.array(split_of)
    return DatasetIndex(name=name, root=str(root.resolve()), ids=ids, media=media, text=text,
                        labels={"emotion": np.array(emo, np.int16), "sentiment3": np.array(senti, np.int16)},
                        label_classes={"emotion": classes, "sentiment3": SENTIMENTS},
                        subsets={s: split_arr == s for s in SPLITS}, text_errors=text_errors)
