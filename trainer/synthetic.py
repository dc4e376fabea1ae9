"""Synthetic MER-shaped feature stores with a planted signal (tests and benchmarks; no media involved).

Each sample gets a class (imbalanced, MER2024-like proportions), a valence tied to its class, and one vector per
encoder: Gaussian noise plus a class-dependent direction of strength `signal` in that encoder's space (so
every modality carries some of the signal and fusion helps). Encoder names are not in the catalog; the store
keys exist, which is all the trainer needs ("imported" features).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featstore.catalog import spec_hash
from featstore.store import FeatureStore, KeyName

EMOTIONS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
MER2024_PROPORTIONS = (0.27, 0.21, 0.25, 0.15, 0.06, 0.06)   # imbalanced, roughly MER2024's Train&Val
MER2024_DIMS = {"audio-1024": ("audio", 1024), "text-5120": ("text", 5120), "video-768": ("visual", 768)}
CLASS_VALENCE = (0.0, -2.0, 2.0, -1.5, -1.0, 0.5)


def make_store(path: str | Path, *, n_train: int = 300, n_test: int = 100, dims: dict[str, tuple[str, int]] | None = None,
               signal: float | Sequence[float] = 1.0, proportions: Sequence[float] = MER2024_PROPORTIONS,
               dataset: str = "synth", seed: int = 0, valence: bool = True, dtype: str = "float16",
               corruptions: Sequence[str] = ("clean",), groups: int = 0, official: bool = False,
               test_labels: bool = True, seq_steps: int | None = None) -> FeatureStore:
    """Build (or extend) a store with one dataset of `n_train` training and `n_test` test samples.

    dims: encoder name -> (modality, dim). signal: planted strength (one per encoder or one for all).
    Subsets: train (+ val when `official`, carved out of the train rows) and test1. groups > 0 adds that
    many groups (sessions) over all rows. corruptions other than 'clean' get the same features plus noise.
    test_labels=False leaves test1 unlabelled (predict-only). seq_steps: also store frame-level features (`seq`,
    cap `seq_steps`): each sample gets 2..2*seq_steps frames (longer ones are pooled by the store), the planted
    signal on a random run of frames, and `utt` is the mean of its frames.
    """
    dims = dims or {"audio-a": ("audio", 24), "text-t": ("text", 32), "video-v": ("visual", 16)}
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    p = np.asarray(proportions, np.float64)
    p = p / p.sum()
    y = rng.choice(len(p), size=n, p=p).astype(np.int16)
    val = (np.asarray(CLASS_VALENCE, np.float32)[y % len(CLASS_VALENCE)]
           + rng.normal(0, 0.5, n).astype(np.float32))
    ids = [f"s{i:05d}" for i in range(n)]
    train = np.arange(n) < n_train
    subsets = {"train": train.copy(), "test1": ~train}
    if official:
        n_val = max(1, n_train // 5)
        subsets["val"] = np.zeros(n, bool)
        subsets["val"][n_train - n_val:n_train] = True
        subsets["train"][n_train - n_val:n_train] = False
    y_all = y.astype(np.int64)
    if not test_labels:
        y = y.copy()
        y[~train] = -1
        val = val.copy()
        val[~train] = np.nan
    labels: dict[str, np.ndarray] = {"emotion": y}
    if valence:
        labels["valence"] = val
    fs = FeatureStore(path, create=True)
    grp = np.array([f"g{i % groups}" for i in range(n)]) if groups else None
    fs.put_dataset(dataset, ids, labels=labels, label_classes={"emotion": list(EMOTIONS[:len(p)])},
                   subsets=subsets, groups=grp, attrs={"adapter": "synthetic"})
    sig = list(signal) if isinstance(signal, (list, tuple)) else [float(signal)] * len(dims)
    for (enc, (modality, d)), s in zip(dims.items(), sig):
        erng = np.random.default_rng([seed, d, zlib.crc32(enc.encode())])   # each encoder its own vectors
        centres = erng.normal(0, 1, (len(p), d)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) / np.sqrt(d) * 1.0
        x = erng.normal(0, 1, (n, d)).astype(np.float32) + s * centres[y_all] / np.sqrt(d) * 4.0
        frames = _frames(erng, x, seq_steps) if seq_steps else None
        if frames is not None:
            x = np.stack([f.mean(0) for f in frames])
        for cor in corruptions:
            extra = (lambda a: a) if cor == "clean" else (lambda a: a + erng.normal(0, 1.0, a.shape).astype(np.float32))
            fr = None if frames is None else [extra(f) for f in frames]
            xc = x if cor == "clean" else (np.stack([f.mean(0) for f in fr]) if fr is not None else extra(x))
            key = KeyName(dataset, enc, cor)
            spec = {"synthetic": enc, "dim": d, "modality": modality, "corruption": cor, "seed": seed,
                    **({"seq_cap": seq_steps} if seq_steps else {})}
            fa = fs.create_key(key, layers=1, dim=d, dtype=dtype, spec=spec, spec_hash=spec_hash(spec),
                               overwrite=True, seq_cap=seq_steps)
            fa.write_rows(0, xc[:, None, :], seq=fr)
    return fs


def _frames(rng: np.random.Generator, x: np.ndarray, steps: int) -> list[np.ndarray]:
    """Per sample 2..2*steps frames whose planted part (x minus its noise-free mean) sits on a random run of
    frames, scaled so that the mean over frames equals x's signal; frame noise on top."""
    out = []
    for row in x:
        t = int(rng.integers(2, 2 * steps + 1))
        run = int(rng.integers(1, t + 1))
        first = int(rng.integers(0, t - run + 1))
        f = rng.normal(0, 1.0, (t, len(row))).astype(np.float32)
        f[first:first + run] += row * (t / run) ** 0.5
        out.append(f)
    return out
