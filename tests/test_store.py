"""The Zarr feature store: round trips, chunk-aligned writes, reads by ids/layers, resume, refusals, leases."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from featstore.catalog import spec_hash
from featstore.errors import BadValuesError, LeaseError, MissingKeyError, SpecMismatchError, StoreError
from featstore.store import FeatureStore, KeyName

SPEC = {"model": "tiny", "layers": "last", "pooling": "mean"}
HASH = spec_hash(SPEC)
R = 8  # rows per chunk in these tests


def make_store(tmp_path, n: int = 20, name: str = "s.zarr") -> FeatureStore:
    fs = FeatureStore(tmp_path / name, create=True)
    fs.put_dataset("ds", [f"s{i:03d}" for i in range(n)],
                   labels={"emotion": np.arange(n) % 3, "valence": np.linspace(-1, 1, n)},
                   label_classes={"emotion": ["neutral", "happy", "sad"]},
                   subsets={"train": np.arange(n) < n // 2, "test1": np.arange(n) >= n // 4})
    return fs


def make_key(fs: FeatureStore, key: KeyName = KeyName("ds", "enc"), layers: int = 1, dim: int = 4,
             dtype: str = "float16", **kw):
    return fs.create_key(key, layers=layers, dim=dim, dtype=dtype, spec=SPEC, spec_hash=HASH, rows_per_chunk=R, **kw)


def rand(n: int, layers: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, layers, dim)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("layers", [1, 3])
def test_round_trip_bit_equal_after_cast(tmp_path, dtype, layers):
    fs = make_store(tmp_path)
    fa = make_key(fs, layers=layers, dtype=dtype)
    x = rand(20, layers, 4)
    fa.write_rows(0, x)
    got = FeatureStore(tmp_path / "s.zarr").read("ds", "enc")
    assert got.dtype == np.dtype(dtype) and got.shape == (20, layers, 4)
    assert got.tobytes() == x.astype(dtype).tobytes()
    assert fa.done_mask().all()


def test_two_dim_rows_accepted_when_one_layer(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    x = rand(20, 1, 4)[:, 0, :]
    fa.write_rows(0, x)
    assert np.array_equal(fs.read("ds", "enc")[:, 0, :], x.astype(np.float16))


# ---------------------------------------------------------------------------------------------- partial writes
def test_partial_chunk_aligned_writes(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    x = rand(20, 1, 4)
    fa.write_rows(8, x[8:16])
    done = fa.done_mask()
    assert done[8:16].all() and not done[:8].any() and not done[16:].any()
    fa.write_rows(16, x[16:])  # the last chunk is partial (4 rows): fine
    fa.write_rows(0, x[:8])
    assert np.array_equal(fs.read("ds", "enc"), x.astype(np.float16))


@pytest.mark.parametrize("start,stop", [(4, 8), (0, 4), (8, 12), (3, 11), (16, 19), (16, 21)])
def test_misaligned_or_out_of_range_writes_refused(tmp_path, start, stop):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    with pytest.raises(StoreError, match="aligned|out of range"):
        fa.write_rows(start, rand(stop - start, 1, 4))
    assert not fa.done_mask().any()


# ---------------------------------------------------------------------------------------------- reads
def test_read_by_ids_arbitrary_order_and_duplicates(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs, layers=2)
    x = rand(20, 2, 4)
    fa.write_rows(0, x)
    ids = ["s019", "s000", "s010", "s000", "s007"]
    got = fs.read("ds", "enc", ids=ids)
    assert np.array_equal(got, x[[19, 0, 10, 0, 7]].astype(np.float16))
    assert fs.read("ds", "enc", ids=[]).shape == (0, 2, 4)


def test_read_unknown_ids_named(tmp_path):
    fs = make_store(tmp_path)
    make_key(fs).write_rows(0, rand(20, 1, 4))
    with pytest.raises(StoreError, match="nope1") as e:
        fs.read("ds", "enc", ids=["s001", "nope1", "nope2"])
    assert "2 unknown" in str(e.value)


def test_read_layers_negative_and_out_of_range(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs, layers=3)
    x = rand(20, 3, 4).astype(np.float16)
    fa.write_rows(0, x)
    assert np.array_equal(fs.read("ds", "enc", layers=[-1]), x[:, [2]])
    assert np.array_equal(fs.read("ds", "enc", layers=[2, 0]), x[:, [2, 0]])
    assert np.array_equal(fs.read("ds", "enc", ids=["s005", "s001"], layers=[-2]), x[[5, 1]][:, [1]])
    assert np.array_equal(fs.read("ds", "enc", layers=np.array([1])), x[:, [1]])
    for bad in ([3], [-4]):
        with pytest.raises(StoreError, match="layer .* out of range"):
            fs.read("ds", "enc", layers=bad)


def test_reading_one_layer_touches_only_that_layer(tmp_path):
    """Each layer is its own chunk column: with the other layers' chunk files gone, layer 1 still reads."""
    fs = make_store(tmp_path)
    fa = make_key(fs, layers=3)
    x = rand(20, 3, 4).astype(np.float16) + 5  # no all-zero chunk (those are not stored)
    fa.write_rows(0, x)
    utt_dir = tmp_path / "s.zarr" / "ds" / "enc" / "clean" / "utt" / "c"
    layer_files = sorted(p.relative_to(utt_dir).as_posix() for p in utt_dir.rglob("*") if p.is_file())
    assert layer_files == [f"{c}/{layer}/0" for c in range(3) for layer in range(3)]
    for c in range(3):
        for layer in (0, 2):
            (utt_dir / str(c) / str(layer) / "0").unlink()
    got = fs.read("ds", "enc", layers=[1])
    assert np.array_equal(got, x[:, [1]])
    assert not fs.read("ds", "enc", layers=[0]).any()  # the deleted layer reads as fill


# ---------------------------------------------------------------------------------------------- resume
def test_pending_chunks_and_done_mask_resume(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    assert fa.pending_chunks() == [(0, 8), (8, 16), (16, 20)]
    fa.write_rows(8, rand(8, 1, 4))
    assert fa.pending_chunks() == [(0, 8), (16, 20)]
    # a partition with failed rows: not done, but its finished record means "do not redo"
    valid = np.ones(8, bool)
    valid[[2, 5]] = False
    fa.write_rows(0, rand(8, 1, 4), valid=valid)
    assert fa.pending_chunks() == [(0, 8), (16, 20)]  # not finished yet: still pending
    fa.finish_partition(0, 8, [{"id": "s002", "stage": "decode", "message": "bad"},
                               {"id": "s005", "stage": "encode", "message": "oom"}])
    assert fa.pending_chunks() == [(16, 20)]
    assert fa.pending_chunks(retry_failed=True) == [(0, 8), (16, 20)]
    assert [e["id"] for e in fa.errors()] == ["s002", "s005"]
    assert not fa.done_mask()[[2, 5]].any()
    assert not fs.read("ds", "enc", ids=["s002"]).any()  # failed rows hold zeros
    fa.write_rows(16, rand(4, 1, 4))
    assert fa.pending_chunks() == []
    assert fa.pending_chunks(retry_failed=True) == [(0, 8)]
    # a fresh handle sees the same state (nothing is kept in memory)
    assert FeatureStore(tmp_path / "s.zarr").open_key(KeyName("ds", "enc")).pending_chunks() == []


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("case", ["shape", "int", "nan", "inf", "fp16-overflow"])
def test_bad_values_refused_naming_sample_nothing_written(tmp_path, case):
    fs = make_store(tmp_path)
    fa = make_key(fs, dim=4)
    x = rand(8, 1, 4)
    if case == "shape":
        x = rand(8, 1, 5)
        match = "shape"
    elif case == "int":
        x = np.ones((8, 1, 4), dtype=np.int32)
        match = "float"
    else:
        x[3, 0, 1] = {"nan": np.nan, "inf": np.inf, "fp16-overflow": 1e6}[case]
        match = "sample s011 .row 11.*" + ("NaN/Inf" if case in ("nan", "inf") else "beyond float16")
    with pytest.raises(BadValuesError, match=match):
        fa.write_rows(8, x)
    assert not fa.done_mask().any()
    assert not fs.chunk_files(KeyName("ds", "enc"))
    assert not fs.read("ds", "enc").any()


def test_fp16_overflow_fine_in_float32(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs, dtype="float32")
    x = rand(8, 1, 4)
    x[3, 0, 1] = 1e6
    fa.write_rows(0, x)
    assert fs.read("ds", "enc", ids=["s003"])[0, 0, 1] == np.float32(1e6)


def test_nan_in_failed_row_is_fine(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    x = rand(8, 1, 4)
    x[2] = np.nan
    valid = np.ones(8, bool)
    valid[2] = False
    fa.write_rows(0, x, valid=valid)
    assert fa.done_mask()[:8].tolist() == valid.tolist()
    assert np.isfinite(fs.read("ds", "enc")).all()


def test_spec_hash_mismatch_refused_and_overwrite(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs)
    fa.write_rows(0, rand(8, 1, 4))
    other = {**SPEC, "layers": [3]}
    with pytest.raises(SpecMismatchError, match="--overwrite"):
        fs.create_key(KeyName("ds", "enc"), layers=1, dim=4, dtype="float16", spec=other, spec_hash=spec_hash(other))
    # same spec: reopened, rows kept
    again = make_key(fs)
    assert again.done_mask()[:8].all()
    # overwrite: a fresh, empty key with the new spec
    new = fs.create_key(KeyName("ds", "enc"), layers=2, dim=4, dtype="float32", spec=other,
                        spec_hash=spec_hash(other), rows_per_chunk=R, overwrite=True)
    assert new.shape == (20, 2, 4) and not new.done_mask().any()
    assert new.attrs["spec_hash"] == spec_hash(other) and new.attrs["spec"] == other


# ---------------------------------------------------------------------------------------------- leases
def test_lease_refused_while_held_then_free(tmp_path):
    fs = make_store(tmp_path)
    key = KeyName("ds", "enc")
    with fs.lease(key, "build"):
        with pytest.raises(LeaseError, match=f"pid {__import__('os').getpid()}"):
            with FeatureStore(tmp_path / "s.zarr").lease(key, "import"):
                pass
        assert fs.lease_holder(key)["purpose"] == "build"
    assert fs.lease_holder(key) is None
    with fs.lease(key, "import"):
        pass


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lease(fs: FeatureStore, key: KeyName, pid: int) -> None:
    path = fs._lease_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2020-01-01T00:00:00Z",
                                "purpose": "build"}))


def test_stale_lease_of_dead_process_taken_over(tmp_path):
    fs = make_store(tmp_path)
    key = KeyName("ds", "enc")
    write_lease(fs, key, dead_pid())
    assert len(fs.stale_leases()) == 1 and fs.lease_holder(key) is None
    with fs.lease(key, "build"):
        assert fs.lease_holder(key)["pid"] == __import__("os").getpid()
    assert fs.stale_leases() == []


def test_live_foreign_lease_refused(tmp_path):
    fs = make_store(tmp_path)
    key = KeyName("ds", "enc")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lease(fs, key, proc.pid)
        with pytest.raises(LeaseError, match=f"pid {proc.pid}"):
            with fs.lease(key):
                pass
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- store / keys
def test_path_that_is_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a featstore store"):
        FeatureStore(tmp_path / "plain")
    with pytest.raises(StoreError, match="no store at"):
        FeatureStore(tmp_path / "missing")
    import zarr
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="not a featstore store"):
        FeatureStore(tmp_path / "other.zarr")


def test_missing_key_names_build_command(tmp_path):
    fs = make_store(tmp_path)
    with pytest.raises(MissingKeyError, match="featstore build --dataset ds --encoder hubert-large --corruption noisy"):
        fs.read("ds", "hubert-large", "noisy")
    with pytest.raises(MissingKeyError) as e:
        fs.open_key(KeyName("ds", "enc"))
    assert str(e.value) == "no features for ds/enc/clean; run: featstore build --dataset ds --encoder enc"
    with pytest.raises(MissingKeyError, match="no dataset 'other'"):
        fs.ids("other")


def test_delete_key_deletes_only_that_key(tmp_path):
    fs = make_store(tmp_path)
    keys = [KeyName("ds", "enc"), KeyName("ds", "enc", "noisy"), KeyName("ds", "enc2")]
    for i, k in enumerate(keys):
        make_key(fs, k).write_rows(0, rand(20, 1, 4, seed=i))
    fs.delete_key(keys[0])
    assert fs.keys() == sorted(keys[1:], key=str)
    assert np.array_equal(fs.read("ds", "enc", "noisy"), rand(20, 1, 4, seed=1).astype(np.float16))
    assert len(fs.ids("ds")) == 20 and set(fs.labels("ds")) == {"emotion", "valence"}
    fs.delete_key(keys[1])
    assert fs.keys() == [keys[2]]
    with pytest.raises(MissingKeyError):
        fs.delete_key(keys[1])


def test_dataset_id_order_never_changes(tmp_path):
    fs = make_store(tmp_path, n=5)
    ids = fs.ids("ds").tolist()
    with pytest.raises(StoreError, match="id order never changes"):
        fs.put_dataset("ds", list(reversed(ids)))
    with pytest.raises(StoreError, match="id order never changes"):
        fs.put_dataset("ds", ids + ["extra"])
    with pytest.raises(StoreError, match="duplicate"):
        fs.put_dataset("ds2", ["a", "a"])
    # same ids: labels/subsets may be updated
    fs.put_dataset("ds", ids, subsets={"dev": np.array([1, 0, 1, 0, 1], bool)})
    assert fs.ids("ds").tolist() == ids
    assert fs.subsets("ds")["dev"].tolist() == [True, False, True, False, True]


def test_overlapping_subsets_and_labels(tmp_path):
    fs = make_store(tmp_path, n=8)
    subs = fs.subsets("ds")
    assert (subs["train"] & subs["test1"]).sum() == 2  # rows 2, 3 are in both
    labels = fs.labels("ds")
    codes, classes = labels["emotion"]
    assert classes == ["neutral", "happy", "sad"] and codes.dtype == np.int16
    values, none = labels["valence"]
    assert none is None and values.dtype == np.float32


def test_invalid_names_refused(tmp_path):
    fs = make_store(tmp_path)
    with pytest.raises(StoreError, match="invalid encoder name"):
        make_key(fs, KeyName("ds", "labels"))
    with pytest.raises(StoreError, match="invalid dataset name"):
        fs.put_dataset("bad/name", ["a"])


def test_chunk_files_lists_written_row_chunks(tmp_path):
    fs = make_store(tmp_path)
    fa = make_key(fs, layers=2)
    fa.write_rows(8, rand(8, 2, 4) + 3)
    assert fs.chunk_files(KeyName("ds", "enc")) == {1}


def test_a_record_a_kill_left_half_written_is_not_a_finished_partition(tmp_path, monkeypatch):
    """zarr writes attributes one key at a time; a finished-partition record is written in one metadata write,
    and a record missing keys (an older half-written one) counts as unfinished."""
    import zarr.storage

    fs = make_store(tmp_path)
    fa = make_key(fs)
    writes: list[str] = []
    orig = zarr.storage.LocalStore.set

    async def spy(self, key, value, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        writes.append(key)
        return await orig(self, key, value, *a, **k)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", spy)
    fa.finish_partition(0, 8, [], drawn={"s000": {"snr": 5}})
    assert [w for w in writes if w.endswith("p0000000000/zarr.json")] == [w for w in writes if "p0000000000" in w]
    assert len([w for w in writes if "p0000000000" in w]) == 1
    monkeypatch.undo()
    half = fa.group["errors"].create_group("p0000000008")
    half.attrs["start"] = 8                               # killed before 'stop', 'records', 'finished'
    assert set(fa.partition_records()) == {0} and fa.unfinished_records() == ["p0000000008"]
    assert (8, 16) in fa.pending_chunks()
