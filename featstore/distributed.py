"""Run `featstore build` partitions on a Dask cluster: connect, check the workers, cache one encoder per
worker, schedule chunk-aligned partitions, and bisect a partition whose samples kill worker processes.

The client (the process that calls `build`) plans partitions, writes every attribute and the dataset
group; workers run `featstore.build.run_partition` and write only their partitions' row chunks and
finished-partition records, so no lock is needed. The client never loads the model: provenance
(resolved weights) comes from a worker. A partition whose task kills workers (a decoder segfault, an
encoder that aborts the process) is split into pieces that run as probe tasks (decode + encode, no
writes) until the culprit samples are found; they are recorded with stage 'crash' and the partition
is rerun without them. A partition that keeps failing is reported with its sample ids; the rest of
the build completes.

    with connect(workers=2) as client:                 # or connect(scheduler="tcp://host:8786")
        build(store, "demo", "egemaps", root=..., client=client)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from featstore import build as build_mod
from featstore.catalog import Catalog, EncoderSpec, load_catalog, spec_hash
from featstore.corrupt import Corruptor
from featstore.datasets.base import DatasetIndex
from featstore.encoders import load_encoder
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError
from featstore.store import FeatureArray, FeatureStore, KeyName

EXTRA_PACKAGES = ("dask", "distributed")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS")
BISECT_WAYS = 4                 # pieces per bisection level: log4(rows) levels, one worker death each
MAX_BISECT_ROUNDS = 2           # a partition still killing workers after this many rounds is reported
DEATHS_BEFORE_BISECT = 2        # one death may be an outside kill (OOM killer, preemption): retry once
MAX_WORKER_DEATHS = 100        # a build whose tasks killed more worker processes than this stops
NO_WORKERS_TIMEOUT_S = 300.0    # give up when no worker has been alive for this long
CRASH_MESSAGE = "the worker process died while decoding or encoding this sample (found by bisection; skipped)"


class WorkerSetupError(FeatstoreError):
    """A worker cannot do any partition (encoder fails to load, store or key not visible): fatal."""


# ---------------------------------------------------------------------------------------------- connect
class ThreadLimit(WorkerPlugin):
    """Worker plugin: cap BLAS/OpenMP/torch threads per worker process (set before the model loads)."""

    name = "featstore-thread-limit"
    idempotent = True

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        set_threads(self.threads or worker.state.nthreads)


def set_threads(n: int) -> None:
    """Limit this process to n compute threads: OMP/MKL/... environment (read when those libraries
    start) and torch.set_num_threads when torch is loaded."""
    n = max(1, int(n))
    for name in THREAD_ENV:
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a tcp:// (or bare host:port) scheduler address; None for other protocols."""
    rest = address
    if "://" in address:
        proto, rest = address.split("://", 1)
        if proto != "tcp":
            return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise FeatstoreError(f"scheduler address '{address}' is not tcp://HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _handshake(address: str, timeout: float) -> None:
    """Open a comm to the address and close it: raises unless a Dask server answers within timeout."""
    from distributed.comm import connect as comm_connect

    comm = await comm_connect(address, timeout=timeout)
    await comm.close()


@contextmanager
def connect(*, workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1,
            torch_threads: int | None = None, timeout: float = 10.0, env: dict[str, str] | None = None,
            memory_limit: str | float | None = "auto") -> Iterator[Any]:
    """A dask.distributed Client: a new LocalCluster of `workers` processes, or the scheduler at `scheduler`.

    Local clusters get `threads_per_worker` threads per process (1 by default). A build runs one
    partition per worker process at a time (one model per process) and gives the worker's threads to
    torch inside it (`torch_threads` overrides); OMP/MKL threads are capped through the environment.
    Their scheduler is set up for crash isolation (allowed-failures 0: the client decides about retries
    and bisection; worker-saturation 1.0) and quiet logs; `env` adds worker environment variables.
    Every worker gets the ThreadLimit plugin. An address that does not answer fails within `timeout`
    seconds, before anything is written.
    """
    import dask
    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise FeatstoreError("give either --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    threads = torch_threads or threads_per_worker
    cluster = None
    if scheduler is not None:
        hp = _split_address(scheduler)
        if hp is not None:
            try:
                socket.create_connection(hp, timeout=min(timeout, 5.0)).close()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise FeatstoreError(f"cannot reach the Dask scheduler at {scheduler}: {reason.lower()} (is "
                                     f"`dask scheduler` running there, and is the port open?); nothing was written") from None
        try:  # a handshake first (own thread and loop): another service on the port must not hang a Client
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, _handshake(scheduler, timeout)).result(timeout + 1)
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, FutureTimeout) as exc:
            raise FeatstoreError(f"cannot connect to a Dask scheduler at {scheduler} within {timeout:g} s "
                                 f"({_one_line(exc)}); nothing was written") from None
        except Exception as exc:  # e.g. a garbled handshake from another service on that port
            raise FeatstoreError(f"something answers at {scheduler}, but not as a Dask scheduler "
                                 f"({_one_line(exc)[:120]}); nothing was written") from None
    else:
        if workers < 1:  # type: ignore[operator]
            raise FeatstoreError(f"--workers must be at least 1, got {workers}")
        worker_env = {name: str(threads) for name in THREAD_ENV}
        worker_env.update(env or {})
        with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                              "distributed.scheduler.worker-saturation": 1.0}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Port .* is already in use")  # another cluster's HTTP port
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=None, env=worker_env, memory_limit=memory_limit,
                                   silence_logs=logging.CRITICAL)
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    try:
        if cluster is not None:
            client.wait_for_workers(workers, timeout=max(60.0, timeout))
        client.register_plugin(ThreadLimit(threads if cluster is not None else torch_threads))
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------------------------- checks
def environment_versions() -> dict[str, str]:
    """Versions of the packages that change features, plus dask and distributed."""
    out = build_mod.package_versions()
    for name in EXTRA_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_digest() -> str:
    """A short hash of the featstore package's source files (same checkout on client and workers?)."""
    root = Path(build_mod.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        try:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            pass
    return h.hexdigest()[:16]


def catalog_digest(catalog: Catalog, dataset: str, encoder: str, corruption: str) -> dict[str, str]:
    """Hash of each catalog entry this build uses, e.g. {'encoders.egemaps': 'ab12…'} ('missing' if absent)."""
    out = {}
    for section, name in (("datasets", dataset), ("encoders", encoder), ("corruptions", corruption)):
        entry = getattr(catalog, section).get(name)
        out[f"{section}.{name}"] = spec_hash(asdict(entry)) if entry is not None else "missing"
    return out


def worker_environment(store_path: str, dataset: str, encoder: str, corruption: str) -> dict[str, Any]:
    """Run on each worker before any work: package versions, catalog entries, code digest, store visibility."""
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "packages": environment_versions(),
                           "code": code_digest()}
    try:
        out["catalog"] = catalog_digest(load_catalog(), dataset, encoder, corruption)
    except Exception as exc:  # a missing or broken catalog on the worker
        out["catalog_error"] = _one_line(exc)
    try:
        out["store_created"] = FeatureStore(store_path, read_only=True).root.attrs.get("created")
    except Exception as exc:
        out["store_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out


def _names(addresses: Sequence[str], n: int = 3) -> str:
    addresses = sorted(addresses)
    return ", ".join(addresses[:n]) + (f" (+{len(addresses) - n} more)" if len(addresses) > n else "")


def compare_environments(here: dict[str, Any], workers: dict[str, dict[str, Any]],
                         store_path: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) from `worker_environment` results against the client's own.

    Errors: a worker that cannot see the store (or sees another store at the same path), a catalog
    entry or package version that differs (named, with both values). Warning: featstore's source differs.
    """
    errors: list[str] = []
    warns: list[str] = []
    blind = {a: w["store_error"] for a, w in workers.items() if "store_error" in w}
    if blind:
        first = next(iter(blind.values()))
        errors.append(f"worker(s) {_names(list(blind))} cannot see the store at {store_path} ({first}); the store "
                      f"must be on a path every worker sees (a shared filesystem)")
    other = [a for a, w in workers.items() if "store_error" not in w and w.get("store_created") != here.get("store_created")]
    if other:
        errors.append(f"worker(s) {_names(other)} see a different store at {store_path} (created "
                      f"{workers[other[0]].get('store_created')}, here {here.get('store_created')}): use a path "
                      f"on a filesystem shared by the client and every worker")
    broken = {a: w["catalog_error"] for a, w in workers.items() if "catalog_error" in w}
    if broken:
        errors.append(f"worker(s) {_names(list(broken))} cannot load the catalog: {next(iter(broken.values()))}")
    for entry, digest in here.get("catalog", {}).items():
        differ = [a for a, w in workers.items() if "catalog" in w and w["catalog"].get(entry) != digest]
        if differ:
            errors.append(f"catalog entry {entry} differs between this client and worker(s) {_names(differ)}; "
                          f"use the same catalog.yaml everywhere (FEATSTORE_CATALOG)")
    mine = here.get("packages", {})
    names = sorted(set(mine).union(*(w.get("packages", {}) for w in workers.values())))
    diffs = []
    for name in names:
        theirs: dict[str, list[str]] = {}
        for a, w in workers.items():
            v = w.get("packages", {}).get(name, "missing")
            if v != mine.get(name, "missing"):
                theirs.setdefault(v, []).append(a)
        for v, addrs in theirs.items():
            diffs.append(f"{name} {mine.get(name, 'missing')} here, {v} on {_names(addrs)}")
    if diffs:
        errors.append("package versions differ between this client and the workers: " + "; ".join(diffs))
    code = [a for a, w in workers.items() if w.get("code") != here.get("code")]
    if code:
        warns.append(f"featstore's source files differ between this client and worker(s) {_names(code)} "
                        f"(another checkout or local edits?): the workers run their own copy")
    return errors, warns


def worker_sees_key(store_path: str, key: str, expected_hash: str) -> str | None:
    """Run on each worker after the key is created: None, or why this worker cannot use the key."""
    try:
        attrs = FeatureStore(store_path).open_key(KeyName.parse(key)).attrs
    except Exception as exc:
        return f"{store_path}: {exc}"
    if attrs.get("spec_hash") != expected_hash:
        return f"{store_path}: key {key} has spec {attrs.get('spec_hash')}, expected {expected_hash}"
    return None


# ---------------------------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs for any partition of one build (small; pickled with each task)."""

    store_path: str
    key: str
    encoder: EncoderSpec
    model: str | None
    device: str
    trust_remote_code: bool
    corruptor: Corruptor | None
    options: build_mod.BuildOptions
    torch_threads: int | None
    spec_hash: str | None = None       # None: the key is not created yet (provenance task)
    weights: Any = None                # resolved weights the key was made with; checked on each worker

    @property
    def encoder_key(self) -> tuple[Any, ...]:
        return (spec_hash(self.encoder.feature_spec()), self.model, self.device, self.trust_remote_code)


class _Window:
    """values[i - offset]: a slice of a per-row list addressed by global row numbers."""

    def __init__(self, values: Sequence[Any], offset: int) -> None:
        self.values, self.offset = list(values), offset

    def __getitem__(self, row: int) -> Any:
        i = row - self.offset
        if not 0 <= i < len(self.values):
            raise IndexError(f"row {row} is outside this partition")
        return self.values[i]


class IndexSlice:
    """Rows [start, stop) of a DatasetIndex (ids, media, text, text_errors) under their global row numbers:
    what `prepare_input` reads, without shipping the whole index with every task."""

    def __init__(self, index: DatasetIndex, start: int, stop: int) -> None:
        self.name, self.root, self.start, self.stop = index.name, index.root, start, stop
        self.ids = _Window(index.ids[start:stop], start)
        self.media = _Window([_shared_path(m) if m else m for m in index.media[start:stop]], start)
        self.text = _Window(index.text[start:stop], start)
        self.text_errors = {r: m for r, m in getattr(index, "text_errors", {}).items() if start <= r < stop}


_ENCODERS: dict[tuple[Any, ...], Encoder] = {}   # one loaded encoder per worker process
_LOADS = {"count": 0}
_LOCK = threading.Lock()


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except Exception:
        return f"pid {os.getpid()}"


def cached_encoder(job: WorkerJob) -> Encoder:
    """The worker's encoder for this job, loaded once per process and reused by every partition.

    A worker keeps one model at a time (another build's model replaces it), so a GPU holds one model.
    Its resolved weights must match the key's (another model file on this node would mix models).
    """
    with _LOCK:
        enc = _ENCODERS.get(job.encoder_key)
        if enc is None:
            _ENCODERS.clear()
            threads = job.torch_threads
            if threads is None:
                try:
                    from distributed import get_worker

                    threads = get_worker().state.nthreads
                except Exception:
                    threads = 1
            set_threads(threads)
            try:
                enc = load_encoder(job.encoder, model=job.model, device=job.device,
                                   trust_remote_code=job.trust_remote_code)
            except FeatstoreError as exc:
                raise WorkerSetupError(f"worker {_worker_address()}: {exc}") from None
            set_threads(threads)     # torch may have been imported by the loader
            _ENCODERS[job.encoder_key] = enc
            _LOADS["count"] += 1
    if job.weights is not None:
        got = enc.provenance().get("weights")
        if got != job.weights:
            raise WorkerSetupError(f"worker {_worker_address()}: encoder {job.encoder.name} resolved weights {got}, "
                                   f"but {job.key} was built with {job.weights}; give every node the same model files")
    return enc


def worker_cache_info() -> dict[str, Any]:
    """Run on a worker: how many times this process loaded an encoder, and what it holds now."""
    return {"loads": _LOADS["count"], "cached": [k[0] for k in _ENCODERS], "pid": os.getpid()}


def _open_key(job: WorkerJob) -> FeatureArray:
    try:
        fa = FeatureStore(job.store_path).open_key(KeyName.parse(job.key))
    except Exception as exc:
        raise WorkerSetupError(f"worker {_worker_address()} cannot open {job.key} in the store at "
                               f"{job.store_path}: {exc}") from None
    if fa.attrs.get("spec_hash") != job.spec_hash:
        raise WorkerSetupError(f"worker {_worker_address()}: {job.key} in {job.store_path} has spec "
                               f"{fa.attrs.get('spec_hash')}, not {job.spec_hash} (rebuilt meanwhile?)")
    return fa


def provenance_task(job: WorkerJob) -> dict[str, Any]:
    """Load (and cache) the encoder on a worker; return its provenance (resolved model and weights)."""
    return cached_encoder(job).provenance()


def partition_task(job: WorkerJob, rows: IndexSlice, start: int, stop: int,
                   skip: dict[str, str] | None) -> dict[str, Any]:
    """Run `featstore.build.run_partition` for rows [start, stop) on this worker (writes its chunks)."""
    enc = cached_encoder(job)
    fa = _open_key(job)
    res = build_mod.run_partition(fa, enc, rows, start, stop, job.options, None, job.corruptor, skip=skip)  # type: ignore[arg-type]
    return {"start": start, "stop": stop, "written": res.written, "failed": len(res.records),
            "seconds": res.seconds, "worker": _worker_address()}


def probe_task(job: WorkerJob, rows: IndexSlice, probe_rows: list[int]) -> int:
    """Decode and encode some rows without writing anything: does this piece kill the process?"""
    enc = cached_encoder(job)
    build_mod.encode_rows(enc, rows, probe_rows, job.options, None, job.corruptor)  # type: ignore[arg-type]
    return len(probe_rows)


# ---------------------------------------------------------------------------------------------- client side
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _shared_path(path: str) -> str:
    """The store path as workers must see it: absolute for local paths (workers have other cwds)."""
    return path if "://" in path else os.path.abspath(path)


@dataclass
class _Part:
    """Client-side state of one partition: crash culprits to skip, deaths, errors, bisection progress."""

    start: int
    stop: int
    skip: dict[str, str] = field(default_factory=dict)
    deaths: int = 0
    errors: int = 0
    rounds: int = 0
    probes: int = 0
    found: dict[str, str] = field(default_factory=dict)
    retried_clean: bool = False


class ClusterBuild:
    """One build's work on a cluster: worker checks, remote provenance, then the partition schedule."""

    def __init__(self, client: Any, store: FeatureStore, key: KeyName, catalog: Catalog, encoder: EncoderSpec, *,
                 model: str | None, device: str, trust_remote_code: bool, corruptor: Corruptor | None,
                 options: build_mod.BuildOptions, torch_threads: int | None = None,
                 progress: Callable[[str, Any], None] | None = None) -> None:
        self.client, self.store, self.key, self.catalog, self.encoder = client, store, key, catalog, encoder
        self.store_path = _shared_path(store.path)
        if model and os.path.exists(model):      # a local weights folder: workers have other working directories
            model = os.path.abspath(model)
        self.progress = progress or (lambda event, payload: None)
        self.job = WorkerJob(self.store_path, str(key), encoder, model, device, trust_remote_code, corruptor,
                             options, torch_threads)
        self.n_workers = 0
        self._alive_at = time.monotonic()
        self.slots = 1
        self.allowed_failures = 3
        self._checked = 0.0
        self._loading: dict[str, Any] = {}

    # -------------------------------------------------------------------- before any work
    def check_workers(self, wait_s: float = 30.0) -> None:
        """Every worker sees the same store, catalog entries and package versions as this client."""
        try:
            self.client.wait_for_workers(1, timeout=wait_s)
        except (TimeoutError, OSError):
            raise FeatstoreError(f"no Dask worker joined the scheduler {self.client.scheduler.address} within "
                                 f"{wait_s:g} s; start workers with `dask worker {self.client.scheduler.address}`") from None
        k = self.key
        results = self.client.run(worker_environment, self.store_path, k.dataset, k.encoder, k.corruption,
                                  on_error="return")
        envs: dict[str, dict[str, Any]] = {}
        for addr, res in results.items():
            if isinstance(res, BaseException):
                raise FeatstoreError(f"worker {addr} cannot run featstore ({_one_line(res)}); is featstore installed "
                                     f"in the workers' environment?")
            envs[addr] = res
        here = {"packages": environment_versions(), "code": code_digest(),
                "catalog": catalog_digest(self.catalog, k.dataset, k.encoder, k.corruption),
                "store_created": FeatureStore(self.store.path, read_only=True).root.attrs.get("created")}
        errors, warns = compare_environments(here, envs, self.store_path)
        if errors:
            raise FeatstoreError("; ".join(errors))
        for w in warns:
            self.progress("warning", w)
        self.n_workers = len(envs)
        self.progress("workers", self.n_workers)
        self.allowed_failures = self._scheduler_allowed_failures()
        self.start_loading()

    def _scheduler_allowed_failures(self) -> int:
        try:
            return int(self.client.run_on_scheduler(_allowed_failures))
        except Exception:  # run_on_scheduler may be disabled on a locked-down scheduler
            return 3

    def start_loading(self) -> dict[str, Any]:
        """Submit the model load to every worker (called once the checks passed; runs while the client
        writes the dataset group). Returns worker address -> future of its provenance."""
        tag = uuid.uuid4().hex[:8]
        futs = {addr: self.client.submit(provenance_task, self.job, pure=False, workers=[addr],
                                         allow_other_workers=True, key=f"featstore-load-{i}-{tag}")
                for i, addr in enumerate(sorted(self.client.nthreads()))}
        if not futs:
            futs = {"any": self.client.submit(provenance_task, self.job, pure=False, key=f"featstore-load-{tag}")}
        self._loading = futs
        return futs

    def provenance(self) -> dict[str, Any]:
        """The encoder's provenance, from the workers: every worker loads the model now, in parallel (so none
        loads it later while the others work), and all must resolve the same weights."""
        from distributed import KilledWorker

        futs = self._loading or self.start_loading()
        self._loading = {}
        provs: dict[str, dict[str, Any]] = {}
        for addr, fut in futs.items():
            try:
                provs[addr] = fut.result()
            except KilledWorker:
                raise FeatstoreError(f"encoder {self.encoder.name}: the worker process died while loading it (out "
                                     f"of memory? see the worker logs)") from None
            except FeatstoreError:
                raise
            except Exception as exc:
                raise FeatstoreError(f"encoder {self.encoder.name} failed to load on worker {addr}: "
                                     f"{_one_line(exc)}") from None
        first_addr, first = next(iter(provs.items()))
        other = [a for a, p in provs.items() if p.get("weights") != first.get("weights")]
        if other:
            raise FeatstoreError(f"encoder {self.encoder.name}: workers resolve different weights ({first.get('weights')} "
                                 f"on {first_addr}, {provs[other[0]].get('weights')} on {_names(other)}); give every "
                                 f"node the same model files")
        return first

    # -------------------------------------------------------------------- the schedule
    def run(self, fa: FeatureArray, index: DatasetIndex, parts: list[tuple[int, int]], key_hash: str,
            weights: Any) -> tuple[int, list[dict[str, Any]]]:
        """Run the partitions; returns (rows written, partitions that kept failing)."""
        job = replace(self.job, spec_hash=key_hash, weights=weights)
        bad = {a: m for a, m in self.client.run(worker_sees_key, self.store_path, str(self.key), key_hash).items() if m}
        if bad:
            raise FeatstoreError(f"worker(s) {_names(list(bad))} cannot use the key: {next(iter(bad.values()))}")
        return _Schedule(self, job, index, parts).run()

    def refresh_workers(self) -> None:
        """Workers alive (reported as progress) and task slots: one partition per worker process at a time
        (the model is per process; its threads serve torch inside the partition), so a worker's death
        always names the one task it was running."""
        now = time.monotonic()
        if now - self._checked < 0.5:
            return
        self._checked = now
        nthreads = self.client.nthreads()
        if len(nthreads) != self.n_workers:
            self.n_workers = len(nthreads)
            self.progress("workers", self.n_workers)
        if nthreads:
            self._alive_at = now
        elif now - self._alive_at > NO_WORKERS_TIMEOUT_S:
            raise FeatstoreError(f"no Dask worker alive for {NO_WORKERS_TIMEOUT_S:g} s; the build stops (rerun it "
                                 f"when workers are back: finished partitions are kept)")
        self.slots = max(1, len(nthreads))


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


@dataclass
class _Task:
    """A submitted unit: a partition (writes) or a probe of some of its rows (decode + encode only)."""

    kind: str                       # "part" | "probe"
    part: _Part
    rows: list[int] = field(default_factory=list)


class _Schedule:
    """The client's loop: keep one task per worker thread in flight, react to each finished future.

    A partition whose task killed workers is retried once (DEATHS_BEFORE_BISECT), then bisected: its
    rows are split into BISECT_WAYS probe tasks, a probe that kills its worker is split again, and a
    one-row probe that kills its worker names a culprit. The partition then reruns with the culprits
    skipped (recorded with stage 'crash'). Other task errors are retried once, then the partition is
    reported as failed (with its sample ids) and the build goes on. Setup errors on a worker stop it.
    """

    def __init__(self, owner: ClusterBuild, job: WorkerJob, index: DatasetIndex, parts: list[tuple[int, int]]) -> None:
        self.owner, self.client, self.job, self.ids = owner, owner.client, job, index.ids
        self.progress = owner.progress
        self.slices = {(s, e): IndexSlice(index, s, e) for s, e in parts}
        self.work: deque[_Task] = deque(_Task("part", _Part(s, e)) for s, e in parts)
        self.in_flight: dict[str, tuple[Any, _Task]] = {}
        self.done_q: queue.Queue[str] = queue.Queue()
        self.written = 0
        self.failed_parts: list[dict[str, Any]] = []
        self.per_kill = owner.allowed_failures + 1   # workers that died before the scheduler gives up on a task
        self.deaths = 0

    def run(self) -> tuple[int, list[dict[str, Any]]]:
        try:
            while self.work or self.in_flight:
                self.owner.refresh_workers()
                while self.work and len(self.in_flight) < self.owner.slots:
                    self.submit(self.work.popleft())
                try:
                    k = self.done_q.get(timeout=0.5)
                except queue.Empty:
                    continue
                fut, task = self.in_flight.pop(k)
                self.handle(fut, task)
        finally:
            if self.in_flight:
                self.client.cancel([f for f, _ in self.in_flight.values()])
        return self.written, self.failed_parts

    def submit(self, task: _Task) -> None:
        p = task.part
        rows = self.slices[(p.start, p.stop)]
        tag = f"{p.start}-{uuid.uuid4().hex[:8]}"
        if task.kind == "part":
            fut = self.client.submit(partition_task, self.job, rows, p.start, p.stop, dict(p.skip) or None,
                                     pure=False, key=f"featstore-part-{tag}")
        else:
            fut = self.client.submit(probe_task, self.job, rows, task.rows, pure=False, key=f"featstore-probe-{tag}")
        self.in_flight[fut.key] = (fut, task)
        fut.add_done_callback(lambda f: self.done_q.put(f.key))

    def handle(self, fut: Any, task: _Task) -> None:
        from distributed import KilledWorker

        p = task.part
        if fut.status == "finished":
            if task.kind == "part":
                res = fut.result()
                self.written += res["written"]
                self.progress("samples", (res["written"], (p.stop - p.start) - res["written"]))
            else:
                self.probe_done(p)
            return
        if fut.status == "cancelled":
            raise FeatstoreError("the Dask scheduler cancelled the build's tasks (lost the connection to it?)")
        exc = fut.exception()
        if isinstance(exc, WorkerSetupError):
            raise FeatstoreError(str(exc))
        killed = isinstance(exc, KilledWorker)
        if killed:
            self.deaths += self.per_kill
            if self.deaths > MAX_WORKER_DEATHS:
                raise FeatstoreError(f"{self.deaths} worker processes died during this build: something systematic "
                                     f"(out of memory? a broken decoder or driver?), not a few bad samples; see the "
                                     f"worker logs. Finished partitions are kept.")
        if task.kind == "probe":
            if killed and len(task.rows) == 1:
                p.found[str(self.ids[task.rows[0]])] = CRASH_MESSAGE
            elif killed:
                for piece in _split(task.rows):
                    self.add_probe(p, piece)
            self.probe_done(p)              # a probe that raised (not killed) passes: no process crash there
        elif killed:
            p.deaths += self.per_kill
            if p.deaths < DEATHS_BEFORE_BISECT:
                self.progress("warning", f"a worker died while running rows [{p.start}, {p.stop}): retrying")
                self.work.appendleft(_Task("part", p))
            else:
                self.bisect(p)
        else:
            p.errors += 1
            if p.errors <= 1:
                self.progress("warning", f"rows [{p.start}, {p.stop}) failed ({_one_line(exc)}): retrying")
                self.work.appendleft(_Task("part", p))
            else:
                self.fail(p, _one_line(exc))

    def add_probe(self, p: _Part, rows: list[int]) -> None:
        p.probes += 1
        self.work.appendleft(_Task("probe", p, rows))

    def bisect(self, p: _Part) -> None:
        p.rounds += 1
        rows = [r for r in range(p.start, p.stop) if self.ids[r] not in p.skip]
        if p.rounds > MAX_BISECT_ROUNDS or not rows:
            self.fail(p, f"kept killing workers after {p.rounds - 1} bisection round(s)")
            return
        self.progress("warning", f"rows [{p.start}, {p.stop}) killed {p.deaths} worker(s): bisecting to find the sample")
        p.found = {}
        for piece in _split(rows):
            self.add_probe(p, piece)

    def probe_done(self, p: _Part) -> None:
        p.probes -= 1
        if p.probes:
            return
        if p.found:                          # rerun the partition without the culprits
            for sid in p.found:
                self.progress("crash", {"id": sid, "start": p.start, "stop": p.stop})
            p.skip.update(p.found)
            self.work.appendleft(_Task("part", p))
        elif not p.retried_clean:            # no piece died alone: one more try of the whole partition
            p.retried_clean = True
            self.work.appendleft(_Task("part", p))
        else:
            self.fail(p, "keeps killing workers, but no single sample does on its own")

    def fail(self, p: _Part, reason: str) -> None:
        rec = {"start": p.start, "stop": p.stop, "ids": [str(i) for i in self.ids[p.start:p.stop]], "reason": reason}
        self.failed_parts.append(rec)
        self.progress("partition_failed", rec)


def _split(rows: list[int]) -> list[list[int]]:
    """BISECT_WAYS contiguous pieces (fewer for short lists)."""
    k = min(BISECT_WAYS, len(rows))
    return [rows[i * len(rows) // k:(i + 1) * len(rows) // k] for i in range(k)]
