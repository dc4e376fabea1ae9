"""Write tiny synthetic clips with PyAV for tests: mp4 (H.264 + AAC, either stream optional) and wav."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np


def tone(seconds: float, sample_rate: int = 16000, freq: float = 220.0, noise: float = 0.02,
         seed: int = 0, amp: float = 0.3) -> np.ndarray:
    """A float32 mono chirp starting at `freq` plus white noise (not periodic, so offsets are measurable)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * (freq + 100.0 * t) * t) + noise * rng.standard_normal(t.size)
    return x.astype(np.float32)


def index_frames(n: int, height: int = 48, width: int = 64, step: int = 4) -> np.ndarray:
    """uint8 [n, H, W, 3] frames whose grey level encodes their index (frame k has level k*step)."""
    levels = (np.arange(n) * step) % 256
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8)


def write_mp4(path: str | os.PathLike[str], audio: np.ndarray | None = None, frames: np.ndarray | None = None,
              fps: float = 25, sample_rate: int = 16000, faststart: bool = False,
              video_codec: str = "libx264", audio_codec: str = "aac") -> str:
    """Write an mp4 holding `frames` (uint8 [F, H, W, 3] RGB at `fps`) and/or `audio` (float32 [T] or
    [C, T] at `sample_rate`); pass None to omit a stream. `faststart` puts the index (moov) first,
    so a truncated file still opens."""
    if audio is None and frames is None:
        raise ValueError("write_mp4: give audio, frames, or both")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as out:
        vs = as_ = None
        if frames is not None:
            vs = out.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1001))
            vs.height, vs.width = int(frames.shape[1]), int(frames.shape[2])
            vs.pix_fmt = "yuv420p"
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            audio = audio[None, :] if audio.ndim == 1 else audio
            as_ = out.add_stream(audio_codec, rate=sample_rate)
            as_.layout = "mono" if audio.shape[0] == 1 else "stereo"
        if vs is not None:
            for img in frames:
                for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if as_ is not None:
            _write_audio(out, as_, audio, sample_rate)
    return str(path)


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int = 16000) -> str:
    """Write float32 [T] (mono) or [C, T] audio as 16-bit PCM wav."""
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[None, :] if audio.ndim == 1 else audio
    with av.open(str(path), mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sample_rate)
        stream.layout = "mono" if audio.shape[0] == 1 else "stereo"
        _write_audio(out, stream, audio, sample_rate)
    return str(path)


def _write_audio(out, stream, audio: np.ndarray, sample_rate: int, chunk: int = 1024) -> None:
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    for start in range(0, audio.shape[1], chunk):
        block = np.ascontiguousarray(audio[:, start:start + chunk])
        # packed float: one row of interleaved samples
        frame = av.AudioFrame.from_ndarray(block.T.reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
