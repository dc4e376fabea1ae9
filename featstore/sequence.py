"""Frame/token-level features: fit a sequence under a cap by integer average pooling, and resample to N steps.

Two operations, both over the *real* frames of one sample (padding never enters a mean):

- `pool_to_cap(x, cap)`: a sequence longer than `cap` is average-pooled by the smallest integer factor
  f = ceil(T / cap) that makes it fit (windows of f consecutive frames; the last window averages the frames it
  has). Never truncated. This is what the store keeps in a key's `seq` array (MERTools' `feat_scale`
  compression does the same, but pads the sequence with zeros at the front first, so its first window mixes in
  zeros; here it does not).
- `resample(x, steps)`: exactly `steps` rows, for aligned sequence models (every modality of a sample on the
  same time axis, as MERTools' `frm_align` maps every modality to the text length). Longer inputs: the mean of
  `steps` contiguous, near-equal segments (boundaries floor(i * T / steps)); shorter inputs: each step takes
  the frame under it (nearest-neighbour repetition; MERTools pads zeros at the front instead).
"""

from __future__ import annotations

import math

import numpy as np


def pool_factor(length: int, cap: int) -> int:
    """The integer pooling factor that fits `length` frames under `cap` (1 when it already fits)."""
    if cap < 1:
        raise ValueError(f"sequence cap must be >= 1, got {cap}")
    return max(1, math.ceil(int(length) / int(cap)))


def pool_to_cap(x: np.ndarray, cap: int) -> np.ndarray:
    """[T, D] -> [ceil(T / f), D] with f = pool_factor(T, cap): means of f consecutive frames (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"a sequence must be [T, D], got shape {x.shape}")
    t = x.shape[0]
    f = pool_factor(t, cap)
    if f == 1:
        return x
    n_out = math.ceil(t / f)
    starts = np.arange(n_out) * f
    sums = np.add.reduceat(x, starts, axis=0)
    counts = np.minimum(starts + f, t) - starts
    return sums / counts[:, None].astype(np.float32)


def resample(x: np.ndarray, steps: int) -> np.ndarray:
    """[T, D] -> [steps, D]: segment means when T >= steps, nearest-frame repetition when T < steps."""
    x = np.asarray(x, dtype=np.float32)
    t = x.shape[0]
    if steps < 1 or t < 1:
        raise ValueError(f"cannot resample a sequence of {t} frames to {steps} steps")
    if t == steps:
        return x
    if t < steps:
        return x[(np.arange(steps) * t) // steps]
    bounds = (np.arange(steps + 1) * t) // steps
    sums = np.add.reduceat(x, bounds[:-1], axis=0)
    return sums / np.diff(bounds)[:, None].astype(np.float32)


__all__ = ["pool_factor", "pool_to_cap", "resample"]
