"""Frame-level features: integer pooling under a cap, resampling for alignment, and the store's `seq` arrays."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.catalog import spec_hash
from featstore.errors import BadValuesError, MissingKeyError
from featstore.sequence import pool_factor, pool_to_cap, resample
from featstore.store import FeatureStore, KeyName, seq_rows_per_chunk

SPEC = {"model": "tiny", "seq_cap": 6}


def test_pool_to_cap_uses_the_smallest_integer_factor_and_never_truncates():
    x = np.arange(26, dtype=np.float32)[:, None].repeat(3, 1)
    assert pool_factor(26, 6) == 5 and pool_factor(6, 6) == 1 and pool_factor(7, 6) == 2
    y = pool_to_cap(x, 6)
    assert y.shape == (6, 3)
    # windows of 5 frames; the last holds frame 25 alone
    assert np.allclose(y[:, 0], [2, 7, 12, 17, 22, 25])
    # the mean over frames is kept up to the partial last window's weight
    assert np.array_equal(pool_to_cap(x[:6], 6), x[:6])


def test_resample_segments_and_repeats():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = resample(x, 4)            # boundaries 0, 2, 5, 7, 10
    assert np.allclose(y[:, 0], [0.5, 3.0, 5.5, 8.0])
    z = resample(x[:3], 6)        # nearest frame under each step
    assert np.array_equal(z[:, 0], [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError):
        resample(x[:0], 3)


def test_seq_chunks_divide_utt_chunks():
    r = seq_rows_per_chunk(256, 64, 1024, 2)
    assert 256 % r == 0 and r * 64 * 1024 * 2 <= 16 << 20 and r == 128


def make(tmp_path, n=20, cap=6):
    fs = FeatureStore(tmp_path / "s.zarr", create=True)
    fs.put_dataset("ds", [f"s{i:03d}" for i in range(n)], labels={"emotion": np.arange(n) % 3},
                   label_classes={"emotion": ["a", "b", "c"]}, subsets={"train": np.ones(n, bool)})
    fa = fs.create_key(KeyName("ds", "enc"), layers=1, dim=4, dtype="float16", spec=SPEC, spec_hash=spec_hash(SPEC),
                       rows_per_chunk=8, seq_cap=cap)
    return fs, fa


def test_store_seq_round_trip_pools_long_rows_and_reads_by_rows(tmp_path):
    fs, fa = make(tmp_path)
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((int(t), 4)).astype(np.float32) for t in rng.integers(1, 20, 20)]
    utt = np.stack([s.mean(0) for s in seqs])
    valid = np.ones(20, bool)
    valid[3] = False
    fa.write_rows(0, utt, valid=valid, seq=[None if i == 3 else s for i, s in enumerate(seqs)])
    fa = FeatureStore(tmp_path / "s.zarr").open_key(KeyName("ds", "enc"))
    assert fa.has_seq and fa.seq_cap == 6
    vals, lens = fa.read_seq()
    assert lens[3] == 0 and not fa.done_mask()[3]
    for i, s in enumerate(seqs):
        if i == 3:
            continue
        want = pool_to_cap(s, 6).astype(np.float16)
        assert lens[i] == len(want) <= 6
        assert np.array_equal(vals[i, :lens[i]], want)
        assert not vals[i, lens[i]:].any()
    rows = np.array([17, 2, 9])
    v2, l2 = fa.read_seq(rows)
    assert np.array_equal(l2, lens[rows])
    assert np.array_equal(v2[:, :vals.shape[1]], vals[rows][:, :v2.shape[1]])
    assert fa.info()["seq_shape"] == [20, 6, 4]


def test_store_seq_refusals_name_the_sample(tmp_path):
    fs, fa = make(tmp_path)
    utt = np.zeros((8, 4), np.float32)
    seqs = [np.ones((3, 4), np.float32) for _ in range(8)]
    seqs[5] = np.zeros((0, 4), np.float32)
    with pytest.raises(BadValuesError, match="s005"):
        fa.write_rows(0, utt, seq=seqs)
    seqs[5] = np.full((2, 4), np.nan, np.float32)
    with pytest.raises(BadValuesError, match="s005.*NaN"):
        fa.write_rows(0, utt, seq=seqs)
    with pytest.raises(BadValuesError, match="keeps frame-level"):
        fa.write_rows(0, utt)
    assert not fa.done_mask().any()       # nothing of a refused range is written
    plain = fs.create_key(KeyName("ds", "plain"), layers=1, dim=4, dtype="float16", spec={"x": 1},
                          spec_hash=spec_hash({"x": 1}), rows_per_chunk=8)
    with pytest.raises(MissingKeyError, match="--level frame"):
        plain.read_seq()
    with pytest.raises(BadValuesError, match="keeps no seq"):
        plain.write_rows(0, utt, seq=[np.ones((2, 4), np.float32)] * 8)


def test_synthetic_store_with_frames(tmp_path):
    from trainer.synthetic import make_store

    fs = make_store(tmp_path / "syn.zarr", n_train=30, n_test=10, seq_steps=5)
    fa = fs.open_key(KeyName("synth", "audio-a", "clean"))
    vals, lens = fa.read_seq()
    assert vals.shape[1] <= 5 and lens.min() >= 1 and (lens <= 5).all()
