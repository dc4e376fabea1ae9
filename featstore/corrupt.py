"""Input corruptions (additive noise, blur, punctuation removal), deterministic per (seed, sample id).

One entry point: `make_corruptor(spec, noise_bank=None)` returns a `Corruptor` whose
`apply(x, sample_id)` returns `(x_corrupted, params_drawn)`. Every random choice comes from a
numpy Generator seeded by a SHA-256 of (kind, spec.seed, sample_id), so a sample is corrupted the
same way on any worker, in any order, on any rerun; `params_drawn` is a small JSON-able dict (the
SNR, the noise clips and offset, the blur factor, how much punctuation went) for the build to
store per sample.

The protocol follows MERTools' `MER2023/main-corrupt.py` / `MER2024/main-noise.py`:

* audio-noise: an SNR is drawn uniformly from the integers lo..hi (MERTools: `np.arange(5, 11)`
  indexed by `random.randint`), noise clips are drawn with replacement from the bank and
  concatenated until strictly longer than the clip, a start is drawn uniformly in
  0..len(noise) - len(clip), the crop is scaled so that its RMS is rms(clip) / 10**(snr/20)
  (RMS over the whole clip, pauses included), added, and the mix is scaled down as a whole if it
  would clip. MERTools works on int16 and ignores the noise file's sample rate (MUSAN is 16 kHz);
  here audio is float in [-1, 1], bank clips are resampled to 16 kHz, and a clipping mix is
  scaled by 1/max|y| (speech and noise alike, so their SNR is unchanged; the factor is the drawn
  param `gain`).
* blur: one factor r per video from `params.factors`; each frame is pyrDown'ed log2(r) times then
  pyrUp'ed as many times (5-tap [1 4 6 4 1] Gaussian pyramid). Each pyrUp goes back to the size
  the matching pyrDown started from, so frames keep their (H, W); MERTools calls pyrUp without a
  size, so for odd H or W its frames grow by a pixel (identical results for even sizes).
* punctuation (MER2025/MER2026 `toolkit/utils/punctuation.py`, which wrote the `-case1|2|3`
  transcripts of MERBench's punctuation study): case1 turns the emotional marks ？！?!… into
  full stops, case2 also deletes the commas ， and ",", case3 deletes all punctuation. Here those
  are the classes [E], [E, P] and [E, P, O] (see `remove_punctuation`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import string
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featstore.catalog import CorruptionSpec
from featstore.errors import FeatstoreError, SampleError
from featstore.media import decode_audio

__all__ = [
    "Corruptor", "make_corruptor", "sample_rng", "punctuation_class", "remove_punctuation",
    "pyr_blur", "builtin_babble", "BUILTIN_BABBLE", "PUNCTUATION_CLASSES",
]

STAGE = "corrupt"
BUILTIN_BABBLE = "builtin-babble"
BABBLE_VERSION = 1                  # bump when the synthesis changes (it changes features)
PUNCTUATION_CLASSES = ("E", "P", "O")
_EXPECTED_MODALITY = {"audio-noise": "audio", "blur": "visual", "punctuation": "text"}


def sample_rng(seed: int, sample_id: str, salt: str = "") -> np.random.Generator:
    """A numpy Generator that depends only on (salt, seed, sample_id): stable across processes,
    machines and runs (SHA-256, never Python's salted hash())."""
    digest = hashlib.sha256(f"featstore.corrupt\x00{salt}\x00{int(seed)}\x00{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


class Corruptor:
    """Applies one corruption spec: `apply(x, sample_id) -> (x_corrupted, params_drawn)`."""

    def __init__(self, spec: CorruptionSpec) -> None:
        self.spec = spec
        self.precorrupted: frozenset[str] = frozenset()   # sample ids left as the release made them (MER-NOISE)

    def apply(self, x: Any, sample_id: str) -> tuple[Any, dict[str, Any]]:
        """The identity (kind `none`)."""
        return x, {}

    def feature_spec(self) -> dict[str, Any]:
        """Everything that changes corrupted inputs: the spec, plus (for noise) which bank is used."""
        return self.spec.feature_spec()

    def _rng(self, sample_id: str) -> np.random.Generator:
        return sample_rng(self.spec.seed, sample_id, self.spec.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r})"


def _spec_error(spec: CorruptionSpec, msg: str) -> FeatstoreError:
    return FeatstoreError(f"corruption {spec.name}: {msg}")


PROTECTED_KINDS = ("audio-noise", "blur")   # what MER-NOISE clips already carry


def protect(corruptor: Corruptor, index: Any, subsets: Sequence[str]) -> int:
    """Mark the samples of `subsets` (clips the release already corrupted, e.g. MER-NOISE) so that a noise or blur
    corruption leaves them as they are; returns how many."""
    if corruptor.spec.kind not in PROTECTED_KINDS:
        return 0
    ids = [sid for s in subsets if s in index.subsets for sid, m in zip(index.ids, index.subsets[s]) if m]
    corruptor.precorrupted = frozenset(ids)
    return len(corruptor.precorrupted)


def make_corruptor(spec: CorruptionSpec, noise_bank: str | Path | None = None) -> Corruptor:
    """The corruptor for `spec`. `noise_bank` (a folder of wavs laid out like MUSAN's speech
    subset) overrides `params.bank` for audio-noise; without either the built-in babble is used.
    Raises FeatstoreError for a spec whose params do not make sense."""
    kind = spec.kind
    want = _EXPECTED_MODALITY.get(kind)
    if want is not None and spec.modality != want:
        raise _spec_error(spec, f"kind {kind} corrupts {want} input, but modality is {spec.modality!r}")
    if kind == "none":
        return Corruptor(spec)
    if kind == "audio-noise":
        return NoiseCorruptor(spec, noise_bank)
    if kind == "blur":
        return BlurCorruptor(spec)
    if kind == "punctuation":
        return PunctuationCorruptor(spec)
    if kind == "variant":
        return VariantCorruptor(spec)
    raise _spec_error(spec, f"unknown kind {kind!r}")


# ================================================================================== audio noise

class _FileBank:
    """Noise clips `<root>/**/*.wav` (any rate, any channels), decoded on demand to mono float32 at
    `sample_rate` and kept in a small LRU cache (MUSAN speech is ~60 h: too big to hold)."""

    def __init__(self, root: str | Path, sample_rate: int, cache_bytes: int = 256 << 20) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FeatstoreError(f"noise bank {self.root}: not a folder")
        files = sorted((p for p in self.root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file()),
                       key=lambda p: p.relative_to(self.root).as_posix())
        if not files:
            raise FeatstoreError(f"noise bank {self.root}: no .wav files under it")
        self.files = files
        self.names = [p.relative_to(self.root).as_posix() for p in files]
        self.sample_rate = sample_rate
        self._cache_bytes = cache_bytes
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:     # picklable for Dask workers: no lock, no cache
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_held", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the bank's content (relative names and sizes), never its location."""
        h = hashlib.sha256()
        for name, path in zip(self.names, self.files):
            h.update(f"{name}\x00{path.stat().st_size}\n".encode())
        return {"bank": "files", "n_clips": len(self.files), "digest": h.hexdigest()[:16]}

    def clip(self, i: int) -> np.ndarray:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        try:                                       # PyAV: any wav flavour, resampled and downmixed
            audio = decode_audio(self.files[i], self.names[i], self.sample_rate, min_s=0.0, max_s=86400.0)
        except SampleError as exc:
            raise FeatstoreError(f"noise bank {self.root}: {self.names[i]}: {exc.cause}") from None
        audio.setflags(write=False)
        with self._lock:
            self._cache[i] = audio
            self._held += audio.nbytes
            while self._held > self._cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._held -= old.nbytes
        return audio


class _BabbleBank:
    """The built-in bank: synthetic multi-talker babble clips (see `builtin_babble`)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.clips = builtin_babble(sample_rate)
        self.names = [f"{BUILTIN_BABBLE}/{k:02d}" for k in range(len(self.clips))]

    def __reduce__(self) -> tuple[Any, ...]:        # workers rebuild it (cached per process)
        return (_BabbleBank, (self.sample_rate,))

    def __len__(self) -> int:
        return len(self.clips)

    def fingerprint(self) -> dict[str, Any]:
        return {"bank": BUILTIN_BABBLE, "version": BABBLE_VERSION}

    def clip(self, i: int) -> np.ndarray:
        return self.clips[i]


def _parse_snr(spec: CorruptionSpec) -> tuple[float, float, bool]:
    """(lo, hi, is_range) from params.snr_db: a number (fixed) or [lo, hi] (integers, inclusive)."""
    raw = spec.params.get("snr_db")
    if isinstance(raw, bool) or raw is None:
        raise _spec_error(spec, "params.snr_db is required: a number (fixed SNR) or [lo, hi] (random integer SNR)")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise _spec_error(spec, f"params.snr_db must be finite, got {raw!r}")
        return float(raw), float(raw), False
    if (isinstance(raw, (list, tuple)) and len(raw) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in raw)
            and raw[0] <= raw[1]):
        return float(raw[0]), float(raw[1]), True
    raise _spec_error(spec, f"params.snr_db must be a number or [lo, hi] with integers lo <= hi, got {raw!r}")


class NoiseCorruptor(Corruptor):
    """Adds bank noise at a drawn SNR to float mono audio (16 kHz unless params.sample_rate)."""

    def __init__(self, spec: CorruptionSpec, noise_bank: str | Path | None = None) -> None:
        super().__init__(spec)
        self.snr_lo, self.snr_hi, self.snr_range = _parse_snr(spec)
        self.sample_rate = int(spec.params.get("sample_rate", 16000))
        bank = noise_bank if noise_bank is not None else spec.params.get("bank", BUILTIN_BABBLE)
        if str(bank) == BUILTIN_BABBLE:
            self.bank: _FileBank | _BabbleBank = _BabbleBank(self.sample_rate)
        else:
            self.bank = _FileBank(bank, self.sample_rate)

    def feature_spec(self) -> dict[str, Any]:
        return {**self.spec.feature_spec(), "noise_bank": self.bank.fingerprint()}

    def apply(self, x: Any, sample_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        x = np.asarray(x)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise SampleError(sample_id, STAGE, f"expected mono float audio [T], got {x.dtype} {list(x.shape)}")
        x64 = x.astype(np.float64)
        if not np.isfinite(x64).all():
            raise SampleError(sample_id, STAGE, "audio has NaN/Inf samples")
        rms_x = math.sqrt(float(np.mean(np.square(x64)))) if x.size else 0.0
        if rms_x <= 0.0:
            raise SampleError(sample_id, STAGE, "silent audio: SNR undefined")

        rng = self._rng(sample_id)
        if self.snr_range:
            snr: float | int = int(rng.integers(int(self.snr_lo), int(self.snr_hi) + 1))
        else:
            raw = self.spec.params["snr_db"]
            snr = int(raw) if isinstance(raw, int) else float(raw)
        noise, drawn, offset = self._noise(rng, x.size)
        rms_n = math.sqrt(float(np.mean(np.square(noise))))
        if rms_n <= 0.0:
            names = ", ".join(self.bank.names[i] for i in drawn)
            raise SampleError(sample_id, STAGE, f"noise segment is silent (clips {names})")

        y = x64 + noise * (rms_x / 10.0 ** (snr / 20.0) / rms_n)
        peak = float(np.max(np.abs(y)))
        gain = 1.0
        if peak > 1.0:               # MERTools: scale the whole mix so its peak just fits
            gain = 1.0 / peak
            y *= gain
        out = np.clip(y, -1.0, 1.0).astype(np.float32)
        return out, {"snr_db": snr, "noise_clips": [self.bank.names[i] for i in drawn],
                     "noise_offset": offset, "gain": gain}

    def _noise(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[int], int]:
        """Clips drawn with replacement until their concatenation is longer than n, then a crop of
        n samples at a uniform offset (the crop is assembled without building the concatenation)."""
        drawn: list[int] = []
        clips: list[np.ndarray] = []
        total = 0
        while total <= n:
            i = int(rng.integers(len(self.bank)))
            drawn.append(i)
            clips.append(self.bank.clip(i))
            total += clips[-1].size
        offset = int(rng.integers(0, total - n + 1))
        out = np.empty(n, np.float64)
        pos, filled = 0, 0
        for c in clips:
            lo, hi = max(offset, pos), min(offset + n, pos + c.size)
            if hi > lo:
                out[filled:filled + hi - lo] = c[lo - pos:hi - pos]
                filled += hi - lo
            pos += c.size
        return out, drawn, offset


# --------------------------------------------------------------------------- built-in babble

# Formants F1..F3 (Hz) of a few vowels (adult male averages); F4 is fixed at 3500 Hz.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
                    [570, 840, 2410], [500, 1500, 2500], [660, 1720, 2410], [440, 1020, 2240]], np.float64)
_BANDWIDTHS = (80.0, 100.0, 140.0, 200.0)


def _spectral_envelope(freqs: np.ndarray, formants: np.ndarray, cutoff: float) -> np.ndarray:
    """Cascade of 2-pole formant resonators x -6 dB/octave source tilt x band-pass (no DC or
    rumble below ~80 Hz, little above `cutoff`)."""
    hp = (freqs / 80.0) ** 2
    h = hp / np.sqrt(1.0 + hp * hp) / np.sqrt(1.0 + (freqs / 400.0) ** 2)
    for f, b in zip((*formants, 3500.0), _BANDWIDTHS):
        h = h * (f * f / np.sqrt((f * f - freqs ** 2) ** 2 + (b * freqs) ** 2))
    return h / (1.0 + (freqs / cutoff) ** 8)


def _filtered(exc: np.ndarray, sr: int, envelope: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`exc` shaped by the magnitude response `envelope(freqs)` (zero-phase FFT filter), unit RMS."""
    nfft = 1 << int(exc.size - 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    y = np.fft.irfft(np.fft.rfft(exc, nfft) * envelope(freqs), nfft)[: exc.size]
    rms = math.sqrt(float(np.mean(y * y)))
    return y / rms if rms > 0 else y


def _voice(rng: np.random.Generator, n: int, sr: int, female: bool) -> np.ndarray:
    """One synthetic talker: words of 1-4 CV syllables (harmonic source with a gliding f0 through
    formant filters, optional fricative onset), separated by short and phrase-long pauses."""
    cutoff = min(4500.0, 0.45 * sr)
    out = np.zeros(n + sr)
    base = rng.uniform(185, 250) if female else rng.uniform(95, 140)
    scale = rng.uniform(1.1, 1.2) if female else rng.uniform(0.95, 1.05)
    tail = int(0.03 * sr)
    t = int(rng.uniform(0.0, 0.5) * sr)
    while t < n:
        phrase_f0 = base * rng.uniform(0.9, 1.15)
        for _ in range(int(rng.integers(1, 5))):
            if rng.random() < 0.5:                       # fricative / burst onset
                m = int(rng.uniform(0.03, 0.08) * sr)
                fc = rng.uniform(2500, 4000)
                burst = _filtered(rng.standard_normal(m + tail), sr,
                                  lambda f, fc=fc: np.exp(-0.5 * ((f - fc) / 700.0) ** 2) / (1.0 + (f / cutoff) ** 8))
                burst[:m] *= np.hanning(m)
                burst[m:] = 0
                out[t:t + burst.size] += 0.2 * burst
                t += m
            m = int(rng.uniform(0.09, 0.25) * sr)
            f0 = phrase_f0 * rng.uniform(0.9, 1.1) * np.linspace(1.0, rng.uniform(0.85, 1.1), m)
            f0 *= 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * np.arange(m) / sr)
            phase = np.cumsum(f0 / sr)
            exc = np.zeros(m + tail)
            pulses = np.flatnonzero(np.diff(np.floor(phase), prepend=0.0) > 0)
            exc[pulses] = 1.0 + 0.05 * rng.standard_normal(pulses.size)
            exc[:m] += 0.02 * rng.standard_normal(m)     # aspiration
            a = max(1, int(0.15 * m))
            d = max(1, int(0.3 * m))
            env = np.ones(m)
            env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
            env[m - d:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(d) / d)
            exc[:m] *= env
            formants = _VOWELS[rng.integers(len(_VOWELS))] * scale
            syl = _filtered(exc, sr, lambda f, fm=formants: _spectral_envelope(f, fm, cutoff))
            out[t:t + syl.size] += rng.uniform(0.5, 1.0) * syl
            t += m + int(rng.uniform(0.01, 0.05) * sr)
        t += int(rng.uniform(0.08, 0.3) * sr)
        if rng.random() < 0.15:
            t += int(rng.uniform(0.3, 0.8) * sr)
    out = out[:n]
    return out / math.sqrt(float(np.mean(out * out)))


@functools.lru_cache(maxsize=2)
def builtin_babble(sample_rate: int = 16000, n_clips: int = 8, seconds: float = 8.0,
                   talkers: int = 4) -> tuple[np.ndarray, ...]:
    """Deterministic speech-like babble, synthesised in numpy once per process (no espeak, no
    download): each clip sums `talkers` synthetic voices of both sexes, equal in level, band-
    limited to about 4.5 kHz, at RMS 0.1. Read-only float32 arrays."""
    rng = np.random.default_rng(20231108 + BABBLE_VERSION)
    n = int(seconds * sample_rate)
    clips = []
    for _ in range(n_clips):
        mix = np.zeros(n)
        for k in range(talkers):
            mix += _voice(rng, n, sample_rate, female=bool(k % 2) ^ bool(rng.integers(2)))
        mix *= 0.1 / math.sqrt(float(np.mean(mix * mix)))
        clip = mix.astype(np.float32)
        clip.setflags(write=False)
        clips.append(clip)
    return tuple(clips)


# ========================================================================================= blur

def _down_axis(a: np.ndarray, axis: int) -> np.ndarray:
    """[1 4 6 4 1] along `axis` (reflect-101 border), keeping even positions: (n + 1) // 2 out."""
    m = (a.shape[axis] + 1) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (2, 2)
    p = np.pad(a, pad, mode="reflect")

    def tap(k: int) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(k, k + 2 * m - 1, 2)
        return p[tuple(idx)]

    return tap(0) + 4 * tap(1) + 6 * tap(2) + 4 * tap(3) + tap(4)


def _up_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Zero-insertion upsampling by 2 with [1 4 6 4 1] x 2 along `axis`, cropped to `size`
    (2n or 2n - 1); reflect-101 on the left, edge-repeat on the right, as OpenCV's pyrUp."""
    n = a.shape[axis]
    p = np.concatenate([np.take(a, [1 if n > 1 else 0], axis=axis), a, np.take(a, [n - 1], axis=axis)], axis=axis)

    def tap(k: int) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(k, k + n)
        return p[tuple(idx)]

    shape = list(a.shape)
    shape[axis] = 2 * n
    out = np.empty(shape, a.dtype)
    idx: list[Any] = [slice(None)] * a.ndim
    idx[axis] = slice(0, None, 2)
    out[tuple(idx)] = tap(0) + 6 * tap(1) + tap(2)
    idx[axis] = slice(1, None, 2)
    out[tuple(idx)] = 4 * (tap(1) + tap(2))
    idx[axis] = slice(0, size)
    return out[tuple(idx)]


def _pyr_down_np(frames: np.ndarray) -> np.ndarray:
    a = _down_axis(_down_axis(frames.astype(np.int32), 2), 1)
    return ((a + 128) >> 8).astype(np.uint8)          # OpenCV's fixed-point rounding for 8-bit


def _pyr_up_np(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    a = _up_axis(_up_axis(frames.astype(np.int32), 2, width), 1, height)
    return ((a + 32) >> 6).astype(np.uint8)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def pyr_blur(frames: np.ndarray, factor: int, use_cv2: bool | None = None) -> np.ndarray:
    """Blur uint8 frames [F, H, W, C] like MERTools: pyrDown log2(factor) times, then pyrUp as
    many times, each pyrUp back to the size its pyrDown started from (so (H, W) is kept).

    Uses OpenCV (cv2.pyrDown/pyrUp) when it is importable, else an integer numpy Gaussian pyramid
    written to reproduce OpenCV bit for bit (same 5-tap kernel, borders and fixed-point rounding;
    a test checks it against a cv2 reference), so cv2 is optional and the result is the same.
    `use_cv2` forces a path (None: cv2 if available).
    """
    if int(factor) != factor or factor < 1 or int(factor) & (int(factor) - 1):
        raise ValueError(f"blur factor must be a power of two >= 1, got {factor}")
    levels = int(factor).bit_length() - 1
    if levels == 0:
        return frames
    cv2 = _cv2() if use_cv2 is not False else None
    if use_cv2 and cv2 is None:
        raise ImportError("pyr_blur(use_cv2=True) needs opencv-python-headless")
    sizes = []
    if cv2 is not None:
        out = []
        for frame in frames:
            img = np.ascontiguousarray(frame)
            sizes = []
            for _ in range(levels):
                sizes.append(img.shape[:2])
                img = cv2.pyrDown(img)
            for h, w in reversed(sizes):
                img = cv2.pyrUp(img, dstsize=(w, h))
            out.append(img.reshape(frame.shape))
        return np.stack(out) if out else frames.copy()
    a = frames
    for _ in range(levels):
        sizes.append(a.shape[1:3])
        a = _pyr_down_np(a)
    for h, w in reversed(sizes):
        a = _pyr_up_np(a, h, w)
    return a


class BlurCorruptor(Corruptor):
    """One factor r per video from params.factors; every frame blurred by `pyr_blur(frames, r)`."""

    def __init__(self, spec: CorruptionSpec) -> None:
        super().__init__(spec)
        factors = spec.params.get("factors")
        if (not isinstance(factors, (list, tuple)) or not factors
                or not all(type(r) is int and r >= 1 and r & (r - 1) == 0 for r in factors)):
            raise _spec_error(spec, "params.factors must be a non-empty list of powers of two "
                                    f"(e.g. [1, 2, 4]), got {factors!r}")
        self.factors = [int(r) for r in factors]

    def apply(self, x: Any, sample_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise SampleError(sample_id, STAGE, f"expected uint8 frames [F, H, W, C], got {x.dtype} {list(x.shape)}")
        r = self.factors[int(self._rng(sample_id).integers(len(self.factors)))]
        return pyr_blur(x, r), {"factor": r}


# ================================================================================== punctuation

# MERTools (MER2025/MER2026 toolkit/utils/punctuation.py) makes the transcripts behind MERBench's
# punctuation study: case1 turns the "emotional" marks ？！?!… into full stops (。), case2 also
# deletes commas (，,), case3 deletes every char of zhon.hanzi.punctuation + string.punctuation.
# Classes here: E = those emotional marks (plus the midline ellipsis ⋯), P = ， and , only (the
# enumeration comma 、 survives case2, so it is O), O = all other punctuation: zhon's Chinese set,
# ASCII string.punctuation, and any other Unicode P* character.
_E_CHARS = frozenset("！？!?…⋯")
_P_CHARS = frozenset("，,")
_ZHON_HANZI_PUNCTUATION = frozenset(
    "".join(map(chr, [*range(0xFF02, 0xFF0E), 0xFF0F, *range(0xFF1A, 0xFF1F), 0xFF20, *range(0xFF3B, 0xFF41),
                      *range(0xFF5B, 0xFF61), *range(0xFF62, 0xFF65), 0x3000, 0x3001, 0x3003, *range(0x3008, 0x3012),
                      *range(0x3014, 0x3020), 0x3030, 0x303E, 0x303F, 0x2013, 0x2014, 0x2018, 0x2019,
                      *range(0x201B, 0x2020), 0x2026, 0x2027, 0xFE4F, 0xFE51, 0xFE54, 0x00B7,      # non-stops
                      0xFF0E, 0xFF01, 0xFF1F, 0xFF61, 0x3002])))                                  # stops
_O_CHARS = (_ZHON_HANZI_PUNCTUATION | frozenset(string.punctuation)) - _E_CHARS - _P_CHARS
_CJK = ("\u4e00", "\u9fff")          # MERTools' is_chinese_character range


def punctuation_class(ch: str) -> str | None:
    """'E', 'P', 'O' or None (not punctuation) for one character."""
    if ch in _E_CHARS:
        return "E"
    if ch in _P_CHARS:
        return "P"
    if ch in _O_CHARS or unicodedata.category(ch).startswith("P"):
        return "O"
    return None


def _full_stop(text: str) -> str:
    return "。" if any(_CJK[0] <= c <= _CJK[1] for c in text) else "."


def remove_punctuation(text: str, classes: set[str] | frozenset[str] | tuple[str, ...],
                       e_action: str = "full-stop") -> tuple[str, dict[str, int]]:
    """Remove the punctuation classes `classes` from `text`; returns the new text and the number
    of marks removed per requested class.

    P and O marks are deleted. E marks are turned into a full stop (`e_action="full-stop"`, as
    MERTools does: 。 in text with Chinese characters, "." otherwise) or deleted
    (`e_action="delete"`); when O is removed too, the full stop would be removed with it, so E
    marks are deleted. Nothing else changes (spaces stay); an all-punctuation text becomes "".
    """
    if e_action not in ("full-stop", "delete"):
        raise ValueError(f"e_action must be 'full-stop' or 'delete', got {e_action!r}")
    wanted = set(classes)
    e_sub = _full_stop(text) if e_action == "full-stop" and "O" not in wanted else ""
    out: list[str] = []
    removed = {c: 0 for c in PUNCTUATION_CLASSES if c in wanted}
    for ch in text:
        cls = punctuation_class(ch)
        if cls is None or cls not in wanted:
            out.append(ch)
            continue
        removed[cls] += 1
        if cls == "E":
            out.append(e_sub)
    return "".join(out), removed


class PunctuationCorruptor(Corruptor):
    """Removes punctuation classes params.classes (subset of E, P, O) from a subtitle string;
    params.e_action ("full-stop", the MERTools default, or "delete") says what E marks become.
    MERTools' case1 = [E], case2 = [E, P], case3 = [E, P, O]."""

    def __init__(self, spec: CorruptionSpec) -> None:
        super().__init__(spec)
        classes = spec.params.get("classes")
        if (not isinstance(classes, (list, tuple)) or not classes
                or not all(isinstance(c, str) and c in PUNCTUATION_CLASSES for c in classes)):
            raise _spec_error(spec, f"params.classes must be a non-empty subset of E, P, O, got {classes!r}")
        self.classes = frozenset(classes)
        self.e_action = spec.params.get("e_action", "full-stop")
        if self.e_action not in ("full-stop", "delete"):
            raise _spec_error(spec, f"params.e_action must be 'full-stop' or 'delete', got {self.e_action!r}")

    def apply(self, x: Any, sample_id: str) -> tuple[str, dict[str, Any]]:
        if not isinstance(x, str):
            raise SampleError(sample_id, STAGE, f"expected a subtitle string, got {type(x).__name__}")
        text, by_class = remove_punctuation(x, self.classes, self.e_action)
        return text, {"removed": sum(by_class.values()), "removed_by_class": by_class}


# ===================================================================================== variants

class VariantCorruptor(Corruptor):
    """A user-provided input variant (translated subtitles, TTS audio): nothing to compute here."""

    def apply(self, x: Any, sample_id: str) -> tuple[Any, dict[str, Any]]:
        source = self.spec.params.get("source", "a user-provided input")
        raise FeatstoreError(
            f"corruption {self.spec.name} is an input variant ({source}): its inputs are files you provide, "
            f"read by the dataset adapter (e.g. a translated-subtitles column or a folder of TTS audio), "
            f"not computed by featstore.corrupt")
