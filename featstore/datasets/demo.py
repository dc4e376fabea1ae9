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

from pathlib import Path

import numpy as np

from featstore.datasets.base import DatasetIndex
from featstore.datasets.csv import read_table
from featstore.errors import FeatstoreError

COLUMNS = {"id": "name", "path": "path", "subtitle": "subtitle", "emotion": "emotion", "valence": "valence",
           "sentiment": "sentiment", "split": "split", "group": "group"}
REQUIRED = ("id", "emotion", "valence", "subtitle", "split")
DEFAULT_EMOTIONS = ("neutral", "angry", "happy", "sad", "worried", "surprise")


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a demo corpus at `root` into a DatasetIndex (see the module docstring for files and columns)."""
    root = Path(root)
    path = root / "labels.csv"
    if not path.is_file():
        hint = " (make one with `featstore demo-data DIR`)" if not root.is_dir() or not any(root.iterdir()) else ""
        raise FeatstoreError(f"dataset {getattr(spec, 'name', 'demo')}: no labels.csv at {path}{hint}")
    index = read_table(path, spec, COLUMNS, media="clips/{id}.mp4", required=REQUIRED,
                       default_classes=DEFAULT_EMOTIONS)
    for s in getattr(spec, "splits", ()) or ("train", "test1"):   # the catalog's splits exist, even if empty
        index.subsets.setdefault(s, np.zeros(len(index), bool))
    return index
