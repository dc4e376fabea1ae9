"""Figure: reading one (dataset, encoder) matrix from the store vs. MERTools-style per-sample .npy files.

Writes an N x D float16 key through FeatureStore (the build's write path, chunk-aligned partitions) and
the same rows as one float32 `<id>.npy` per sample (MERTools extracts with torch in float32 and saves each
utterance vector with np.save; its loader np.load()s them one by one), then reads both side by side:
first after dropping the OS page cache (`/proc/sys/vm/drop_caches` when writable, else
posix_fadvise(DONTNEED) on every file: "cold-ish", a VM's host may still cache the disk), then warm
(best of --repeats). Also: store write throughput and a codec comparison (none, zstd level 1,
blosc-lz4 + shuffle) that backs DEFAULT_COMPRESSORS in featstore/store.py.

    .venv/bin/python benchmarks/store_read.py            # 115,595 x 1024 (MER2024 size), ~1 GB of disk
    .venv/bin/python benchmarks/store_read.py --quick    # 20,000 x 1024, seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featstore.store as store_mod  # noqa: E402
from featstore.store import FeatureStore, KeyName  # noqa: E402

HERE = Path(__file__).resolve().parent
KEY = KeyName("bench", "enc")


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Embedding-like float32 rows: per-dimension offset and scale (anisotropic, like pooled encoder outputs)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 0.5, dim).astype(np.float32)
    scale = rng.lognormal(-1.0, 0.6, dim).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    step = 8192
    for s in range(0, n, step):
        e = min(s + step, n)
        x[s:e] = mean + scale * rng.standard_normal((e - s, dim), dtype=np.float32)
    return x


def drop_cache(paths: list[Path]) -> str:
    """Evict the files' pages: drop_caches if permitted (also drops dentries/inodes), else fadvise per file."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches=3"
    except OSError:
        pass
    for root in paths:
        for dirpath, _, names in os.walk(root):
            for name in names:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return "posix_fadvise(DONTNEED) per file"


def du(path: Path) -> int:
    """Bytes of file content under path (apparent size)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def write_store(path: Path, ids: list[str], x: np.ndarray, compressors, partition_chunks: int = 8) -> float:
    """Create the store and write the key through write_rows, as a build does; returns seconds."""
    if path.exists():
        shutil.rmtree(path)
    fs = FeatureStore(path, create=True)
    fs.put_dataset(KEY.dataset, ids)
    old = store_mod.DEFAULT_COMPRESSORS
    store_mod.DEFAULT_COMPRESSORS = compressors
    try:
        t0 = time.perf_counter()
        fa = fs.create_key(KEY, layers=1, dim=x.shape[1], dtype="float16", spec={"bench": 1}, spec_hash="bench")
        step = fa.rows_per_chunk * partition_chunks
        for s in range(0, len(x), step):
            fa.write_rows(s, x[s:s + step])
        os.sync()
        return time.perf_counter() - t0
    finally:
        store_mod.DEFAULT_COMPRESSORS = old


def read_store(path: Path) -> np.ndarray:
    return FeatureStore(path, read_only=True).read(KEY.dataset, KEY.encoder)


def write_npy(folder: Path, ids: list[str], x: np.ndarray) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, name in enumerate(ids):
        np.save(folder / f"{name}.npy", x[i])
    os.sync()
    return time.perf_counter() - t0


def read_npy(folder: Path, ids: list[str]) -> np.ndarray:
    """What MERTools' loader does: np.load each `<id>.npy` (float32 [D]) and stack them."""
    return np.stack([np.load(os.path.join(folder, f"{name}.npy")) for name in ids])


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=115_595, help="rows (default: MER2024's 115,595 samples)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir under "
                    "benchmarks/_work, deleted afterwards; a given workdir is kept)")
    ap.add_argument("--quick", action="store_true", help="20,000 rows, one warm repeat")
    ap.add_argument("--repeats", type=int, default=3, help="warm reads (best is reported)")
    ap.add_argument("--skip-codecs", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = min(args.n, 20_000), 1
    n, dim = args.n, args.dim
    keep = args.workdir is not None
    if keep:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        (HERE / "_work").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="store_read_", dir=HERE / "_work"))
    try:
        run(work, n, dim, args.repeats, args.skip_codecs)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, n: int, dim: int, repeats: int, skip_codecs: bool) -> None:
    print(f"# store_read: {n:,} x {dim} (float16 store vs float32 per-sample .npy), workdir {work}", flush=True)
    x = synthetic(n, dim)
    ids = [f"sample_{i:08d}" for i in range(n)]
    zpath, npath = work / "store.zarr", work / "npy"

    t_wstore = write_store(zpath, ids, x, None)
    t_wnpy = write_npy(npath, ids, x)
    store_bytes, npy_bytes = du(zpath / KEY.dataset / KEY.encoder), du(npath)
    out16, out32 = n * dim * 2, n * dim * 4
    print(f"wrote store in {t_wstore:.2f} s, npy files in {t_wnpy:.2f} s", flush=True)

    how = drop_cache([zpath, npath])
    t_cold_store, got = timed(read_store, zpath)
    assert np.array_equal(got[:, 0, :], x.astype(np.float16))
    how = drop_cache([zpath, npath])
    t_cold_npy, got32 = timed(read_npy, npath, ids)
    assert np.array_equal(got32, x)
    warm_store = min(timed(read_store, zpath)[0] for _ in range(repeats))
    warm_npy = min(timed(read_npy, npath, ids)[0] for _ in range(repeats))
    warm_store32 = min(timed(lambda: read_store(zpath).astype(np.float32))[0] for _ in range(repeats))
    del got, got32

    gbs = lambda b, t: b / t / 1e9  # noqa: E731
    print()
    load = os.getloadavg()
    print(f"Read {n:,} x {dim} into one matrix; cache eviction: {how}; warm = best of {repeats}; "
          f"load average {load[0]:.1f} (1 min) during the run.")
    print()
    print("| reader | on disk | cold-ish read | warm read | warm GB/s (of the matrix) | warm vs .npy |")
    print("|---|---|---|---|---|---|")
    print(f"| featstore (zarr, float16, no codec) | {store_bytes / 1e6:.0f} MB | {t_cold_store:.2f} s | "
          f"{warm_store:.3f} s | {gbs(out16, warm_store):.2f} | **{warm_npy / warm_store:.0f}×** |")
    print(f"| featstore → float32 matrix (incl. cast) | | | {warm_store32:.3f} s | {gbs(out32, warm_store32):.2f} | "
          f"{warm_npy / warm_store32:.0f}× |")
    print(f"| MERTools per-sample .npy (float32) | {npy_bytes / 1e6:.0f} MB in {n:,} files | {t_cold_npy:.2f} s | "
          f"{warm_npy:.3f} s | {gbs(out32, warm_npy):.2f} | 1× |")
    print()
    print(f"Cold-ish read ratio (.npy / featstore): {t_cold_npy / t_cold_store:.0f}×.")
    print()
    print("| write | time | GB/s |")
    print("|---|---|---|")
    print(f"| featstore write_rows (float32 in → float16 chunks, 8-chunk partitions, incl. fsync) | {t_wstore:.2f} s | "
          f"{gbs(out16, t_wstore):.2f} |")
    print(f"| np.save per sample (float32) | {t_wnpy:.2f} s | {gbs(out32, t_wnpy):.2f} |")
    shutil.rmtree(npath)

    if skip_codecs:
        return
    from zarr.codecs import BloscCodec, ZstdCodec

    codecs = [("none (default)", None), ("zstd level 1", ZstdCodec(level=1)),
              ("blosc lz4 + shuffle", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2))]
    print()
    print("| codec | size | matrix/disk | write | write GB/s | warm read | read GB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, comp in codecs:
        path = work / "codec.zarr"
        t_w = write_store(path, ids, x, comp)
        size = du(path / KEY.dataset / KEY.encoder)
        read_store(path)
        t_r = min(timed(read_store, path)[0] for _ in range(repeats))
        print(f"| {name} | {size / 1e6:.0f} MB | {out16 / size:.3f} | {t_w:.2f} s | {gbs(out16, t_w):.2f} | "
              f"{t_r:.3f} s | {gbs(out16, t_r):.2f} |", flush=True)
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
