"""`verify`: every finding, and repair deleting exactly the leftovers of interrupted writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featstore.catalog import spec_hash
from featstore.store import FeatureStore, KeyName
from featstore.verify import Finding, verify

N, R = 20, 8
KEY = KeyName("ds", "enc")
SPEC = {"model": "tiny", "layers": "last"}


def make_store(tmp_path, dtype: str = "float16") -> FeatureStore:
    fs = FeatureStore(tmp_path / "s.zarr", create=True)
    fs.put_dataset("ds", [f"s{i:02d}" for i in range(N)], labels={"emotion": np.arange(N) % 3},
                   label_classes={"emotion": ["a", "b", "c"]}, subsets={"train": np.arange(N) < 10})
    fa = fs.create_key(KEY, layers=2, dim=4, dtype=dtype, spec=SPEC, spec_hash=spec_hash(SPEC), rows_per_chunk=R,
                       attrs={"provenance": {"weights": "x"}})
    for s in range(0, N, R):
        e = min(s + R, N)
        fa.write_rows(s, np.random.default_rng(s).standard_normal((e - s, 2, 4)) + 3)
        fa.finish_partition(s, e, [])
    return fs


def files(fs: FeatureStore) -> set[str]:
    root = Path(fs.path)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def only(findings: list[Finding], severity: str | None = None) -> list[Finding]:
    return [f for f in findings if severity is None or f.severity == severity]


def test_consistent_store_has_no_findings(tmp_path):
    fs = make_store(tmp_path)
    assert verify(fs) == []
    assert verify(fs, [KEY]) == []


def test_unknown_key_named(tmp_path):
    fs = make_store(tmp_path)
    with pytest.raises(KeyError, match="featstore build --dataset ds --encoder nope"):
        verify(fs, [KeyName("ds", "nope")])


def test_utt_rows_differ_from_ids(tmp_path):
    fs = make_store(tmp_path)
    g = fs.root["ds"]["enc"]["clean"]
    g.create_array("utt", shape=(N - 1, 2, 4), dtype="float16", chunks=(R, 1, 4), overwrite=True)
    errors = only(verify(fs), "error")
    assert errors[0].key == "ds/enc/clean" and "utt has 19 rows but dataset ds has 20 ids" in errors[0].message
    assert "done has shape (20,); expected (19,)" in errors[1].message


def test_done_shape_and_chunking(tmp_path):
    fs = make_store(tmp_path)
    g = fs.root["ds"]["enc"]["clean"]
    g.create_array("done", shape=(N + 1,), dtype="bool", chunks=(R,), overwrite=True)
    assert "done has shape (21,)" in only(verify(fs), "error")[0].message
    g.create_array("done", shape=(N,), dtype="bool", chunks=(4,), overwrite=True)
    assert "done is chunked by 4 rows, utt by 8" in only(verify(fs), "error")[0].message


def test_non_float_dtype(tmp_path):
    fs = FeatureStore(tmp_path / "s.zarr", create=True)
    fs.put_dataset("ds", [f"s{i:02d}" for i in range(N)])
    fs.create_key(KEY, layers=1, dim=4, dtype="int16", spec=SPEC, spec_hash=spec_hash(SPEC), rows_per_chunk=R,
                  attrs={"provenance": {}})
    errors = only(verify(fs), "error")
    assert any("dtype int16; expected float16 or float32" in f.message for f in errors)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_in_done_rows_named(tmp_path, bad):
    fs = make_store(tmp_path, dtype="float32")
    fa = fs.open_key(KEY)
    block = fa.utt[8:16]
    block[5, 1, 2] = bad  # row 13, layer 1
    block[7, 0, 0] = bad  # row 15, layer 0
    fa.utt[8:16] = block
    (f,) = only(verify(fs), "error")
    assert f.message.startswith("2 done row(s) hold NaN/Inf, e.g. sample s13, s15")
    fa.done[8:16] = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)  # not-done rows may hold anything
    assert only(verify(fs), "error") == []


def test_missing_provenance(tmp_path):
    fs = make_store(tmp_path)
    g = fs.open_key(KEY).group
    attrs = dict(g.attrs)
    g.attrs.put({k: v for k, v in attrs.items() if k not in ("spec_hash", "provenance")})
    found = verify(fs)
    assert "spec_hash missing" in only(found, "error")[0].message
    assert "no provenance attribute" in only(found, "warning")[0].message


def test_spec_hash_inconsistent(tmp_path):
    fs = make_store(tmp_path)
    fs.open_key(KEY).group.attrs["spec"] = {**SPEC, "layers": "all"}
    (f,) = only(verify(fs), "error")
    assert f"spec_hash {spec_hash(SPEC)} does not match the stored spec" in f.message


def test_incomplete_rows_and_failed_rows(tmp_path):
    fs = make_store(tmp_path)
    fa = fs.open_key(KEY)
    fa.done[16:20] = False  # last chunk not written
    valid = np.ones(8, bool)
    valid[2] = False
    fa.write_rows(0, np.ones((8, 2, 4)), valid=valid)
    fa.finish_partition(0, 8, [{"id": "s02", "stage": "decode", "message": "broken"}])
    found = verify(fs)
    (w,) = only(found, "warning")
    assert w.message.startswith("incomplete: 4 rows pending; rerun the build") and "s16" in w.message
    (i,) = only(found, "info")
    assert "1 sample(s) failed" in i.message and "s02: decode: broken" in i.message


def test_leftover_chunks_reported_and_repaired(tmp_path):
    fs = make_store(tmp_path)
    fa = fs.open_key(KEY)
    # an interrupted partition: rows written, done never marked, no finished record
    fs.root["ds"]["enc"]["clean"]["errors"].__delitem__("p0000000008")
    fa.done[8:16] = False
    # a finished partition whose rows all failed keeps its chunk files: not a leftover
    fa.done[16:20] = False
    fa.finish_partition(16, 20, [{"id": f"s{i}", "stage": "encode", "message": "x"} for i in range(16, 20)])
    before = files(fs)
    found = verify(fs)
    (w,) = [f for f in only(found, "warning") if "chunk file" in f.message]
    assert "1 chunk file(s) of an interrupted write" in w.message and "[8, 16)" in w.message and "--repair" in w.message
    assert files(fs) == before  # without repair nothing is deleted
    found = verify(fs, repair=True)
    assert any(f.message == "repaired: deleted 1 leftover chunk file(s)" for f in found)
    gone = before - files(fs)
    assert gone == {"ds/enc/clean/utt/c/1/0/0", "ds/enc/clean/utt/c/1/1/0"}
    assert fs.chunk_files(KEY) == {0, 2}
    assert not [f for f in verify(fs) if "chunk file" in f.message]
    assert np.array_equal(fa.read(np.arange(8)), fa.read()[:8])  # other rows intact
    assert fa.read()[:8].any() and fa.read()[16:].any()


def write_lease(fs: FeatureStore, key: KeyName, pid: int) -> Path:
    path = fs._lease_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2020-01-01T00:00:00Z",
                                "purpose": "build"}))
    return path


def test_stale_lease_reported_and_repaired(tmp_path):
    fs = make_store(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    path = write_lease(fs, KeyName("ds", "other"), proc.pid)
    (w,) = verify(fs)
    assert w.severity == "warning" and w.key == "ds/other/clean" and "stale lease" in w.message
    assert path.exists()
    assert verify(fs, [KEY]) == []  # a lease of another key is not this key's business
    verify(fs, repair=True)
    assert not path.exists()
    assert verify(fs) == []


def test_live_lease_leftovers_not_touched(tmp_path):
    fs = make_store(tmp_path)
    fa = fs.open_key(KEY)
    fa.done[8:16] = False
    fs.root["ds"]["enc"]["clean"]["errors"].__delitem__("p0000000008")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path = write_lease(fs, KEY, proc.pid)
        before = files(fs)
        found = verify(fs, repair=True)
        assert any(f.severity == "info" and "holds the lease" in f.message for f in found)
        assert files(fs) == before and path.exists()
    finally:
        proc.kill()
        proc.wait()


def test_import_in_progress(tmp_path):
    fs = make_store(tmp_path)
    fs.open_key(KEY).group.attrs.update({"import_state": "in-progress", "import_source": "x.h5"})
    (w,) = only(verify(fs), "warning")
    assert "import was interrupted" in w.message and "featstore import hdf5 x.h5" in w.message


def test_dataset_level_lengths(tmp_path):
    fs = make_store(tmp_path)
    g = fs.root["ds"]
    g["labels"].create_array("short", shape=(N - 2,), dtype="float32", chunks=(N,))
    g["subsets"].create_array("long", shape=(N + 1,), dtype="bool", chunks=(N,))
    codes = g["labels"]["emotion"]
    codes[0] = 7
    messages = [f.message for f in only(verify(fs), "error") if f.key == "ds"]
    assert "label 'short' has 18 rows for 20 ids" in messages
    assert "subset 'long' has 21 rows for 20 ids" in messages
    assert any("label 'emotion' has 1 code(s) outside -1..2, e.g. sample s00" in m for m in messages)
