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
                                    and their label lists (store label `openset`, see featstore.label_lists;
                                    trainer.ov.store_label_lists reads them back)

Emotion names are matched case-insensitively to the catalog's six (neutral, angry, happy, sad, worried,
surprise); anything else is an error listing them. Expected counts (MER2024 paper, Table 1): train 5,030,
semi_pool 115,595, test_semi 1,169, test_noise 1,170, test_ov 332.
MER-NOISE clips already carry the challenge's noise: the catalog lists `test_noise` as `precorrupted`, so
`featstore build --corruption snr5-10` (or blur) encodes them as they are.
"""

from __future__ import annotations

from pathlib import Path

from featstore.datasets.base import DatasetIndex
from featstore.datasets.mer_release import Layout, load_release

LAYOUT = Layout(labels=("label-disdim.csv",), train_dirs=("video-labeled",),
                clip_dirs={"semi_pool": ("video-unlabeled-with-test2noise", "video-unlabeled")},
                test_labels={"test_semi": "test-semi.csv", "test_noise": "test-noise.csv"},
                transcripts=("label-transcription.csv",), openset="check-openset.csv")


def load(root: Path, spec) -> DatasetIndex:  # noqa: ANN001 - spec is a catalog DatasetSpec
    """Read a MER2024 release at `root` into a DatasetIndex (see the module docstring)."""
    return load_release(root, spec, LAYOUT)
