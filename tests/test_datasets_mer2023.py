"""The MER2023 adapter on a tiny fabricated release (train, three test folders, test label files, valence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.datasets import load_index


def test_train_tests_semi_pool_and_valence(tmp_path: Path) -> None:
    root = tmp_path / "mer2023"
    clips = {"train": ["sample_1", "sample_2"], "test1": ["t1_a"], "test2": ["t2_a"], "test3": ["t3_a", "t3_b", "t3_c"]}
    for folder, names in clips.items():
        (root / folder).mkdir(parents=True)
        for n in names:
            (root / folder / f"{n}.mp4").write_bytes(b"\0")
    (root / "train-label.csv").write_text("name,discrete,valence\nsample_1,happy,2.5\nsample_2,Sad,-1.0\n",
                                          encoding="utf-8")
    (root / "test_labels").mkdir()
    (root / "test_labels" / "test1-label.csv").write_text("name,discrete,valence\nt1_a,angry,-2\n", encoding="utf-8")
    (root / "test_labels" / "test3-label.csv").write_text("name,discrete\nt3_b,worried\n", encoding="utf-8")
    (root / "transcription.csv").write_text("name,sentence,english\nsample_1,我很开心,I am happy\n", encoding="utf-8")
    idx = load_index("mer2023", root)
    assert idx.ids == ["sample_1", "sample_2", "t1_a", "t2_a", "t3_a", "t3_b", "t3_c"]
    m = {k: [idx.ids[i] for i, v in enumerate(a) if v] for k, a in idx.subsets.items()}
    assert m == {"train": ["sample_1", "sample_2"], "test1": ["t1_a"], "test2": ["t2_a"],
                 "semi_pool": ["t3_a", "t3_b", "t3_c"], "test3": ["t3_b"]}
    cls = idx.label_classes["emotion"]
    assert [cls[c] if c >= 0 else None for c in idx.labels["emotion"]] == \
        ["happy", "sad", "angry", None, None, "worried", None]
    v = idx.labels["valence"]
    assert v[0] == 2.5 and v[2] == -2 and np.isnan(v[3]) and idx.text[0] == "我很开心"
    assert all(p is not None for p in idx.media)
    assert idx.variants["lang-eng"]["text"][0] == "I am happy" and idx.with_variant("lang-eng").text[0] == "I am happy"
