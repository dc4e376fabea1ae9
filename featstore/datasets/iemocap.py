"""Adapter for IEMOCAP (Busso et al., 2008) as released (IEMOCAP_full_release/), four- or six-class.

Reads, under the release root, for Session1..Session5:
  SessionN/dialog/EmoEvaluation/<dialog>.txt   the consensus lines `[start - end]<TAB>utterance<TAB>code<TAB>[V, A, D]`
                                               (only lines starting with '['; the evaluators' lines are ignored)
  SessionN/dialog/transcriptions/<dialog>.txt  lines `utterance [start-end]: text`
  SessionN/sentences/wav/<dialog>/<utterance>.wav   the utterance audio (the media of every sample)

Label mapping by the catalog entry's classes: four-class (`iemocap-4`: happy, sad, neutral, angry) merges
excited into happy as MERBench does (5,531 utterances); six-class (`iemocap-6`: + excited, frustrated; 7,433).
Utterances whose consensus code is a known IEMOCAP code outside the task (xxx, oth, fea, sur, dis, and fru/exc
for four classes) are left out and counted in a log line; a code IEMOCAP does not define is an error listing it.
Groups are the sessions (Ses01..Ses05) for leave-one-session-out; subsets session1..session5 hold them too.
Video: IEMOCAP ships whole-dialogue AVI files, not utterance clips; visual encoders need clips cut first
(media here is the utterance's wav).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex
from featstore.datasets.csv import has_bad_bytes
from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)

CODES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry", "fru": "frustrated",
         "fea": "fear", "sur": "surprise", "dis": "disgust", "oth": "other", "xxx": "no agreement"}
LINE = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\s+(\S+)\s+(\S+)")
TRANSCRIPT = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read IEMOCAP_full_release at `root` into a DatasetIndex (see the module docstring)."""
    root = Path(root)
    name = getattr(spec, "name", "iemocap")
    classes = list(getattr(spec, "emotions", ()) or ())
    merge_excited = "excited" not in classes
    sessions = [root / f"Session{i}" for i in range(1, 6)]
    if not any(s.is_dir() for s in sessions):
        raise FeatstoreError(f"dataset {name}: no Session1..Session5 folders under {root} (is this "
                             f"IEMOCAP_full_release?)")
    ids: list[str] = []
    media: list[str | None] = []
    text: list[str | None] = []
    text_errors: dict[int, str] = {}
    emo: list[int] = []
    groups: list[str] = []
    left_out: dict[str, int] = {}
    undefined: dict[str, list[str]] = {}
    no_wav: list[str] = []
    for si, session in enumerate(sessions, start=1):
        evals = sorted((session / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not evals:
            raise FeatstoreError(f"dataset {name}: no {session.name}/dialog/EmoEvaluation/*.txt under {root}")
        for ev in evals:
            transcript = _transcript(session / "dialog" / "transcriptions" / ev.name)
            for raw in ev.read_bytes().decode("utf-8", errors="surrogateescape").splitlines():
                m = LINE.match(raw.strip())
                if not m:
                    continue
                utt, code = m.group(3), m.group(4).lower()
                if code not in CODES:
                    undefined.setdefault(code, []).append(utt)
                    continue
                label = "happy" if (code == "exc" and merge_excited) else CODES[code]
                if label not in classes:
                    left_out[code] = left_out.get(code, 0) + 1
                    continue
                ids.append(utt)
                wav = session / "sentences" / "wav" / ev.stem / f"{utt}.wav"
                media.append(str(wav.resolve()) if wav.is_file() else None)
                if media[-1] is None:
                    no_wav.append(utt)
                t = transcript.get(utt)
                if t is not None and has_bad_bytes(t):
                    text_errors[len(ids) - 1] = "transcript is not valid UTF-8"
                    t = None
                text.append(t)
                emo.append(classes.index(label))
                groups.append(f"Ses{si:02d}")
    if undefined:
        first = ", ".join(f"'{c}' ({len(u)}x, e.g. {u[0]})" for c, u in sorted(undefined.items()))
        raise FeatstoreError(f"dataset {name}: emotion codes IEMOCAP does not define: {first}")
    if left_out:
        log.info("dataset %s: left out utterances outside the %d classes: %s", name, len(classes),
                 ", ".join(f"{c} {n}" for c, n in sorted(left_out.items())))
    if no_wav:
        log.warning("dataset %s: %d of %d utterances have no wav (first: %s)", name, len(no_wav), len(ids),
                    ", ".join(no_wav[:3]))
    g = np.array(groups)
    return DatasetIndex(name=name, root=str(root.resolve()), ids=ids, media=media, text=text,
                        labels={"emotion": np.array(emo, np.int16)}, label_classes={"emotion": classes},
                        subsets={f"session{i}": g == f"Ses{i:02d}" for i in range(1, 6)}, groups=g,
                        text_errors=text_errors)


def _transcript(path: Path) -> dict[str, str]:
    """utterance id -> text of one dialogue's transcription file (absent file: no text)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_bytes().decode("utf-8", errors="surrogateescape").splitlines():
        m = TRANSCRIPT.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out
