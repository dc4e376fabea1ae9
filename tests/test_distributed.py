"""featstore.distributed: builds on a Dask cluster equal in-process builds; worker crashes, kill -9 and bad input.

Worker faults are injected with $FEATSTORE_TEST_FAULTS (see featstore.build._test_fault), set only in the
environment of the worker processes (or of a `featstore build` subprocess that runs its own cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli import featstore_app
from featstore.build import BuildOptions, build
from featstore.distributed import compare_environments, connect, worker_cache_info
from featstore.errors import FeatstoreError
from featstore.store import FeatureStore, KeyName
from featstore.verify import verify

OPTS = BuildOptions(rows_per_chunk=4, batch_size=4)     # 12 clips -> 3 partitions
KEY = KeyName("demo", "egemaps")
REPO = Path(__file__).resolve().parents[1]


def _featstore_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "featstore"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from cli import featstore_app; featstore_app()"]


def _build_cmd(corpus: Path, store: Path, *extra: str, encoder: str = "egemaps") -> list[str]:
    return [*_featstore_cmd(), "build", "--dataset", "demo", "--encoder", encoder, "--root", str(corpus),
            "--store", str(store), "--rows-per-chunk", "4", *extra]


def _key_files(store: Path, key: KeyName = KEY) -> dict[str, bytes]:
    """Chunk files of utt and done (relative path -> bytes), without temporary files of interrupted writes."""
    base = store / key.dataset / key.encoder / key.corruption
    out = {}
    for arr in ("utt", "done"):
        for p in sorted((base / arr).rglob("*")):
            if p.is_file() and not p.name.endswith(".partial"):
                out[str(p.relative_to(base))] = p.read_bytes()
    return out


def _assert_same_values(a: FeatureStore, b: FeatureStore, key: KeyName = KEY) -> None:
    fa, fb = a.open_key(key), b.open_key(key)
    np.testing.assert_array_equal(fa.utt[:], fb.utt[:])
    np.testing.assert_array_equal(fa.done_mask(), fb.done_mask())
    np.testing.assert_array_equal(a.ids(key.dataset), b.ids(key.dataset))
    assert fa.errors() == fb.errors()
    assert fa.attrs["spec_hash"] == fb.attrs["spec_hash"] and fa.attrs["spec"] == fb.attrs["spec"]
    pa, pb = dict(fa.attrs["provenance"]), dict(fb.attrs["provenance"])
    for volatile in ("finished", "host"):   # provenance may differ only in timestamps and host names
        pa.pop(volatile), pb.pop(volatile)
    assert pa == pb


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_corpus: Path) -> FeatureStore:
    """The single-process build every cluster build is compared with."""
    ref = FeatureStore(tmp_path_factory.mktemp("ref") / "ref.zarr", create=True)
    assert build(ref, "demo", "egemaps", root=demo_corpus, options=OPTS).ok
    return ref


@pytest.fixture(scope="module")
def client():  # noqa: ANN201 - a distributed.Client
    """A LocalCluster of 2 single-threaded worker processes, shared by the tests that kill nothing."""
    with connect(workers=2) as c:
        yield c


def test_two_workers_build_the_same_store_as_one_process(client, reference: FeatureStore, demo_corpus: Path,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    before = client.run(worker_cache_info)
    events: list[tuple[str, object]] = []
    store = FeatureStore(tmp_path / "d.zarr", create=True)
    report = build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=client,
                   progress=lambda e, p: events.append((e, p)))
    assert report.ok and report.written == 12 and report.partitions == 3 and report.workers == 2
    _assert_same_values(reference, store)
    assert store.dataset_attrs("demo")["source_root"] == str(demo_corpus.resolve())
    # each worker loaded the encoder at most once, and kept it; threads are capped per worker
    after = client.run(worker_cache_info)
    assert all(after[w]["loads"] - before[w]["loads"] <= 1 for w in after)
    assert client.run(lambda: os.environ.get("OMP_NUM_THREADS")) == {w: "1" for w in after}
    assert ("workers", 2) in events and sum(p[0] for e, p in events if e == "samples") == 12
    # a rerun on the cluster does nothing
    again = build(store, "demo", "egemaps", options=OPTS, client=client)
    assert again.written == 0 and again.already_done == 12 and again.partitions == 0


def test_sample_that_kills_its_worker_is_found_recorded_and_skipped(reference: FeatureStore, demo_corpus: Path,
                                                                     tmp_path: Path) -> None:
    culprit = str(reference.ids("demo")[5])
    store = FeatureStore(tmp_path / "c.zarr", create=True)
    events: list[tuple[str, object]] = []
    with connect(workers=2, env={"FEATSTORE_TEST_FAULTS": json.dumps({"crash": [culprit]})}) as c:
        report = build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=c,
                       progress=lambda e, p: events.append((e, p)))
        c.wait_for_workers(2, timeout=30)            # the nannies restarted the dead workers
    assert [(r["id"], r["stage"]) for r in report.failed] == [(culprit, "crash")]
    assert report.written == 11 and not report.failed_partitions
    assert ("crash", {"id": culprit, "start": 4, "stop": 8}) in events
    fa, ref = store.open_key(KEY), reference.open_key(KEY)
    done = fa.done_mask()
    assert done.sum() == 11 and not done[5]
    np.testing.assert_array_equal(fa.utt[:][done], ref.utt[:][done])   # every other sample written, same values
    # the crash is recorded like any failure: a rerun does not retry it
    assert fa.errors()[0]["message"].startswith("the worker process died")


def test_worker_killed_mid_partition_is_retried_elsewhere(reference: FeatureStore, demo_corpus: Path,
                                                          tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "k.zarr", create=True)
    killed: list[int] = []
    events: list[tuple[str, object]] = []
    with connect(workers=2, env={"FEATSTORE_TEST_FAULTS": json.dumps({"delay": 0.25})}) as c:
        pids = c.run(os.getpid)

        def killer() -> None:       # SIGKILL the first worker seen running a partition
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                for addr, keys in c.processing().items():
                    if any(str(k).startswith("featstore-part-") for k in keys) and addr in pids:
                        time.sleep(0.3)             # mid-partition: some samples decoded
                        os.kill(pids[addr], signal.SIGKILL)
                        killed.append(pids[addr])
                        return
                time.sleep(0.05)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        report = build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=c,
                       progress=lambda e, p: events.append((e, p)))
        t.join(5)
    assert killed, "no worker was killed"
    assert report.ok and report.written == 12
    assert any(e == "warning" and "worker died" in str(p) for e, p in events)
    _assert_same_values(reference, store)


def _records(store: Path) -> int:
    return len(list((store / "demo/egemaps/clean/errors").glob("p*/zarr.json")))


def _run_and_kill(cmd: list[str], env: dict[str, str], until, whole_group: bool) -> int:  # noqa: ANN001
    """Start a `featstore build` in its own session, SIGKILL it when until() holds; wait for its workers to go."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)   # the client alone: its workers must not outlive it
    rc = proc.wait()
    for _ in range(100):                         # workers exit with their parent (distributed's watchdog)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("worker processes outlived the killed build")
    return rc


def test_sigkill_of_the_whole_build_then_rerun_is_byte_identical(reference: FeatureStore, demo_corpus: Path,
                                                                 tmp_path: Path) -> None:
    store = tmp_path / "kill.zarr"
    cmd = _build_cmd(demo_corpus, store, "--workers", "2")
    slow = {**os.environ, "FEATSTORE_TEST_FAULTS": json.dumps({"delay": 0.25})}
    utt_meta = store / "demo/egemaps/clean/utt/zarr.json"
    # kill points: as soon as the key exists; after one more finished partition (twice)
    assert _run_and_kill(cmd, slow, utt_meta.exists, whole_group=True) == -signal.SIGKILL
    n = _records(store)
    _run_and_kill(cmd, slow, lambda: _records(store) > n, whole_group=False)
    n = _records(store)
    _run_and_kill(cmd, slow, lambda: _records(store) > n, whole_group=True)
    assert _records(store) < 3 or True  # (a kill point may come after the last partition on a slow machine)
    done = subprocess.run(cmd, env=dict(os.environ), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ref_files = _key_files(Path(reference.path))
    assert _key_files(store) == ref_files and ref_files
    _assert_same_values(reference, FeatureStore(store))
    assert not [f for f in verify(FeatureStore(store)) if f.severity == "error"]


def test_concurrent_builds_of_two_encoders_into_one_store(reference: FeatureStore, demo_corpus: Path,
                                                         tmp_path: Path) -> None:
    store = tmp_path / "both.zarr"
    env = dict(os.environ)
    procs = [subprocess.Popen(_build_cmd(demo_corpus, store, "--workers", "1", encoder=enc), env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for enc in ("egemaps", "minilm-l6")]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    fs = FeatureStore(store)
    assert {str(k) for k in fs.keys()} == {"demo/egemaps/clean", "demo/minilm-l6/clean"}
    _assert_same_values(reference, fs)
    text = fs.open_key(KeyName("demo", "minilm-l6"))
    assert text.done_mask().all() and not text.errors() and "provenance" in text.attrs
    assert fs.dataset_attrs("demo")["n_samples"] == 12 and len(fs.labels("demo")) == 2
    assert not [f for f in verify(fs) if f.severity != "info"]


def test_unreachable_scheduler_fails_fast_and_writes_nothing(tmp_path: Path, demo_corpus: Path) -> None:
    with socket.socket() as s:       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "never.zarr"
    t0 = time.monotonic()
    result = CliRunner().invoke(featstore_app, ["build", "--dataset", "demo", "--encoder", "egemaps", "--root",
                                                str(demo_corpus), "--store", str(store), "--scheduler",
                                                f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 1, result.output
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in result.output
    assert len(result.output.strip().splitlines()) <= 3     # one message (wrapped), no traceback
    assert time.monotonic() - t0 < 5 and not store.exists()
    result = CliRunner().invoke(featstore_app, ["build", "--dataset", "demo", "--encoder", "egemaps", "--store",
                                                str(store), "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"])
    assert result.exit_code == 1 and "not both" in result.output


def test_store_the_workers_cannot_see_is_named_before_any_work(client, demo_corpus: Path, tmp_path: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # /proc/self/cwd is each process's own cwd: the client's holds the store, the workers' does not,
    # as when a path exists on the client's machine but not on the workers' nodes
    here, there = tmp_path / "client", tmp_path / "workers"
    here.mkdir(), there.mkdir()
    monkeypatch.chdir(here)
    old = client.run(os.getcwd)
    client.run(os.chdir, str(there))
    try:
        store = FeatureStore("/proc/self/cwd/s.zarr", create=True)
        with pytest.raises(FeatstoreError, match=r"cannot see the store at /proc/self/cwd/s\.zarr"):
            build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=client)
        assert store.datasets() == []                # nothing was written before the check
        # a store at the same path that is another store (e.g. a node-local /tmp) is refused too
        FeatureStore(there / "s.zarr", create=True)
        FeatureStore(there / "s.zarr").root.attrs.update({"created": "another store"})
        with pytest.raises(FeatstoreError, match="see a different store"):
            build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=client)
    finally:
        for addr, cwd in old.items():
            client.run(os.chdir, cwd, workers=[addr])


def test_catalog_that_differs_on_the_workers_is_named(client, demo_corpus: Path, tmp_path: Path) -> None:  # noqa: ANN001
    raw = yaml.safe_load((REPO / "catalog.yaml").read_text())
    raw["encoders"]["egemaps"]["params"]["feature_set"] = "eGeMAPSv01b"
    other = tmp_path / "catalog.yaml"
    other.write_text(yaml.safe_dump(raw))
    client.run(exec, f"import os; os.environ['FEATSTORE_CATALOG'] = {str(other)!r}")
    try:
        store = FeatureStore(tmp_path / "s.zarr", create=True)
        with pytest.raises(FeatstoreError, match=r"catalog entry encoders\.egemaps differs"):
            build(store, "demo", "egemaps", root=demo_corpus, options=OPTS, client=client)
        assert store.datasets() == []
    finally:
        client.run(exec, "import os; os.environ.pop('FEATSTORE_CATALOG', None)")


def test_package_versions_that_differ_are_named() -> None:
    here = {"packages": {"torch": "2.13.0", "numpy": "2.4.6"}, "code": "a", "catalog": {"encoders.x": "1"},
            "store_created": "t"}
    same = {"packages": {"torch": "2.13.0", "numpy": "2.4.6"}, "code": "a", "catalog": {"encoders.x": "1"},
            "store_created": "t"}
    old = {**same, "packages": {"torch": "2.12.0", "numpy": "2.4.6"}, "code": "b"}
    errors, warnings = compare_environments(here, {"tcp://a:1": same, "tcp://b:2": old}, "/s.zarr")
    assert errors == ["package versions differ between this client and the workers: torch 2.13.0 here, "
                      "2.12.0 on tcp://b:2"]
    assert len(warnings) == 1 and "tcp://b:2" in warnings[0]
    assert compare_environments(here, {"tcp://a:1": same}, "/s.zarr") == ([], [])


def test_index_to_store_writes_nothing_when_the_dataset_is_unchanged(store: FeatureStore, demo_corpus: Path) -> None:
    from featstore.build import index_to_store
    from featstore.datasets import load_index

    index = load_index("demo", demo_corpus)
    index_to_store(store, index, "demo")
    meta = Path(store.path) / "demo" / "zarr.json"
    stamp = meta.stat().st_mtime_ns
    time.sleep(0.01)
    index_to_store(store, index, "demo")             # a second build into the store: no rewrite of the dataset
    assert meta.stat().st_mtime_ns == stamp
    shutil.rmtree(Path(store.path) / ".featstore", ignore_errors=True)
