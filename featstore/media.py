"""Decode clips with PyAV into what encoders need: 16 kHz mono float32 audio, or a few RGB frames.

Every failure (missing, empty, truncated or corrupt file, no such stream, silent audio, a clip that
is too short or too long) raises `SampleError(sample_id, "decode", cause)` with a short cause, so a
build records it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from featstore.errors import SampleError

SILENCE_RMS = 1e-5   # audio whose RMS is below this is "silent audio"

__all__ = ["decode_audio", "decode_frames", "probe_duration", "SILENCE_RMS"]


def _fail(sample_id: str, cause: str) -> SampleError:
    return SampleError(sample_id, "decode", cause)


def _short(exc: BaseException) -> str:
    """One line naming a PyAV/OS error without its (long, path-laden) tail."""
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(msg).splitlines()[0][:200]


def _open(path: str | os.PathLike[str], sample_id: str) -> Any:
    """Open a container, turning every way a file can be unusable into a SampleError."""
    p = Path(path)
    if not p.exists():
        raise _fail(sample_id, f"file not found: {p}")
    if not p.is_file():
        raise _fail(sample_id, f"not a file: {p}")
    if p.stat().st_size == 0:
        raise _fail(sample_id, f"empty file (0 bytes): {p}")
    try:
        return av.open(str(p), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(sample_id, f"corrupt or truncated media ({_short(exc)})") from exc


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _stream_duration(container: Any, stream: Any) -> float | None:
    """The stream's duration in seconds, else the container's, else None (unknown)."""
    d = _seconds(stream.duration, stream.time_base)
    if d is None and container.duration is not None:
        d = container.duration / av.time_base
    return d if d is not None and d > 0 else None


def probe_duration(path: str | os.PathLike[str], kind: str = "audio") -> float | None:
    """Seconds of the first `kind` ("audio" or "video") stream, read from the container's metadata alone
    (nothing is decoded; about a millisecond a file). None when the file cannot be opened, has no such stream
    or states no duration. Used to plan length-bucketed batches before any clip is decoded."""
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError):
        return None
    try:
        streams = container.streams.audio if kind == "audio" else container.streams.video
        return _stream_duration(container, streams[0]) if streams else None
    finally:
        container.close()


def _check_length(sample_id: str, seconds: float, min_s: float, max_s: float) -> None:
    if seconds < min_s:
        raise _fail(sample_id, f"too short: {seconds:.2f} s (min {min_s:g} s)")
    if seconds > max_s:
        raise _fail(sample_id, f"too long: {seconds:.1f} s (max {max_s:g} s)")


def decode_audio(path: str | os.PathLike[str], sample_id: str, sample_rate: int = 16000,
                 min_s: float = 0.5, max_s: float = 600) -> np.ndarray:
    """Decode the first audio stream of `path` to float32 mono at `sample_rate`.

    The result is trimmed to the audio stream's duration: AAC encoders pad the last frame (and
    prime the first one; FFmpeg drops the priming samples from the edit list), so a plain decode
    is up to one codec frame longer than the clip. Works for any container FFmpeg reads (mp4,
    mkv, wav, ...). Raises SampleError(sample_id, "decode", cause) for unusable files, no audio
    stream, silent audio (RMS < 1e-5), or a duration outside [min_s, max_s].
    """
    container = _open(path, sample_id)
    try:
        if not container.streams.audio:
            raise _fail(sample_id, "no audio stream")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        duration = _stream_duration(container, stream)
        own = _seconds(stream.duration, stream.time_base)   # the stream's own length (not the container's)
        if duration is not None and duration > max_s + 1.0:   # refuse long files before decoding them
            _check_length(sample_id, duration, min_s, max_s)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        limit = int((max_s + 1.0) * sample_rate)      # stop early when metadata lied about the length
        chunks: list[np.ndarray] = []
        n = 0
        lead = 0                                     # samples before t=0 (priming not removed upstream)
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i == 0 and frame.time is not None:
                    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
                    lead = max(0, round((start - frame.time) * sample_rate))
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n += chunks[-1].size
                if n > limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise _fail(sample_id, f"corrupt or truncated media ({_short(exc)})") from exc
    finally:
        container.close()

    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if lead:
        audio = audio[lead:]
    if duration is not None:
        audio = audio[: int(round(duration * sample_rate))]
    if audio.size == 0:
        raise _fail(sample_id, "no audio decoded")
    if own and audio.size < sample_rate * (own - max(0.5, 0.02 * own)):
        raise _fail(sample_id, f"truncated audio: decoded {audio.size / sample_rate:.2f} s of {own:.2f} s")
    _check_length(sample_id, audio.size / sample_rate, min_s, max_s)
    if not np.isfinite(audio).all():
        raise _fail(sample_id, "audio has NaN/Inf samples")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise _fail(sample_id, "silent audio")
    return np.ascontiguousarray(audio)


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _frame_times(container: Any, stream: Any) -> Iterator[tuple[float, Any]]:
    """(seconds since the stream start, undecoded-to-RGB frame) for every decoded frame."""
    start = _seconds(stream.start_time, stream.time_base) or 0.0
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    for i, frame in enumerate(container.decode(stream)):
        t = frame.time
        yield (t - start if t is not None else i / rate), frame


def decode_frames(path: str | os.PathLike[str], sample_id: str, n_frames: int | None = None,
                  fps: float | None = None, max_side: int | None = None) -> np.ndarray:
    """Decode RGB frames of the first video stream of `path` as uint8 [F, H, W, 3].

    Exactly one of `n_frames` (N frames uniformly spaced from the first to the last frame: the
    frames nearest np.linspace(0, last, N)) and `fps` (the frames nearest 0, 1/fps, 2/fps, ...)
    must be given. `max_side` downscales so that max(H, W) <= max_side, keeping the aspect
    ratio. Every frame is decoded (inter-coded video needs it) but only kept frames are
    converted to RGB and scaled, in one swscale call each. Raises SampleError(sample_id,
    "decode", cause) for unusable files, no video stream, or no decodable frame.
    """
    if (n_frames is None) == (fps is None):
        raise ValueError("decode_frames: give exactly one of n_frames and fps")
    if n_frames is not None and n_frames < 1:
        raise ValueError(f"decode_frames: n_frames must be >= 1, got {n_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"decode_frames: fps must be > 0, got {fps}")

    container = _open(path, sample_id)
    try:
        if not container.streams.video:
            raise _fail(sample_id, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate or stream.guessed_rate or 25)
        half = 0.5 / native                 # a frame within half a frame period of a target is "at" it
        if n_frames is not None:
            last: float | None = _last_frame_time(container, stream, sample_id, native)
            targets: Any = iter(np.linspace(0.0, last, n_frames).tolist()) if n_frames > 1 else iter([0.0])
        else:
            duration = _stream_duration(container, stream)
            last = max(0.0, duration - 1.0 / native) if duration is not None else None
            targets = (k / fps for k in _count())
        kept: list[np.ndarray] = []
        size: tuple[int, int] | None = None
        target = next(targets)
        prev = None                         # (time, frame) of the previous decoded frame
        try:
            for t, frame in _frame_times(container, stream):
                # A target falls to whichever of the previous and this frame is nearer to it.
                while target is not None and t >= target - half:
                    pick = prev[1] if prev is not None and (target - prev[0]) < (t - target) else frame
                    if size is None:
                        size = _target_size(frame.width, frame.height, max_side)
                    kept.append(pick.to_ndarray(format="rgb24", width=size[0], height=size[1],
                                                interpolation="AREA"))
                    target = next(targets, None)
                if target is None:
                    break
                prev = (t, frame)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise _fail(sample_id, f"corrupt or truncated media ({_short(exc)})") from exc
        if target is not None and prev is not None:
            # The stream ended with targets left. Metadata that is a little off repeats the last
            # frame (n_frames) or ends the list (fps); frames that stop well short are a truncated file.
            if last is not None and last - prev[0] > max(0.5, 2.0 / native):
                raise _fail(sample_id, f"truncated video: frames end at {prev[0]:.2f} s of {last + 1 / native:.2f} s")
            if n_frames is not None and len(kept) < n_frames:
                size = size or _target_size(prev[1].width, prev[1].height, max_side)
                last_rgb = prev[1].to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                kept.extend([last_rgb] * (n_frames - len(kept)))
    finally:
        container.close()
    if not kept:
        raise _fail(sample_id, "no video frames decoded")
    return np.stack(kept)


def _count() -> Iterator[int]:
    k = 0
    while True:
        yield k
        k += 1


def _last_frame_time(container: Any, stream: Any, sample_id: str, native: float) -> float:
    """Time of the last frame: from the stream's frame count or duration, else by a decode pass."""
    if stream.frames and stream.frames > 0:
        duration = _stream_duration(container, stream)
        if duration is not None:
            return max(0.0, duration * (stream.frames - 1) / stream.frames)
        return (stream.frames - 1) / native
    duration = _stream_duration(container, stream)
    if duration is not None:
        return max(0.0, duration - 1.0 / native)
    # Unknown length (e.g. some raw streams): one pass for timestamps, then rewind.
    last = 0.0
    try:
        for t, _ in _frame_times(container, stream):
            last = t
        container.seek(0, stream=stream)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(sample_id, f"corrupt or truncated media ({_short(exc)})") from exc
    return last
