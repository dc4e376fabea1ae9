"""Shared bits of the benchmark scripts: the machine line, the load line, waiting for idle CPUs, the matmul rate."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    """nproc, CPU model and its widest vector ISA, RAM and Python version, for RESULTS.md (the same model name
    covers VMs with and without AVX-512, and the kernels' speed depends on it)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith(("flags", "Features"))), []))
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"))
                if flag in flags), "no AVX")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"nproc {os.cpu_count()}, {cpu} ({isa}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def uptime() -> str:
    """`uptime` (or the load averages)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_idle(seconds: float) -> float:
    """Fraction of all CPUs idle over the next `seconds` (from /proc/stat)."""
    def snap() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return f[3] + f[4], sum(f)          # idle + iowait, total
    i0, t0 = snap()
    time.sleep(seconds)
    i1, t1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(min_idle: float | None, max_wait: float) -> str:
    """Wait (up to max_wait s) until the CPUs are at least `min_idle` idle over 5 s; return what was seen."""
    t = time.monotonic()
    idle = cpu_idle(1.0)
    while min_idle is not None and idle < min_idle and time.monotonic() - t < max_wait:
        idle = cpu_idle(5.0)
    return f"{idle:.0%} idle"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 torch.mm at `threads` torch threads (median of `repeats`): the CPU's practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_seconds(lambda: torch.mm(a, b), repeats)


def stream_bandwidth(threads: int, mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s (read + written) of updating a `mib`-MiB float32 buffer in place at `threads` torch threads (median
    of `repeats`): the memory bandwidth a streaming read-modify-write kernel (an optimiser's step) can expect, far
    past the last-level cache. In place, because a copy into a second buffer also reads that buffer's lines before
    writing them, traffic a copy-based figure does not count (it read ~2/3 of this one here)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.rand(mib << 18)
    return 2 * a.numel() * 4 / median_seconds(lambda: a.mul_(0.9999), repeats)
