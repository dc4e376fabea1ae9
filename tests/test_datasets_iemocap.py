"""The IEMOCAP adapter on a tiny fabricated IEMOCAP_full_release in the release's exact layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from featstore.datasets import load_index
from featstore.errors import FeatstoreError

CODES = ["neu", "hap", "exc", "fru", "xxx", "sad", "ang"]


def _release(root: Path, odd_code: str | None = None) -> Path:
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        d = root / f"Session{s}" / "dialog"
        (d / "EmoEvaluation").mkdir(parents=True)
        (d / "transcriptions").mkdir(parents=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        tr = []
        codes = CODES if s == 1 else ["neu", "ang"]
        if odd_code and s == 2:
            codes = codes + [odd_code]
        for i, c in enumerate(codes):
            utt = f"{dialog}_F{i:03d}"
            lines += [f"[{i}.0000 - {i}.9000]\t{utt}\t{c}\t[2.5000, 3.0000, 2.0000]",
                      f"C-E1:\tNeutral;\t()", "A-E2:\tval 3; act 2; dom  2;\t()", ""]
            tr.append(f"{utt} [{i:03d}.0000-{i:03d}.9000]: Line number {i}.")
            wav = root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            if not (s == 1 and c == "sad"):            # one wav missing
                wav.write_bytes(b"RIFF")
        (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines), encoding="utf-8")
        (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n", encoding="utf-8")
    return root


def test_four_class_merges_excited_and_leaves_out_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _release(tmp_path / "IEMOCAP_full_release")
    with caplog.at_level(logging.INFO):
        idx = load_index("iemocap-4", root)
    cls = idx.label_classes["emotion"]
    assert cls == ["happy", "sad", "neutral", "angry"]
    s1 = [i for i, g in enumerate(idx.groups) if g == "Ses01"]
    assert [idx.ids[i][-4:] for i in s1] == ["F000", "F001", "F002", "F005", "F006"]
    assert [cls[idx.labels["emotion"][i]] for i in s1] == ["neutral", "happy", "happy", "sad", "angry"]
    assert "left out utterances outside the 4 classes: fru 1, xxx 1" in caplog.text
    assert idx.counts()["all"] == 5 + 4 * 2 and idx.counts()["session3"] == 2
    assert idx.text[0] == "Line number 0." and idx.media[s1[3]] is None and idx.media[0].endswith(".wav")
    assert "1 of 13 utterances have no wav" in caplog.text


def test_six_class_keeps_excited_and_frustrated(tmp_path: Path) -> None:
    idx = load_index("iemocap-6", _release(tmp_path / "r"))
    cls = idx.label_classes["emotion"]
    s1 = [cls[c] for c, g in zip(idx.labels["emotion"], idx.groups) if g == "Ses01"]
    assert s1 == ["neutral", "happy", "excited", "frustrated", "sad", "angry"]


def test_undefined_codes_are_listed_and_sessions_are_required(tmp_path: Path) -> None:
    with pytest.raises(FeatstoreError, match=r"emotion codes IEMOCAP does not define: 'joy' \(1x, e.g. Ses02F_impro01"):
        load_index("iemocap-4", _release(tmp_path / "a", odd_code="joy"))
    with pytest.raises(FeatstoreError, match="no Session1..Session5"):
        load_index("iemocap-4", tmp_path / "nothing")


def test_leave_one_session_out_folds_come_from_the_groups(tmp_path: Path) -> None:
    """The index feeds the trainer's logo protocol: five folds, one per session."""
    import numpy as np

    from featstore.build import index_to_store
    from featstore.store import FeatureStore, KeyName
    from trainer.data import load_features
    from trainer.protocol import Protocol

    idx = load_index("iemocap-4", _release(tmp_path / "r"))
    store = FeatureStore(tmp_path / "s.zarr", create=True)
    index_to_store(store, idx, "iemocap")
    fa = store.create_key(KeyName("iemocap-4", "feat"), layers=1, dim=4, dtype="float32",
                          spec={"modality": "audio"}, spec_hash="x")
    fa.write_rows(0, np.random.default_rng(0).normal(size=(len(idx), 1, 4)).astype(np.float32))
    fs = load_features(store, "iemocap-4", audio=["feat"])
    plan = Protocol().plan(fs, 0)
    assert plan.kind == "logo" and [f.name for f in plan.folds] == ["Ses01", "Ses02", "Ses03", "Ses04", "Ses05"]
