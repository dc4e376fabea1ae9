"""featstore.media: decode synthetic mp4/wav clips; every failure is a SampleError at stage 'decode'."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.errors import SampleError
from featstore.media import decode_audio, decode_frames
from media_helpers import index_frames, tone, write_mp4, write_wav

SR = 16000
FPS = 25
N_FRAMES = 50          # 2.0 s at 25 fps
STEP = 5               # frame k has grey level 5k


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    audio = tone(2.0, SR)
    frames = index_frames(N_FRAMES, step=STEP)
    paths = {
        "mp4": write_mp4(d / "clip.mp4", audio, frames, fps=FPS, sample_rate=SR),
        "wav": write_wav(d / "clip.wav", audio, SR),
        "video_only": write_mp4(d / "video_only.mp4", None, frames, fps=FPS),
        "audio_only": write_mp4(d / "audio_only.mp4", audio, None, sample_rate=SR),
        "silent_wav": write_wav(d / "silent.wav", np.zeros(SR, np.float32), SR),
        "quiet_mp4": write_mp4(d / "quiet.mp4", 1e-6 * tone(1.0, SR, noise=1.0, amp=0.0), None),
        "short": write_wav(d / "short.wav", tone(0.3, SR), SR),
        "empty": str(d / "empty.mp4"),
        "garbage": str(d / "garbage.mp4"),
        "truncated": str(d / "truncated.mp4"),
    }
    open(paths["empty"], "wb").close()
    with open(paths["garbage"], "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = open(paths["mp4"], "rb").read()
    with open(paths["truncated"], "wb") as f:   # index (moov) is at the end: cut it off
        f.write(data[: len(data) // 2])
    return {"dir": d, "audio": audio, "frames": frames, **paths}


def _levels_to_index(frames: np.ndarray) -> np.ndarray:
    return np.round(frames[:, :, :, :].reshape(len(frames), -1).mean(1) / STEP).astype(int)


# ------------------------------------------------------------------------------------------------ audio

def test_audio_from_mp4_is_trimmed_and_aligned(clips):
    x = decode_audio(clips["mp4"], "a")
    assert x.dtype == np.float32 and x.ndim == 1
    ref = clips["audio"]
    assert abs(x.size - ref.size) < 1024, "AAC padding must be trimmed to the stream duration (within one frame)"
    n = min(x.size, ref.size)
    # the priming samples are gone: the decoded signal lines up with the source at offset 0
    assert np.abs(x[1000:n - 1000] - ref[1000:n - 1000]).mean() < 0.02


def test_audio_from_wav_is_exact(clips):
    x = decode_audio(clips["wav"], "w")
    assert x.dtype == np.float32 and x.shape == clips["audio"].shape
    np.testing.assert_allclose(x, clips["audio"], atol=2 / 32768)


def test_audio_resampled_and_downmixed(tmp_path):
    t = np.arange(44100) / 44100
    left = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    path = write_wav(tmp_path / "stereo44k.wav", np.stack([left, left]), 44100)
    for rate in (16000, 8000):
        x = decode_audio(path, "s", sample_rate=rate)
        assert x.ndim == 1 and x.dtype == np.float32
        assert abs(x.size - rate) <= 1                     # 1.0 s at the requested rate
        spectrum = np.abs(np.fft.rfft(x))
        peak_hz = np.argmax(spectrum) * rate / x.size
        assert abs(peak_hz - 1000) < 3                     # the tone kept its pitch: rate is right


# ------------------------------------------------------------------------------------------------ frames

def test_n_frames_uniform(clips):
    v = decode_frames(clips["mp4"], "v", n_frames=8)
    assert v.dtype == np.uint8 and v.shape == (8, 48, 64, 3)
    got = _levels_to_index(v)
    want = np.linspace(0, N_FRAMES - 1, 8)
    assert np.all(np.abs(got - want) <= 0.5 + 1e-9), (got, want)   # the nearest frame to each target
    assert got[0] == 0 and got[-1] == N_FRAMES - 1


def test_fps_sampling_and_max_side(clips):
    v = decode_frames(clips["mp4"], "v", fps=5, max_side=32)
    assert v.shape == (10, 24, 32, 3)                       # 2 s at 5 fps, aspect ratio kept
    np.testing.assert_array_equal(_levels_to_index(v), np.arange(0, N_FRAMES, 5))


def test_single_frame_and_more_frames_than_exist(clips):
    assert _levels_to_index(decode_frames(clips["mp4"], "v", n_frames=1)).tolist() == [0]
    v = decode_frames(clips["mp4"], "v", n_frames=2 * N_FRAMES)
    assert v.shape[0] == 2 * N_FRAMES
    idx = _levels_to_index(v)
    assert np.all(np.diff(idx) >= 0) and idx[0] == 0 and idx[-1] == N_FRAMES - 1


def test_frames_argument_checks(clips):
    with pytest.raises(ValueError):
        decode_frames(clips["mp4"], "v")
    with pytest.raises(ValueError):
        decode_frames(clips["mp4"], "v", n_frames=4, fps=2)


# ------------------------------------------------------------------------------------------------ failures

def _cause(fn, *args, **kwargs) -> str:
    with pytest.raises(SampleError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.stage == "decode" and err.sample_id == "bad"
    assert "\n" not in err.cause and len(err.cause) < 300
    return err.cause


@pytest.mark.parametrize("fn,kw", [(decode_audio, {}), (decode_frames, {"n_frames": 4})], ids=["audio", "frames"])
def test_unusable_files(clips, fn, kw):
    assert "file not found" in _cause(fn, clips["dir"] / "nope.mp4", "bad", **kw)
    assert "empty file (0 bytes)" in _cause(fn, clips["empty"], "bad", **kw)
    assert "corrupt or truncated" in _cause(fn, clips["garbage"], "bad", **kw)
    assert "corrupt or truncated" in _cause(fn, clips["truncated"], "bad", **kw)


def test_missing_streams(clips):
    assert _cause(decode_audio, clips["video_only"], "bad") == "no audio stream"
    assert _cause(decode_frames, clips["audio_only"], "bad", n_frames=4) == "no video stream"
    assert _cause(decode_frames, clips["wav"], "bad", fps=1) == "no video stream"


def test_silent_audio(clips):
    assert _cause(decode_audio, clips["silent_wav"], "bad") == "silent audio"
    assert _cause(decode_audio, clips["quiet_mp4"], "bad") == "silent audio"    # RMS ~1e-6 < 1e-5


def test_duration_limits(clips):
    cause = _cause(decode_audio, clips["short"], "bad")
    assert "too short" in cause and "0.30 s" in cause
    cause = _cause(decode_audio, clips["wav"], "bad", max_s=1.0)
    assert "too long" in cause and "2.0 s" in cause
    assert decode_audio(clips["short"], "ok", min_s=0.2).size == round(0.3 * SR)


def test_truncated_after_index(tmp_path):
    """The index (moov) is first, so the file opens, but the media data stops early."""
    path = write_mp4(tmp_path / "fast.mp4", tone(4.0, SR), index_frames(100, step=2), faststart=True)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    assert "truncated" in _cause(decode_audio, cut, "bad")
    assert "truncated" in _cause(decode_frames, cut, "bad", n_frames=4)
