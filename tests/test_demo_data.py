"""The offline demo corpus: generation (layout, balance, determinism, decodable clips) and its dataset adapter."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from featstore.catalog import load_catalog
from featstore.datasets import load_index
from featstore.datasets import demo as demo_adapter
from featstore.demo_data import EMOTIONS, generate
from featstore.errors import FeatstoreError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")

N = 12
SIZE, FPS = 96, 8   # small frames keep the test quick; the defaults are 224x224 at 12 fps


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo")
    return {
        "a": generate(base / "a", n=N, seed=0, size=SIZE, fps=FPS),
        "b": generate(base / "b", n=N, seed=0, size=SIZE, fps=FPS, workers=2),  # same seed, other worker count
        "c": generate(base / "c", n=N, seed=1, size=SIZE, fps=FPS),
    }


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _audio(path: Path) -> np.ndarray:
    """Decoded audio as 16 kHz mono float32 (the way the extraction stage reads it)."""
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        parts = [r.to_ndarray().reshape(-1) for f in c.decode(audio=0) for r in resampler.resample(f)]
        parts += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    return np.concatenate(parts)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@needs_espeak
def test_layout_and_labels(corpora: dict[str, Path]) -> None:
    root = corpora["a"]
    assert (root / "README.txt").read_text(encoding="utf-8").startswith("featstore demo corpus")
    with open(root / "labels.csv", encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == ["name", "emotion", "valence", "subtitle", "split"]
    rows = _rows(root)
    assert [r["name"] for r in rows] == [f"demo_{i:05d}" for i in range(N)]
    for r in rows:
        assert (root / "clips" / f"{r['name']}.mp4").is_file()
        assert -5.0 <= float(r["valence"]) <= 5.0
        assert len(r["subtitle"].split()) >= 4 and r["subtitle"].isascii()
    counts = Counter(r["emotion"] for r in rows)
    assert set(counts) == set(EMOTIONS) and max(counts.values()) - min(counts.values()) <= 1
    splits = Counter(r["split"] for r in rows)
    assert set(splits) == {"train", "test1"} and 1 <= splits["test1"] <= N // 3
    # valence follows the emotion on average
    val = {e: np.mean([float(r["valence"]) for r in rows if r["emotion"] == e]) for e in EMOTIONS}
    assert val["happy"] > val["neutral"] > val["angry"] and val["sad"] < 0
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    assert meta["n"] == N and meta["seed"] == 0 and len(meta["clips"]) == N


def test_subtitles_follow_the_emotion_on_a_larger_plan() -> None:
    from featstore.demo_data import _WORDS, _plan

    plan = _plan(600, seed=3)
    assert Counter(s.emotion for s in plan) == Counter({e: 100 for e in EMOTIONS})
    assert sum(s.split == "test1" for s in plan) == 120
    for e in EMOTIONS:  # roughly stratified
        assert 15 <= sum(s.split == "test1" and s.emotion == e for s in plan) <= 25
    cues = {"angry": _WORDS["angry"] + _WORDS["bad"] + ("dare", "sick of", "lying", "ruined"),
            "worried": _WORDS["nervous"] + ("What if", "hope", "afford")}
    for e, words in cues.items():
        hits = [any(w in s.subtitle for w in words) for s in plan if s.emotion == e]
        assert 0.5 < np.mean(hits) < 1.0, e        # mostly worded like the emotion, but not always
    assert len({s.subtitle for s in plan}) > 300   # many distinct sentences


@needs_espeak
def test_same_seed_is_reproducible(corpora: dict[str, Path]) -> None:
    a, b = corpora["a"], corpora["b"]
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert (a / "meta.json").read_bytes() == (b / "meta.json").read_bytes()
    for r in _rows(a)[:4]:
        clip_a, clip_b = a / "clips" / f"{r['name']}.mp4", b / "clips" / f"{r['name']}.mp4"
        np.testing.assert_array_equal(_audio(clip_a), _audio(clip_b))
        np.testing.assert_array_equal(_frames(clip_a), _frames(clip_b))
        assert clip_a.read_bytes() == clip_b.read_bytes()  # same machine and libraries: byte-identical


@needs_espeak
def test_other_seed_differs(corpora: dict[str, Path]) -> None:
    a, c = _rows(corpora["a"]), _rows(corpora["c"])
    assert [r["emotion"] for r in a] != [r["emotion"] for r in c]
    assert [r["subtitle"] for r in a] != [r["subtitle"] for r in c]
    x, y = _audio(corpora["a"] / "clips" / "demo_00000.mp4"), _audio(corpora["c"] / "clips" / "demo_00000.mp4")
    assert x.shape != y.shape or not np.array_equal(x, y)


@needs_espeak
def test_clips_decode_to_the_expected_duration_and_size(corpora: dict[str, Path]) -> None:
    root = corpora["a"]
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    durations = []
    for m in meta["clips"]:
        path = root / "clips" / f"{m['name']}.mp4"
        audio, frames = _audio(path), _frames(path)
        assert abs(len(audio) / 16000 - m["duration_s"]) <= 0.1, m["name"]
        assert frames.shape == (m["n_frames"], SIZE, SIZE, 3)
        assert abs(len(frames) / FPS - m["duration_s"]) <= 1 / FPS
        assert np.sqrt(np.mean(audio ** 2)) > 0.01          # speech, not silence
        assert frames.std(axis=0).mean() > 0.5               # the face moves
        durations.append(m["duration_s"])
    assert 1.0 < min(durations) and max(durations) < 6.0
    with av.open(str(root / "clips" / "demo_00000.mp4")) as c:
        assert c.streams.audio[0].rate == 16000 and c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.name in ("h264", "mpeg4")


@needs_espeak
def test_expression_and_prosody_follow_the_emotion(corpora: dict[str, Path]) -> None:
    from featstore.demo_data import _PROSODY, _plan

    for s in _plan(60, seed=0):
        p, rate, amp, _ = _PROSODY[s.emotion]
        assert abs(s.pitch - p) <= 6 and abs(s.rate - rate) <= 12 and abs(s.amplitude - amp) <= 12
    # sad speech is slower and quieter than angry speech in the rendered clips
    root = corpora["a"]
    meta = {m["name"]: m for m in json.loads((root / "meta.json").read_text(encoding="utf-8"))["clips"]}
    rms = {}
    for r in _rows(root):
        if r["emotion"] in ("sad", "angry"):
            a = _audio(root / "clips" / f"{r['name']}.mp4")
            rms.setdefault(r["emotion"], []).append(np.sqrt(np.mean(a ** 2)))
            assert meta[r["name"]]["rate"] < 150 if r["emotion"] == "sad" else meta[r["name"]]["rate"] > 180
    assert np.mean(rms["sad"]) < np.mean(rms["angry"])


@needs_espeak
def test_adapter_reads_the_corpus(corpora: dict[str, Path]) -> None:
    root = corpora["a"]
    index = load_index("demo", root)
    rows = _rows(root)
    spec = load_catalog().dataset("demo")
    assert index.ids == [r["name"] for r in rows] and len(index) == N
    assert index.text == [r["subtitle"] for r in rows]
    assert all(m is not None and Path(m).is_file() for m in index.media)
    assert index.label_classes["emotion"] == list(spec.emotions)
    emo = index.labels["emotion"]
    assert emo.dtype == np.int16
    assert [spec.emotions[c] for c in emo] == [r["emotion"] for r in rows]
    val = index.labels["valence"]
    assert val.dtype == np.float32
    np.testing.assert_allclose(val, [float(r["valence"]) for r in rows], atol=1e-6)
    assert set(index.subsets) == {"train", "test1"}
    train, test1 = index.subsets["train"], index.subsets["test1"]
    assert train.dtype == bool and not (train & test1).any() and (train | test1).all()
    assert [r["name"] for r in rows if r["split"] == "test1"] == [i for i, t in zip(index.ids, test1) if t]


@needs_espeak
def test_adapter_tolerates_missing_clips(corpora: dict[str, Path], tmp_path: Path, caplog) -> None:
    root = tmp_path / "partial"
    shutil.copytree(corpora["a"], root)
    (root / "clips" / "demo_00003.mp4").unlink()
    (root / "clips" / "demo_00007.mp4").unlink()
    with caplog.at_level("WARNING"):
        index = demo_adapter.load(root, load_catalog().dataset("demo"))
    assert [i for i, m in zip(index.ids, index.media) if m is None] == ["demo_00003", "demo_00007"]
    assert len(index) == N
    assert "2 of 12 clips missing" in caplog.text


@needs_espeak
def test_adapter_errors(corpora: dict[str, Path], tmp_path: Path) -> None:
    spec = load_catalog().dataset("demo")
    with pytest.raises(FeatstoreError, match=r"no labels\.csv at .*labels\.csv"):
        demo_adapter.load(tmp_path / "nowhere", spec)

    root = tmp_path / "bad"
    (root / "clips").mkdir(parents=True)
    rows = _rows(corpora["a"])
    rows[1]["emotion"], rows[4]["emotion"] = "joyful", "bored"
    with open(root / "labels.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "emotion", "valence", "subtitle", "split"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(FeatstoreError, match=r"not in the catalog's label space: bored, joyful") as err:
        demo_adapter.load(root, spec)
    assert "labels.csv" in str(err.value) and "\n" not in str(err.value)

    with open(root / "labels.csv", "w", encoding="utf-8", newline="") as f:
        f.write("name,emotion,subtitle,split\ndemo_00000,happy,Hi there all,train\n")
    with pytest.raises(FeatstoreError, match=r"labels\.csv lacks column 'valence'"):
        demo_adapter.load(root, spec)


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featstore.demo_data as dd

    monkeypatch.setattr(dd.shutil, "which", lambda name: None)
    with pytest.raises(FeatstoreError, match=r"espeak-ng.*apt-get install espeak-ng") as err:
        generate(tmp_path / "x", n=6)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x" / "labels.csv").exists()
