"""A native kernel for the hot spot of training on CPUs: a data layer's weight gradient fused with its Adam step.

The first layer of every branch (a data input of 768-5120 dims to the hidden size) holds nearly all of a model's
parameters. In PyTorch its step is three passes over memory: the weight gradient x^T g written by a matmul
(13 MB for a 5120-d lexical feature and K = 5 models), then fused Adam reading it back with the weights and both
moments. `trainer/kernels/wgrad_adam.c` computes the gradient block by block and applies Adam to each block while
it is still in registers: same arithmetic as torch's fused Adam (L2 weight decay, bias corrections), a different
summation order for the gradient (float32 rounding differences of ~1e-7 relative), never a written gradient.

The C source is compiled on first use with the system C compiler (`$CC`, else `cc`; `-O3 -march=native
-fopenmp`, about 0.3 s) into a cache keyed by the source, the flags and the CPU (`$FEATSTORE_KERNEL_CACHE`, else
`~/.cache/featstore/kernels`), and loaded with ctypes. It runs on torch's own OpenMP runtime (libgomp, loaded with
torch, so no second thread pool competes for the cores; where torch runs on another runtime the kernel is not
used) at torch's thread count. Float32 on the CPU only; anything else
(CUDA, the bf16 data path, no compiler, `FEATSTORE_NATIVE=0`) keeps the PyTorch path, which gives the same
results to float32 rounding. `status()` says which and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels") / "wgrad_adam.c"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None     # why the kernel is not available (None: not tried yet, or loaded)
_tried = False


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags: a -march=native binary must not move to another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("FEATSTORE_KERNEL_CACHE") or Path.home() / ".cache" / "featstore" / "kernels")


def _compile(cc: str) -> Path:
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), cc.encode(), _cpu_signature().encode(),
                                     torch.__version__.encode()])).hexdigest()[:20]
    out = _cache_dir() / f"wgrad_adam-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)   # several processes may compile at once
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"{cc} failed ({said[-1] if said else f'exit status {proc.returncode}'})")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _torch_gomp() -> bool:
    """Whether torch runs on GNU OpenMP (libgomp, mapped into this process): the kernel then shares torch's
    thread pool. Another OpenMP runtime (Intel's libiomp5 in some builds) would start a second pool whose
    threads compete with torch's for the cores."""
    try:
        maps = Path("/proc/self/maps").read_text(errors="replace")
    except OSError:
        return False
    return "libgomp" in maps and "OpenMP" in torch.__config__.parallel_info()


def _load() -> ctypes.CDLL | None:
    global _lib, _reason, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("FEATSTORE_NATIVE", "1") == "0":
            _reason = "disabled by FEATSTORE_NATIVE=0"
            return None
        if not _torch_gomp():
            _reason = "torch does not run on GNU OpenMP (libgomp) here; a second thread pool would compete with its"
            return None
        cc = os.environ.get("CC") or "cc"
        if shutil.which(cc) is None:
            _reason = f"no C compiler ('{cc}' not found; set CC)"
            return None
        try:
            lib = ctypes.CDLL(str(_compile(cc)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _reason = f"could not build {SOURCE.name}: {e}"
            return None
        P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        lib.wgrad_adam.argtypes = [P, ctypes.c_longlong, P, P, P, P, I, I, I, I, P, P, P, P, F, F, F, F, I]
        lib.wgrad_adam.restype = I
        _lib = lib
        return lib


def reset() -> None:
    """Forget the loaded kernel and why not, so that the next use tries again (after changing CC or the
    FEATSTORE_NATIVE / FEATSTORE_KERNEL_CACHE variables)."""
    global _lib, _reason, _tried
    with _lock:
        _lib, _reason, _tried = None, None, False


def unavailable() -> str | None:
    """Why the kernel cannot be used (loading it first if not tried yet), or None when it is loaded."""
    return None if _load() is not None else _reason


def status() -> str:
    """'native' when the kernel is loaded, else 'torch (<why not>)'."""
    why = unavailable()
    return "native" if why is None else f"torch ({why})"


def usable(w: torch.Tensor) -> bool:
    """Whether weight `w` [K, D, H] can take the fused step: float32, contiguous, on the CPU, H a multiple of 16
    (the kernel's vector width; other widths would run its scalar loop, slower than PyTorch), kernel loaded."""
    return (w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 3 and w.is_contiguous()
            and w.shape[2] % 16 == 0 and _load() is not None)


def _rows(x: torch.Tensor, K: int, D: int) -> tuple[torch.Tensor, int]:
    """x [K, B, D] (or [B, D] / an expanded [K, B, D]: rows shared by every model) as a tensor with contiguous
    rows and its per-model stride in elements (0 when shared)."""
    if x.dim() == 3 and x.stride(0) == 0:
        x = x[0]
    x = x.contiguous()
    if x.dtype != torch.float32 or x.shape[-1] != D or (x.dim() == 3 and x.shape[0] != K) or x.dim() not in (2, 3):
        raise ValueError(f"the native kernels take float32 rows [K={K}, B, D={D}] or [B, D], got {x.dtype} "
                         f"{tuple(x.shape)}")
    return x, 0 if x.dim() == 2 else x.stride(0)


def wgrad_adam_(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                lr: Sequence[float], weight_decay: Sequence[float], steps: Sequence[int], active: Sequence[bool],
                betas: tuple[float, float], eps: float) -> None:
    """One Adam step of w [K, D, H] (in place, with its moments) on the gradient x[k]^T g[k] of every active model.

    x: [K, B, D] or [B, D] (rows shared by every model), float32, rows contiguous; g: [K, B, H]. steps[k]: the
    number of steps model k has taken before this one. Same update as torch.optim.Adam(weight_decay=...)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernel is not available: {_reason}")
    K, D, H = w.shape
    for t in (w, exp_avg, exp_avg_sq):
        if t.shape != w.shape or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"wgrad_adam_: the weight and its moments must be contiguous float32 CPU tensors of "
                             f"one shape, got {t.dtype} {tuple(t.shape)} on {t.device}")
    x, x_stride = _rows(x, K, D)
    B = int(x.shape[-2])
    g = g.contiguous()
    if tuple(g.shape) != (K, B, H) or g.dtype != torch.float32:
        raise ValueError(f"wgrad_adam_: x {tuple(x.shape)}, g {tuple(g.shape)} do not fit w {tuple(w.shape)}")
    b1, b2 = betas
    step_size = torch.tensor([lr[k] / (1.0 - b1 ** (steps[k] + 1)) for k in range(K)], dtype=torch.float32)
    bc2_sqrt = torch.tensor([(1.0 - b2 ** (steps[k] + 1)) ** 0.5 for k in range(K)], dtype=torch.float32)
    wd = torch.tensor([float(v) for v in weight_decay], dtype=torch.float32)
    act = torch.tensor([bool(a) for a in active], dtype=torch.uint8)
    rc = lib.wgrad_adam(x.data_ptr(), int(x_stride), g.data_ptr(), w.data_ptr(), exp_avg.data_ptr(),
                        exp_avg_sq.data_ptr(), K, B, D, H, step_size.data_ptr(), bc2_sqrt.data_ptr(), wd.data_ptr(),
                        act.data_ptr(), 1.0 - b1, b2, 1.0 - b2, eps, torch.get_num_threads())
    if rc != 0:
        raise MemoryError(f"wgrad_adam_: could not allocate {torch.get_num_threads()} x {64 * B * 4} bytes of scratch")
