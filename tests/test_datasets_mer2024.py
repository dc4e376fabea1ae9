"""The MER2024 adapter on a tiny fabricated mer2024-dataset folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.datasets import load_index
from featstore.errors import FeatstoreError


def _release(root: Path, labels: str = "name,discrete\nsample_1,Happy\nsample_2,sad\nsample_3,worried\n") -> Path:
    (root / "video-labeled").mkdir(parents=True)
    (root / "video-unlabeled-with-test2noise").mkdir()
    (root / "label-disdim.csv").write_text(labels, encoding="utf-8")
    for s in ("sample_1", "sample_2"):                                   # sample_3's clip is missing
        (root / "video-labeled" / f"{s}.mp4").write_bytes(b"\0")
    for s in ("sample_7", "sample_8", "sample_9"):
        (root / "video-unlabeled-with-test2noise" / f"{s}.mp4").write_bytes(b"\0")
    (root / "label-transcription.csv").write_text("name,chinese,english\nsample_1,我很高兴,I am happy\n"
                                                  "sample_8,好的,OK\n", encoding="utf-8")
    (root / "test-semi.csv").write_text("name,discrete\nsample_7,angry\n", encoding="utf-8")
    (root / "check-openset.csv").write_text("name,openset\nsample_2,\"['sad', 'tired']\"\n", encoding="utf-8")
    return root


def test_train_pool_tests_and_open_vocabulary_memberships(tmp_path: Path) -> None:
    idx = load_index("mer2024", _release(tmp_path / "mer2024-dataset"))
    assert idx.ids == ["sample_1", "sample_2", "sample_3", "sample_7", "sample_8", "sample_9"]
    m = {k: [idx.ids[i] for i, v in enumerate(a) if v] for k, a in idx.subsets.items()}
    assert m == {"train": ["sample_1", "sample_2", "sample_3"], "semi_pool": ["sample_7", "sample_8", "sample_9"],
                 "test_semi": ["sample_7"], "test_ov": ["sample_2"]}
    cls = idx.label_classes["emotion"]
    assert [cls[c] if c >= 0 else None for c in idx.labels["emotion"]] == ["happy", "sad", "worried", "angry", None, None]
    assert idx.text[0] == "我很高兴" and idx.text[4] == "好的" and idx.text[1] is None
    assert idx.media[2] is None and idx.media[5].endswith("video-unlabeled-with-test2noise/sample_9.mp4")


def test_unknown_emotions_and_missing_labels_are_named(tmp_path: Path) -> None:
    with pytest.raises(FeatstoreError, match=r"emotions not in the catalog's label space: 'bored' \(1x\)"):
        load_index("mer2024", _release(tmp_path / "a", "name,discrete\nsample_1,bored\n"))
    with pytest.raises(FeatstoreError, match="none of label-disdim.csv"):
        load_index("mer2024", tmp_path / "none")
    with pytest.raises(FeatstoreError, match="appear twice.*sample_1"):
        load_index("mer2024", _release(tmp_path / "b", "name,discrete\nsample_1,happy\nsample_1,sad\n"))


def test_open_vocabulary_label_lists_are_stored_and_read_back(tmp_path: Path) -> None:
    from featstore.build import index_to_store
    from featstore.store import FeatureStore
    from trainer.ov import store_label_lists

    root = _release(tmp_path / "mer2024-dataset")
    (root / "check-openset.csv").write_text(
        "name,openset\n"
        "sample_1,\"[\"\"don't believe\"\", 'doubt']\"\n"       # MERTools' spelling: quotes inside a label
        "sample_2,\"['sad', 'tired']\"\n"
        "sample_3,开心，愉快\n"                                  # Chinese labels, full-width comma
        "sample_404,['happy']\n", encoding="utf-8")            # no such sample: left out
    idx = load_index("mer2024", root)
    assert [idx.ids[i] for i, v in enumerate(idx.subsets["test_ov"]) if v] == ["sample_1", "sample_2", "sample_3"]
    fs = FeatureStore(tmp_path / "s.zarr", create=True)
    index_to_store(fs, idx, "mer2024")
    assert store_label_lists(fs, "mer2024") == {"sample_1": ["don't believe", "doubt"], "sample_2": ["sad", "tired"],
                                                "sample_3": ["开心", "愉快"]}
    codes, classes = fs.labels("mer2024")["openset"]
    assert list(codes[3:]) == [-1, -1, -1] and len(classes) == 3          # the pool has no lists

    (root / "check-openset.csv").write_text("name,openset\nsample_1,\"['sad', 'tired'\"\n", encoding="utf-8")
    with pytest.raises(FeatstoreError, match=r"check-openset.csv line 2 \(sample sample_1\): malformed label list"):
        load_index("mer2024", root)
