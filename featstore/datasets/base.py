"""The adapter contract: a dataset release folder in, a DatasetIndex (ids, media, text, labels, subsets) out."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError

log = logging.getLogger(__name__)


class DatasetError(FeatstoreError, ValueError):
    """A release that does not make a consistent index (duplicate ids, misaligned columns)."""


@dataclass
class DatasetIndex:
    """What an adapter reads from a release: canonical sample order plus everything the store keeps.

    labels: name -> array [N]; categorical labels are int16 codes (-1 = unlabelled) whose class names
    are in label_classes[name]; continuous labels (valence, sentiment) are float32 with NaN = unlabelled.
    subsets: name -> bool [N] membership (subsets may overlap).
    """

    name: str
    root: str
    ids: list[str]
    media: list[str | None]                     # path of each sample's clip (video or audio), None if absent
    text: list[str | None]                      # subtitle / transcript, None if absent
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_classes: dict[str, list[str]] = field(default_factory=dict)
    subsets: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None            # e.g. IEMOCAP session per sample, for leave-one-group-out
    text_errors: dict[int, str] = field(default_factory=dict)  # row -> why its subtitle is unusable (e.g. not UTF-8)
    variants: dict[str, dict[str, list[str | None]]] = field(default_factory=dict)
    # input variants the release provides: {catalog variant name: {"text": [...]} or {"media": [...]}}, e.g.
    # lang-eng -> the English subtitles, tts -> paths of re-synthesised speech

    def with_variant(self, name: str) -> "DatasetIndex":
        """The index whose text or media are the variant `name`'s (for building its key)."""
        if name not in self.variants:
            raise DatasetError(f"dataset {self.name}: the release provides no '{name}' input variant (variants: "
                               f"{', '.join(self.variants) or 'none'})")
        v = self.variants[name]
        return dataclasses.replace(self, text=v.get("text", self.text), media=v.get("media", self.media),
                                   text_errors={} if "text" in v else self.text_errors, variants={})

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DatasetError(f"dataset {self.name}: duplicate sample id '{dup}' ({n - len(set(self.ids))} "
                               f"duplicate(s) in all)")
        for what, arrs in (("label", self.labels), ("subset", self.subsets)):
            for k, a in arrs.items():
                if len(a) != n:
                    raise DatasetError(f"dataset {self.name}: {what} '{k}' has {len(a)} rows for {n} ids")
        if len(self.media) != n or len(self.text) != n:
            raise DatasetError(f"dataset {self.name}: media/text lists must have {n} entries")

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        """{'all': samples, subset: members, ...}: what a user checks against the paper's table."""
        return {"all": len(self.ids), **{k: int(np.asarray(v).sum()) for k, v in self.subsets.items()}}


def report_unlabelled_clips(dataset: str, where: str, clips: list[str]) -> int:
    """Log (and count) clips that no label row names (the reverse of a label without a clip)."""
    if clips:
        log.warning("dataset %s: %d clip(s) in %s have no label row (first: %s); they are left out", dataset,
                    len(clips), where, ", ".join(sorted(clips)[:3]))
    return len(clips)


def clips_not_named(folder: Path | None, named: set[str], pattern: str = "*.mp4") -> list[str]:
    """Stems of the clips in `folder` that are not in `named`."""
    if folder is None or not folder.is_dir():
        return []
    return [p.stem for p in folder.glob(pattern) if p.stem not in named]


def counts_line(index: DatasetIndex, spec: Any) -> tuple[str, bool]:
    """('dataset D: all N, train n (expected m), ...', whether any count differs from the catalog's expected)."""
    got = index.counts()
    expected = dict(getattr(spec, "expected_counts", {}) or {})
    parts = [f"{k} {v:,}" + (f" (expected {expected[k]:,})" if k in expected and expected[k] != v else "")
             for k, v in got.items()]
    return f"dataset {index.name}: " + ", ".join(parts), any(k in expected and expected[k] != v for k, v in got.items())


def report_counts(index: DatasetIndex, spec: Any) -> str:
    """Log (and return) the index's counts next to the catalog's expected counts of the real release."""
    line, differs = counts_line(index, spec)
    log.log(logging.WARNING if differs else logging.INFO, "%s", line)
    return line
