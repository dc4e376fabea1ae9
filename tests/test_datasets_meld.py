"""The MELD adapter on a tiny fabricated MELD.Raw folder in the release's exact format."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from featstore.datasets import load_index
from featstore.datasets.base import DatasetError, DatasetIndex
from featstore.errors import FeatstoreError

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def _release(root: Path, train_extra: bytes = b"", emotion: str = "surprise") -> Path:
    rows = {
        "train_sent_emo.csv": (f'1,"Oh my God, you\'re back!",Monica,{emotion},positive,0,0,8,21,"00:16:16,059","00:16:21,731"\n'
                               '2,You had no idea.,Joey,neutral,neutral,0,1,8,21,"00:16:21,940","00:16:23,442"\n'
                               '3,I hate this.,Ross,anger,negative,1,0,8,21,"00:16:24,000","00:16:25,000"\n').encode()
                              + train_extra,
        "dev_sent_emo.csv": b'1,What?,Rachel,surprise,negative,0,0,3,1,"00:00:01,000","00:00:02,000"\n',
        "test_sent_emo.csv": b'1,"Okay, sure.",Chandler,joy,positive,0,0,5,2,"00:01:01,000","00:01:02,000"\n',
    }
    root.mkdir(parents=True)
    for name, body in rows.items():
        (root / name).write_bytes(HEADER.encode() + body)
    for folder, clips in (("train/train_splits", ["dia0_utt0", "dia0_utt1", "dia9_utt9"]),  # dia1_utt0 missing,
                          # dia9_utt9 has no label row
                          ("dev_splits_complete", ["dia0_utt0"]), ("output_repeated_splits_test", ["dia0_utt0"])):
        (root / folder).mkdir(parents=True)
        for c in clips:
            (root / folder / f"{c}.mp4").write_bytes(b"\0")
    return root


def test_reads_the_three_splits_with_labels_text_and_clips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        idx = load_index("meld", _release(tmp_path / "MELD.Raw"))
    assert idx.ids == ["train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0", "val_dia0_utt0", "test_dia0_utt0"]
    assert idx.counts() == {"all": 5, "train": 3, "val": 1, "test": 1}
    assert "dataset meld: all 5 (expected 13,708), train 3 (expected 9,989)" in caplog.text   # counts are printed
    classes = idx.label_classes["emotion"]
    assert [classes[c] for c in idx.labels["emotion"]] == ["surprise", "neutral", "anger", "surprise", "joy"]
    assert [idx.label_classes["sentiment3"][c] for c in idx.labels["sentiment3"]] == \
        ["positive", "neutral", "negative", "negative", "positive"]
    assert idx.text[0] == "Oh my God, you're back!" and idx.text[4] == "Okay, sure."
    assert idx.media[1].endswith("train/train_splits/dia0_utt1.mp4") and idx.media[2] is None
    assert idx.media[3].endswith("dev_splits_complete/dia0_utt0.mp4")
    assert "1 of 5 utterances have no clip (first: train_dia1_utt0)" in caplog.text
    assert "1 clip(s) in" in caplog.text and "have no label row (first: dia9_utt9)" in caplog.text


def test_bad_bytes_unknown_emotions_and_duplicates(tmp_path: Path) -> None:
    idx = load_index("meld", _release(tmp_path / "a", train_extra=b'4,I\x92m fine,Joey,neutral,neutral,2,0,1,1,"a","b"\n'))
    assert idx.text[3] is None and idx.text_errors == {3: "utterance is not valid UTF-8 in the label file"}
    with pytest.raises(FeatstoreError, match=r"emotions not in the catalog's label space: 'surprised' \(1x\)"):
        load_index("meld", _release(tmp_path / "b", emotion="surprised"))
    with pytest.raises(DatasetError, match=r"duplicate sample id 'train_dia0_utt0'"):
        load_index("meld", _release(tmp_path / "c", train_extra=b'4,Again,Joey,neutral,neutral,0,0,1,1,"a","b"\n'))
    with pytest.raises(FeatstoreError, match=r"no train_sent_emo.csv"):
        load_index("meld", tmp_path / "empty")


def test_counts_of_an_index() -> None:
    import numpy as np

    idx = DatasetIndex("x", "/", ["a", "b"], [None, None], [None, None], subsets={"s": np.array([True, False])})
    assert idx.counts() == {"all": 2, "s": 1}
