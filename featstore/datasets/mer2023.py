"""Adapter for the MER2023 release (EULA required), in the layout the public MERTools-era scripts read.

Reads, under the release root (the first of each candidate that exists):
  train-label.csv | label-disdim.csv   name, discrete, valence: Train&Val = subset `train` (3,373)
  train/ | video-labeled/              the Train&Val clips (<name>.mp4)
  test1/, test2/                       MER-MULTI and MER-NOISE clips = subsets `test1`, `test2`
  test3/                               the MER-SEMI folder (its labelled test clips among unlabelled ones) =
                                       subset `semi_pool`
  test_labels/test1-label.csv, test_labels/test2-label.csv   name, discrete, valence (optional)
  test_labels/test3-label.csv          name, discrete: names the `test3` samples inside semi_pool (optional)
  transcription.csv | label-transcription.csv   name, chinese | sentence, english (optional)

Expected counts (MERTools' label-6way.npz): train 3,373, test1 411, test2 412, test3 834. Model selection on
WAF - 0.25 x valence MSE (catalog). MER-NOISE (`test2`) is `precorrupted` in the catalog.
The layout follows the public MERTools code and third-party scripts; it has not been checked against the
release itself (not reachable here) -- `featstore import mertools` reads MERTools' processed folders.
"""

from __future__ import annotations

from pathlib import Path

from featstore.datasets.base import DatasetIndex
from featstore.datasets.mer_release import Layout, load_release

LAYOUT = Layout(labels=("train-label.csv", "label-disdim.csv"), train_dirs=("train", "video-labeled"),
                clip_dirs={"test1": ("test1",), "test2": ("test2",), "semi_pool": ("test3",)},
                test_labels={"test1": "test_labels/test1-label.csv", "test2": "test_labels/test2-label.csv",
                             "test3": "test_labels/test3-label.csv"},
                transcripts=("transcription.csv", "label-transcription.csv"))


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a MER2023 release at `root` into a DatasetIndex (see the module docstring)."""
    return load_release(root, spec, LAYOUT)
