"""Figure: the same CPU-bound `featstore build` on a local Dask cluster of 1 and of 2 single-threaded workers.

The build is eGeMAPS functionals (openSMILE, CPU, the `egemaps` catalog encoder) over a generated demo
corpus of --n clips (featstore.demo_data, written once under --workdir), rows_per_chunk 8 (so --n / 8
partitions). Each pass gets a fresh store and a fresh LocalCluster (`featstore.distributed.connect`,
threads_per_worker=1, OMP/MKL threads 1); the passes alternate 1, 2, 1, 2 ... workers so that drift in the
machine's load hits both sides alike, and the figure is the median per side. An in-process build
(`build` without a client) runs first as the baseline of the per-clip cost.

Timed: `build(...)` from its call to its return, which includes the worker checks, loading the encoder on
the workers, every partition and the final attributes; the cluster start is timed separately. Correctness
in the same run: every pass must produce arrays identical to the in-process build.

    .venv/bin/python benchmarks/dask_scaling.py                 # 96 clips, 3 passes per side
    .venv/bin/python benchmarks/dask_scaling.py --n 24 --repeats 1   # smoke run
    .venv/bin/python benchmarks/dask_scaling.py --wait-idle 0.9      # on a shared machine: each pass waits for quiet
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from featstore.build import BuildOptions, build  # noqa: E402
from featstore.demo_data import generate  # noqa: E402
from featstore.distributed import connect  # noqa: E402
from featstore.store import FeatureStore, KeyName  # noqa: E402

import _common as common  # noqa: E402
from _common import uptime, wait_idle  # noqa: E402

ENCODER = "egemaps"
KEY = KeyName("demo", ENCODER)


def machine() -> str:
    import dask
    import distributed
    return f"{common.machine()}; dask {dask.__version__}, distributed {distributed.__version__}"


def corpus(workdir: Path, n: int) -> Path:
    path = workdir / f"corpus-{n}"
    if not (path / "labels.csv").is_file():
        t = time.perf_counter()
        generate(path, n=n, seed=0)
        print(f"generated {n} clips in {time.perf_counter() - t:.1f} s", flush=True)
    return path


def one_pass(root: Path, store_path: Path, workers: int | None, opts: BuildOptions) -> tuple[float, float, FeatureStore]:
    """(cluster start seconds, build seconds, store) of one build into a fresh store."""
    shutil.rmtree(store_path, ignore_errors=True)
    store = FeatureStore(store_path, create=True)
    if workers is None:
        t = time.perf_counter()
        report = build(store, "demo", ENCODER, root=root, options=opts)
        return 0.0, time.perf_counter() - t, store
    t = time.perf_counter()
    with connect(workers=workers, threads_per_worker=1) as client:
        start = time.perf_counter() - t
        t = time.perf_counter()
        report = build(store, "demo", ENCODER, root=root, options=opts, client=client)
        seconds = time.perf_counter() - t
    assert report.ok and report.written == len(store.ids("demo")), report
    return start, seconds, store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="clips in the generated corpus")
    ap.add_argument("--repeats", type=int, default=3, help="passes per side (1 and 2 workers)")
    ap.add_argument("--rows-per-chunk", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_work" / "dask_scaling")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="FRACTION",
                    help="before each pass, wait until the CPUs are this idle over 5 s, e.g. 0.9 (shared machines)")
    ap.add_argument("--max-wait", type=float, default=600.0, help="longest wait for --wait-idle, seconds")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = corpus(args.workdir, args.n)
    opts = BuildOptions(rows_per_chunk=args.rows_per_chunk, batch_size=16)
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"before: {uptime()}", flush=True)

    wait_idle(args.wait_idle, args.max_wait)
    _, local_s, ref = one_pass(root, args.workdir / "local.zarr", None, opts)
    expected = ref.open_key(KEY).utt[:]
    print(f"in-process build: {local_s:.2f} s", flush=True)
    times: dict[int, list[float]] = {1: [], 2: []}
    starts: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for w in (1, 2):
            load = wait_idle(args.wait_idle, args.max_wait)
            start, secs, store = one_pass(root, args.workdir / f"w{w}.zarr", w, opts)
            np.testing.assert_array_equal(store.open_key(KEY).utt[:], expected)   # same values as in-process
            times[w].append(secs)
            starts[w].append(start)
            print(f"pass {rep + 1}: {w} worker(s): build {secs:.2f} s (cluster start {start:.2f} s; "
                  f"before: {load}; load average after {os.getloadavg()[0]:.2f})", flush=True)
    print(f"after: {uptime()}")
    n = args.n
    med = {w: statistics.median(v) for w, v in times.items()}
    print()
    print(f"| workers (1 thread each) | build time (median of {args.repeats}) | all passes | clips/s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| in-process (no Dask) | {local_s:.2f} s | | {n / local_s:.1f} | |")
    for w in (1, 2):
        passes = ", ".join(f"{x:.2f}" for x in times[w])
        print(f"| {w} | {med[w]:.2f} s | {passes} | {n / med[w]:.1f} | {med[1] / med[w]:.2f}× |")
    print()
    print(f"cluster start (not in the build time): median {statistics.median(starts[1]):.2f} s (1 worker), "
          f"{statistics.median(starts[2]):.2f} s (2 workers)")
    print(f"speed-up 2 vs 1 worker: {med[1] / med[2]:.2f}× (goal ≥ 1.6×); every pass equal to the in-process arrays")


if __name__ == "__main__":
    main()
