"""featstore.corrupt: noise at an exact drawn SNR, pyramid blur, punctuation classes, determinism."""

from __future__ import annotations

import hashlib
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from featstore.catalog import CorruptionSpec, load_catalog
from featstore.corrupt import (BUILTIN_BABBLE, builtin_babble, make_corruptor, punctuation_class, pyr_blur,
                               remove_punctuation, sample_rng)
from featstore.errors import FeatstoreError, SampleError

SR = 16000


def noise_spec(snr_db, bank=BUILTIN_BABBLE, seed=0) -> CorruptionSpec:
    return CorruptionSpec(name="noise", kind="audio-noise", modality="audio", seed=seed,
                          params={"snr_db": snr_db, "bank": bank})


def blur_spec(factors, seed=0) -> CorruptionSpec:
    return CorruptionSpec(name="blur", kind="blur", modality="visual", seed=seed, params={"factors": factors})


def punc_spec(*classes) -> CorruptionSpec:
    return CorruptionSpec(name="punc", kind="punctuation", modality="text", params={"classes": list(classes)})


def write_pcm_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def speechish(seconds: float, seed: int, rate: int = SR, amp: float = 0.3) -> np.ndarray:
    """An amplitude-modulated chirp plus noise: non-stationary, non-periodic, never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f = rng.uniform(150, 300)
    x = np.sin(2 * np.pi * (f + 60 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + 0.1 * rng.standard_normal(t.size)
    return (amp * x).astype(np.float32)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """A MUSAN-like bank: speech/<source>/*.wav, some at 8 kHz and some at 16 kHz, 0.6-1.5 s each."""
    root = tmp_path_factory.mktemp("bank")
    for k in range(3):
        write_pcm_wav(root / "speech" / "librivox" / f"l8k-{k}.wav", speechish(0.6 + 0.3 * k, 100 + k, 8000), 8000)
        write_pcm_wav(root / "speech" / "us-gov" / f"g16k-{k}.wav", speechish(0.7 + 0.4 * k, 200 + k, SR), SR)
    return root


def measured_snr(x: np.ndarray, y: np.ndarray, gain: float) -> float:
    s = gain * x.astype(np.float64)
    n = y.astype(np.float64) - s
    return 10 * np.log10(np.sum(s * s) / np.sum(n * n))


# =================================================================================== audio noise

@pytest.mark.parametrize("snr_db", [7, 5.5, [5, 10]])
def test_mix_has_the_drawn_snr(bank, snr_db):
    cor = make_corruptor(noise_spec(snr_db), noise_bank=bank)
    x = speechish(3.0, 1)
    used = set()
    for k in range(8):
        y, p = cor.apply(x, f"sample_{k:05d}")
        assert y.dtype == np.float32 and y.shape == x.shape
        if not isinstance(snr_db, list):
            assert p["snr_db"] == snr_db
        assert p["gain"] == 1.0
        assert abs(measured_snr(x, y, p["gain"]) - p["snr_db"]) < 0.1
        assert len(p["noise_clips"]) >= 2, "3 s of noise from clips of at most 1.5 s needs several clips"
        used.update(p["noise_clips"])
    assert any("l8k" in u for u in used) and any("g16k" in u for u in used)
    assert all((bank / u).is_file() for u in used), "clip names are paths relative to the bank"


def test_noise_clips_are_resampled_to_16k(tmp_path):
    t = np.arange(8000 * 2) / 8000
    write_pcm_wav(tmp_path / "tone8k.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000)
    cor = make_corruptor(noise_spec(0, bank=str(tmp_path)))
    x = speechish(1.0, 3)
    y, p = cor.apply(x, "a")
    n = y.astype(np.float64) - p["gain"] * x
    spectrum = np.abs(np.fft.rfft(n))
    peak_hz = np.fft.rfftfreq(n.size, 1 / SR)[np.argmax(spectrum)]
    assert abs(peak_hz - 1000) < 5, f"an 8 kHz 1 kHz tone must stay at 1 kHz after resampling, got {peak_hz}"


def test_snr_draws_are_integers_covering_the_range(bank):
    cor = make_corruptor(noise_spec([5, 10]), noise_bank=bank)
    x = speechish(0.3, 2)
    draws = [cor.apply(x, f"id{k}")[1]["snr_db"] for k in range(150)]
    assert all(type(d) is int for d in draws)
    assert set(draws) == set(range(5, 11))
    counts = np.bincount(draws)[5:]
    assert counts.min() >= 10, f"uniform over 6 values: {counts}"


def test_noise_is_deterministic_per_seed_and_id(bank):
    spec = noise_spec([5, 10], seed=3)
    a, b = make_corruptor(spec, noise_bank=bank), make_corruptor(spec, noise_bank=bank)
    x = speechish(2.0, 4)
    y1, p1 = a.apply(x, "clip_a")
    y2, p2 = b.apply(x, "clip_a")
    assert np.array_equal(y1, y2) and p1 == p2
    y3, p3 = a.apply(x, "clip_b")
    y4, _ = make_corruptor(noise_spec([5, 10], seed=4), noise_bank=bank).apply(x, "clip_a")
    n1, n3, n4 = (y.astype(np.float64) - x for y in (y1, y3, y4))
    assert not np.allclose(n1 / np.std(n1), n3 / np.std(n3), atol=1e-2), "another id gets other noise"
    assert not np.allclose(n1 / np.std(n1), n4 / np.std(n4), atol=1e-2), "another seed gets other noise"
    assert sample_rng(3, "clip_a", "x").integers(1 << 30) == sample_rng(3, "clip_a", "x").integers(1 << 30)


def test_params_drawn_are_json_able(bank):
    import json

    _, p = make_corruptor(noise_spec([5, 10]), noise_bank=bank).apply(speechish(1.0, 5), "s")
    assert json.loads(json.dumps(p)) == p
    assert set(p) == {"snr_db", "noise_clips", "noise_offset", "gain"}


def test_clipping_mix_is_rescaled_and_keeps_the_snr(bank):
    cor = make_corruptor(noise_spec(5), noise_bank=bank)
    t = np.arange(SR) / SR
    x = (0.97 * np.sign(np.sin(2 * np.pi * 220 * t + 0.1))).astype(np.float32)   # loud square wave
    y, p = cor.apply(x, "loud")
    assert p["gain"] < 1.0
    assert np.max(np.abs(y)) <= 1.0
    assert np.max(np.abs(y)) > 0.999, "the mix is scaled so that its peak just fits"
    assert abs(measured_snr(x, y, p["gain"]) - 5) < 0.1


@pytest.mark.parametrize("x", [np.zeros(SR, np.float32), np.zeros(0, np.float32)])
def test_silent_audio_is_a_sample_error(x):
    cor = make_corruptor(noise_spec(5))
    with pytest.raises(SampleError) as err:
        cor.apply(x, "quiet_one")
    assert err.value.sample_id == "quiet_one" and err.value.stage == "corrupt"
    assert "silent audio: SNR undefined" in str(err.value)


def test_builtin_babble_is_speech_like():
    clips = builtin_babble(SR)
    assert len(clips) >= 4 and all(c.dtype == np.float32 and c.size == clips[0].size for c in clips)
    assert builtin_babble(SR) is clips, "synthesised once per process"
    x = np.concatenate(clips).astype(np.float64)
    assert np.isfinite(x).all() and np.sqrt(np.mean(x * x)) > 0.05
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    assert power[freqs < 4000].sum() / power.sum() > 0.95, "band-limited like speech"
    assert power[freqs < 80].sum() / power.sum() < 0.02, "no DC/rumble: energy sits in the voice band"
    frames = (x[: x.size // 320 * 320].reshape(-1, 320) ** 2).mean(1)   # 20 ms frames
    assert frames.std() / frames.mean() > 0.3, "syllabic amplitude modulation, not stationary noise"
    assert not np.array_equal(clips[0], clips[1])


def test_catalog_noise_corruption_uses_builtin_babble():
    spec = load_catalog().corruption("snr5-10")
    cor = make_corruptor(spec)
    x = speechish(2.0, 6)
    y, p = cor.apply(x, "sample_00000001")
    assert all(c.startswith(f"{BUILTIN_BABBLE}/") for c in p["noise_clips"])
    assert 5 <= p["snr_db"] <= 10 and abs(measured_snr(x, y, p["gain"]) - p["snr_db"]) < 0.1
    assert cor.feature_spec()["noise_bank"] == {"bank": BUILTIN_BABBLE, "version": 1}


def test_bank_fingerprint_ignores_location(bank, tmp_path):
    copy = shutil.copytree(bank, tmp_path / "elsewhere")
    a = make_corruptor(noise_spec(5), noise_bank=bank).feature_spec()
    b = make_corruptor(noise_spec(5), noise_bank=copy).feature_spec()
    assert a == b and str(bank) not in repr(a)
    (copy / "speech" / "us-gov" / "g16k-0.wav").unlink()
    assert make_corruptor(noise_spec(5), noise_bank=copy).feature_spec() != a


def test_bad_banks_and_specs_fail_clearly(tmp_path):
    with pytest.raises(FeatstoreError, match="no .wav files"):
        make_corruptor(noise_spec(5), noise_bank=tmp_path)
    for bad in (None, [10, 5], [5.5, 10], [1, 2, 3], "5"):
        with pytest.raises(FeatstoreError, match="snr_db"):
            make_corruptor(noise_spec(bad))
    with pytest.raises(FeatstoreError, match="factors"):
        make_corruptor(blur_spec([1, 3]))
    with pytest.raises(FeatstoreError, match="classes"):
        make_corruptor(punc_spec("X"))
    with pytest.raises(FeatstoreError, match="modality"):
        make_corruptor(CorruptionSpec(name="n", kind="audio-noise", modality="text", params={"snr_db": 5}))


# ========================================================================================== blur

def textured(f=3, h=37, w=50, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


def laplacian_energy(frames: np.ndarray) -> float:
    a = frames.astype(np.float64)
    lap = 4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2] - a[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def test_blur_factor_one_is_identity():
    x = textured()
    y, p = make_corruptor(blur_spec([1])).apply(x, "v")
    assert p == {"factor": 1} and np.array_equal(y, x)


def test_blur_removes_high_frequencies_monotonically():
    x = textured()
    energies = [laplacian_energy(x)]
    for r in (2, 4):
        y, p = make_corruptor(blur_spec([r])).apply(x, "v")
        assert p == {"factor": r} and y.shape == x.shape and y.dtype == np.uint8
        energies.append(laplacian_energy(y))
    assert energies[0] > energies[1] > energies[2]
    assert energies[1] < 0.5 * energies[0]


def test_one_factor_per_video_and_all_factors_drawn():
    frame = textured(1)[0]
    x = np.stack([frame] * 4)
    cor = make_corruptor(blur_spec([1, 2, 4]))
    seen = set()
    for k in range(40):
        y, p = cor.apply(x, f"vid{k}")
        assert all(np.array_equal(y[i], y[0]) for i in range(1, 4)), "the same factor for every frame"
        assert np.array_equal(y, pyr_blur(x, p["factor"]))
        seen.add(p["factor"])
    assert seen == {1, 2, 4}
    assert cor.apply(x, "vid7")[1] == cor.apply(x, "vid7")[1]


def test_blur_keeps_constant_frames_and_odd_sizes():
    x = np.full((2, 15, 9, 3), 77, np.uint8)
    assert np.array_equal(pyr_blur(x, 4), x)
    assert pyr_blur(textured(1, 5, 3), 8).shape == (1, 5, 3, 3)


def _pattern(f: int, h: int, w: int) -> np.ndarray:
    i, j, k, c = np.ogrid[:f, :h, :w, :3]
    return ((i * 71 + j * 37 + k * 101 + c * 53 + (j * k) % 23 * 11) * 7919 % 256).astype(np.uint8)


# sha256 of OpenCV 4.13's pyrDown^n / pyrUp^n(dstsize) on _pattern(2, 37, 50), frame by frame
CV2_REFERENCE = {2: "e9c40a1c7e0a2ce9187fcfb49b2672eecc7b1d2461255bc08fd02d46815b0c86",
                 4: "d5f0966ba9b5ac972ca925359dd7df3e3cd700d14ed72f0d11b11cd0c1b911aa"}


@pytest.mark.parametrize("r", [2, 4])
def test_numpy_pyramid_matches_opencv_bit_for_bit(r):
    y = pyr_blur(_pattern(2, 37, 50), r, use_cv2=False)
    assert hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest() == CV2_REFERENCE[r]


def test_cv2_and_numpy_paths_agree():
    pytest.importorskip("cv2")
    for shape in [(2, 37, 50, 3), (1, 64, 48, 3), (1, 7, 5, 3)]:
        x = textured(*shape[:3])
        for r in (2, 4, 8):
            assert np.array_equal(pyr_blur(x, r, use_cv2=True), pyr_blur(x, r, use_cv2=False))


def test_blur_rejects_wrong_input():
    with pytest.raises(SampleError, match="uint8 frames") as err:
        make_corruptor(blur_spec([2])).apply(np.zeros((4, 4, 3), np.uint8), "v9")
    assert err.value.stage == "corrupt" and err.value.sample_id == "v9"


# =================================================================================== punctuation

EN = "Really?! I can't believe it... Well, okay."
ZH = "你好！你真的要走吗？我……不知道，真的、真的。“好”（吧）《书》：是～"


@pytest.mark.parametrize("classes, text, expected, removed", [
    # E marks become a full stop (MERTools case1): "." in text without Chinese characters
    (["E"], EN, "Really.. I can't believe it... Well, okay.", {"E": 2}),
    (["P"], EN, "Really?! I can't believe it... Well okay.", {"P": 1}),
    (["O"], EN, "Really?! I cant believe it Well, okay", {"O": 5}),
    (["E", "P", "O"], EN, "Really I cant believe it Well okay", {"E": 2, "P": 1, "O": 5}),
    (["E"], ZH, "你好。你真的要走吗。我。。不知道，真的、真的。“好”（吧）《书》：是～", {"E": 4}),
    (["P"], ZH, "你好！你真的要走吗？我……不知道真的、真的。“好”（吧）《书》：是～", {"P": 1}),
    (["O"], ZH, "你好！你真的要走吗？我……不知道，真的真的好吧书是", {"O": 10}),
    (["E", "P"], ZH, "你好。你真的要走吗。我。。不知道真的、真的。“好”（吧）《书》：是～", {"E": 4, "P": 1}),
    (["E", "P", "O"], ZH, "你好你真的要走吗我不知道真的真的好吧书是", {"E": 4, "P": 1, "O": 10}),
    # with O removed, the full stop an E mark would become goes too
    (["E", "O"], ZH, "你好你真的要走吗我不知道，真的真的好吧书是", {"E": 4, "O": 10}),
])
def test_punctuation_classes(classes, text, expected, removed):
    out, p = make_corruptor(punc_spec(*classes)).apply(text, "s1")
    assert out == expected
    assert p == {"removed": sum(removed.values()), "removed_by_class": removed}


def test_e_marks_can_be_deleted_instead():
    spec = CorruptionSpec(name="e", kind="punctuation", modality="text", params={"classes": ["E"], "e_action": "delete"})
    assert make_corruptor(spec).apply(ZH, "s")[0] == "你好你真的要走吗我不知道，真的、真的。“好”（吧）《书》：是～"
    assert make_corruptor(spec).apply(EN, "s")[0] == "Really I can't believe it... Well, okay."


# every punctuation mark MERTools found in its transcripts (toolkit/utils/punctuation.py)
MERTOOLS_MARKS = ".；『&^;“$%:”+』<，’!]·…（(_％\",：【》‘}】>[{）、'-。—＃)=！~？/#?*@《"


def test_every_mark_in_mertools_transcripts_is_punctuation():
    assert all(punctuation_class(c) is not None for c in MERTOOLS_MARKS)
    text = "字".join(MERTOOLS_MARKS)
    out, _ = make_corruptor(punc_spec("E", "P", "O")).apply(text, "s")
    assert out == "字" * (len(MERTOOLS_MARKS) - 1)
    case2, _ = make_corruptor(punc_spec("E", "P")).apply(text, "s")
    assert not set(case2) & set("？！?!…，,") and "、" in case2


def test_text_without_punctuation_is_unchanged():
    for text in ("我今天很开心", "plain words only", ""):
        out, p = make_corruptor(punc_spec("E", "P", "O")).apply(text, "s")
        assert out == text and p["removed"] == 0


def test_all_punctuation_text_becomes_empty():
    out, p = make_corruptor(punc_spec("E", "P", "O")).apply("！？…，。", "s")
    assert out == "" and p == {"removed": 5, "removed_by_class": {"E": 3, "P": 1, "O": 1}}


def test_punctuation_class_of_single_characters():
    assert [punctuation_class(c) for c in "!？…,，、.。;；:“”（）《》【】—-'~～\u3000"] == \
        ["E", "E", "E", "P", "P"] + ["O"] * 20
    assert [punctuation_class(c) for c in "a字 1"] == [None] * 4
    assert remove_punctuation("a...b", {"E"}) == ("a...b", {"E": 0}), "ASCII dots are full stops (O), as in MERTools"


def test_punctuation_rejects_non_strings():
    with pytest.raises(SampleError, match="subtitle string"):
        make_corruptor(punc_spec("E")).apply(None, "s")


# ========================================================================== none and variants

def test_clean_is_identity_and_variants_are_not_computed():
    catalog = load_catalog()
    x = np.ones(4, np.float32)
    y, p = make_corruptor(catalog.corruption("clean")).apply(x, "s")
    assert y is x and p == {}
    for name in ("lang-eng", "tts"):
        cor = make_corruptor(catalog.corruption(name))
        with pytest.raises(FeatstoreError, match="dataset adapter"):
            cor.apply(x, "s")


def test_every_catalog_corruption_builds():
    catalog = load_catalog()
    for name, spec in catalog.corruptions.items():
        assert make_corruptor(spec).spec is spec, name


def test_corruptors_pickle_for_workers(bank):
    import pickle

    x = speechish(1.0, 8)
    for cor in (make_corruptor(noise_spec([5, 10]), noise_bank=bank), make_corruptor(noise_spec(5)),
                make_corruptor(blur_spec([1, 2, 4])), make_corruptor(punc_spec("E"))):
        cor.apply(x if cor.spec.kind == "audio-noise" else (textured() if cor.spec.kind == "blur" else EN), "warm")
        clone = pickle.loads(pickle.dumps(cor))
        if cor.spec.kind == "audio-noise":
            assert np.array_equal(clone.apply(x, "p")[0], cor.apply(x, "p")[0])
