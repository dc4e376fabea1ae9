"""HDF5 export/import: bit-exact round trip, refusals, overwrite, resume after an interruption."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from featstore.catalog import spec_hash
from featstore.errors import LeaseError, StoreError
from featstore.exchange import export_hdf5, import_hdf5
from featstore.store import FeatureArray, FeatureStore, KeyName
from featstore.verify import verify

N, R = 21, 8
K16 = KeyName("ds", "enc16")
K32 = KeyName("ds", "enc32", "noisy")


def spec_of(name: str) -> dict:
    return {"encoder": {"model": name, "layers": [1, 2, 3], "pooling": "mean", "input": {"sample_rate": 16000}},
            "corruption": {"kind": "none", "seed": 0, "params": {}}}


def make_source(tmp_path) -> FeatureStore:
    fs = FeatureStore(tmp_path / "src.zarr", create=True)
    ids = [f"sample_{i:03d}_é" for i in range(N)]
    fs.put_dataset("ds", ids, labels={"emotion": np.arange(N) % 4 - 1, "valence": np.linspace(-2, 2, N)},
                   label_classes={"emotion": ["neutral", "angry", "happy"]},
                   subsets={"train": np.arange(N) % 2 == 0, "test1": np.arange(N) > 5},
                   groups=np.array([f"Ses0{i % 3}" for i in range(N)]),
                   attrs={"adapter": "folder", "source_root": "/data/x", "label_space": {"emotions": ["a", "b"]}})
    rng = np.random.default_rng(0)
    # fp16, L=1, a failed partition and an unfinished chunk
    s16 = spec_of("a")
    fa = fs.create_key(K16, layers=1, dim=5, dtype="float16", spec=s16, spec_hash=spec_hash(s16), rows_per_chunk=R,
                       attrs={"provenance": {"weights": {"sha": "abc"}, "packages": {"torch": "2.13.0"}}})
    valid = np.ones(R, bool)
    valid[3] = False
    fa.write_rows(0, rng.standard_normal((R, 1, 5)), valid=valid)
    fa.finish_partition(0, R, [{"id": ids[3], "stage": "decode", "message": "corrupt stream"}])
    fa.write_rows(R, rng.standard_normal((R, 1, 5)))
    fa.finish_partition(R, 2 * R, [])
    # fp32, L=3, complete
    s32 = spec_of("b")
    fb = fs.create_key(K32, layers=3, dim=6, dtype="float32", spec=s32, spec_hash=spec_hash(s32), rows_per_chunk=R)
    for s in range(0, N, R):
        e = min(s + R, N)
        fb.write_rows(s, rng.standard_normal((e - s, 3, 6)) * 1e3)
        fb.finish_partition(s, e, [])
    fb.group.attrs.update({"provenance": {"nested": {"deep": [1, 2.5, None, "x"]}, "nan": "no"}, "rows_done": N})
    return fs


def zarr_snapshot(fs: FeatureStore) -> dict:
    """Everything the round trip must keep, as comparable python values."""
    out: dict = {"keys": [str(k) for k in fs.keys()]}
    for ds in fs.datasets():
        out[ds] = {"ids": fs.ids(ds).tolist(), "attrs": fs.dataset_attrs(ds), "groups": fs.groups(ds).tolist(),
                   "subsets": {k: v.tolist() for k, v in fs.subsets(ds).items()},
                   "labels": {k: (v.dtype.str, v.tobytes(), c) for k, (v, c) in fs.labels(ds).items()},
                   "label_attrs": {k: dict(a.attrs) for k, a in fs.root[ds]["labels"].arrays()}}
    for k in fs.keys():
        fa = fs.open_key(k)
        out[str(k)] = {"dtype": str(fa.utt.dtype), "shape": fa.shape, "bytes": fa.read().tobytes(),
                       "done": fa.done_mask().tolist(), "chunks": fa.utt.chunks, "errors": fa.errors(),
                       "partitions": fa.partition_records(), "attrs": json.dumps(fa.attrs, sort_keys=True)}
    return out


def test_round_trip_bit_exact(tmp_path):
    src = make_source(tmp_path)
    summary = export_hdf5(FeatureStore(src.path, read_only=True), tmp_path / "x.h5")
    assert summary["keys"] == [str(K16), str(K32)] and summary["datasets"] == ["ds"]
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    got = import_hdf5(dst, tmp_path / "x.h5")
    assert got["datasets_created"] == ["ds"] and got["keys"] == [str(K16), str(K32)]
    a, b = zarr_snapshot(src), zarr_snapshot(FeatureStore(tmp_path / "dst.zarr"))
    assert a.keys() == b.keys()
    for part in a:
        assert a[part] == b[part], part
    fa = dst.open_key(K16)
    assert fa.attrs["spec_hash"] == spec_hash(fa.attrs["spec"]) and "import_state" not in fa.attrs
    assert fa.pending_chunks() == [(16, 21)]  # resume semantics survive: the unfinished chunk is still to do
    assert [f for f in verify(dst) if f.severity == "error"] == []


def test_hdf5_file_is_readable_without_featstore(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["ds/ids"].asstr()[0] == "sample_000_é"
        assert f["ds/enc32/noisy/utt"].dtype == np.float32 and f["ds/enc32/noisy/utt"].shape == (N, 3, 6)
        assert f["ds/enc16/clean/utt"].chunks == (R, 1, 5)
        assert list(f["ds/labels/emotion"].attrs["classes"]) == ["neutral", "angry", "happy"]
        rec = json.loads(f["ds/enc16/clean/errors"].attrs["p0000000000"])
        assert rec["records"][0]["stage"] == "decode"
        assert json.loads(f["ds/enc32/noisy"].attrs["featstore_attrs"])["provenance"]["nested"]["deep"][3] == "x"


def test_export_selected_keys(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "one.h5", keys=[K32])
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    import_hdf5(dst, tmp_path / "one.h5")
    assert dst.keys() == [K32]
    assert np.array_equal(dst.read("ds", "enc32", "noisy"), src.read("ds", "enc32", "noisy"))
    export_hdf5(src, tmp_path / "none.h5", datasets=["ds"], keys=[])
    with h5py.File(tmp_path / "none.h5", "r") as f:
        assert "ids" in f["ds"] and "enc16" not in f["ds"]


def test_import_twice_refused_then_overwrite(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    import_hdf5(dst, tmp_path / "x.h5")
    before = zarr_snapshot(dst)
    with pytest.raises(StoreError, match=r"2 key\(s\) already in .*--overwrite"):
        import_hdf5(dst, tmp_path / "x.h5")
    assert zarr_snapshot(dst) == before
    # damage one key, then overwrite restores it exactly
    fa = dst.open_key(K32)
    fa.write_rows(0, np.zeros((R, 3, 6), np.float32))
    fa.group.attrs["spec_hash"] = "changed"
    got = import_hdf5(dst, tmp_path / "x.h5", overwrite=True)
    assert got["datasets_existing"] == ["ds"]
    assert zarr_snapshot(dst) == before


def test_import_adds_keys_to_dataset_with_same_ids(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    dst.put_dataset("ds", src.ids("ds").tolist(), subsets={"mine": np.ones(N, bool)})
    got = import_hdf5(dst, tmp_path / "x.h5")
    assert got["datasets_existing"] == ["ds"] and dst.keys() == [K16, K32]
    assert set(dst.subsets("ds")) == {"mine", "train", "test1"}  # missing subsets added, own ones kept
    assert np.array_equal(dst.read("ds", "enc16"), src.read("ds", "enc16"))


def test_import_into_dataset_with_other_ids_refused(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    dst.put_dataset("ds", list(reversed(src.ids("ds").tolist())))
    with pytest.raises(StoreError, match="dataset ds exists .* with other ids .*first difference at row 0"):
        import_hdf5(dst, tmp_path / "x.h5")
    assert dst.keys() == []


@pytest.mark.parametrize("kind", ["text", "hdf5", "missing"])
def test_not_an_export_one_line_error(tmp_path, kind):
    path = tmp_path / "f.h5"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    with pytest.raises(StoreError) as e:
        import_hdf5(dst, path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert {"text": "not a featstore HDF5 export", "hdf5": "not a featstore export", "missing": "no such file"}[kind] in msg


def test_import_holds_the_lease(tmp_path):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    with dst.lease(K16, "build"):
        with pytest.raises(LeaseError):
            import_hdf5(dst, tmp_path / "x.h5")


def test_interrupted_import_is_resumed(tmp_path, monkeypatch):
    src = make_source(tmp_path)
    export_hdf5(src, tmp_path / "x.h5")
    dst = FeatureStore(tmp_path / "dst.zarr", create=True)
    real = FeatureArray.chunk_ranges

    def interrupted(self):
        for i, rng in enumerate(real(self)):
            if i == 1:
                raise KeyboardInterrupt
            yield rng

    monkeypatch.setattr(FeatureArray, "chunk_ranges", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_hdf5(dst, tmp_path / "x.h5")
    monkeypatch.setattr(FeatureArray, "chunk_ranges", real)
    fa = dst.open_key(K16)
    assert fa.attrs["import_state"] == "in-progress"
    assert dst.lease_holder(K16) is None  # the lease was released
    assert any("import was interrupted" in f.message for f in verify(dst))
    got = import_hdf5(dst, tmp_path / "x.h5")  # no --overwrite needed to finish it
    assert got["resumed"] == [str(K16)]
    assert zarr_snapshot(dst) == zarr_snapshot(src)
