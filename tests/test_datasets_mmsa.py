"""The MMSA-layout adapter (CMU-MOSI/MOSEI, CH-SIMS, CH-SIMS v2) on tiny fabricated releases."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from featstore.datasets import load_index
from featstore.errors import FeatstoreError

SIMS = ("video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"
        "video_0001,0001,我不想去了。,-0.8,-1.0,-0.6,-0.8,Negative,train\n"
        "video_0001,0002,好吧,0.0,0.0,0.2,0.0,Neutral,valid\n"
        "video_0002,0001,太棒了！,1.0,1.0,0.8,1.0,Positive,test\n")
MOSI = ("video_id,clip_id,text,label,annotation,mode\n"
        "03bSnISJMiM,1,anyhow it was really good,2.4,Positive,train\n"
        "03bSnISJMiM,2,i mean it was ok,0.0,Neutral,test\n")


def _release(root: Path, label_csv: str | bytes, clips: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True)
    (root / "label.csv").write_bytes(label_csv.encode() if isinstance(label_csv, str) else label_csv)
    for vid, cid in clips:
        (root / "Raw" / vid).mkdir(parents=True, exist_ok=True)
        (root / "Raw" / vid / f"{cid}.mp4").write_bytes(b"\0")
    return root


def test_sims_with_unimodal_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _release(tmp_path / "SIMS", SIMS, [("video_0001", "0001"), ("video_0002", "0001"), ("video_0003", "0007")])
    with caplog.at_level(logging.WARNING):
        idx = load_index("ch-sims", root)
    assert idx.ids == ["video_0001$_$0001", "video_0001$_$0002", "video_0002$_$0001"]
    assert idx.labels["sentiment"].tolist() == pytest.approx([-0.8, 0.0, 1.0])
    assert idx.labels["sentiment_A"].tolist() == pytest.approx([-0.6, 0.2, 0.8])
    assert {k: v.tolist() for k, v in idx.subsets.items()} == {"train": [True, False, False], "val": [False, True, False],
                                                              "test": [False, False, True]}
    assert idx.text[2] == "太棒了！" and idx.media[1] is None and "1 of 3 clips missing" in caplog.text
    assert "1 clip(s) in" in caplog.text and "no label row (first: video_0003/0007)" in caplog.text


def test_mosi_without_unimodal_labels_feeds_the_sentiment_protocol(tmp_path: Path) -> None:
    idx = load_index("cmu-mosi", _release(tmp_path / "MOSI", MOSI, [("03bSnISJMiM", "1")]))
    assert set(idx.labels) == {"sentiment"} and idx.counts() == {"all": 2, "train": 1, "val": 0, "test": 1}


def test_bad_modes_values_and_bytes(tmp_path: Path) -> None:
    with pytest.raises(FeatstoreError, match=r"unknown mode value\(s\) 'training' \(1x\)"):
        load_index("cmu-mosi", _release(tmp_path / "a", MOSI.replace(",train\n", ",training\n"), []))
    with pytest.raises(FeatstoreError, match=r"line 2: label 'pos' is not a number"):
        load_index("cmu-mosi", _release(tmp_path / "b", MOSI.replace("2.4", "pos"), []))
    with pytest.raises(FeatstoreError, match=r"lacks column 'mode'"):
        load_index("cmu-mosi", _release(tmp_path / "c", "video_id,clip_id,text,label\n", []))
    raw = MOSI.encode().replace(b"i mean it was ok", b"caf\xe9")
    idx = load_index("cmu-mosi", _release(tmp_path / "d", raw, []))
    assert idx.text[1] is None and idx.text_errors == {1: "text is not valid UTF-8"}
    assert np.isfinite(idx.labels["sentiment"]).all()
