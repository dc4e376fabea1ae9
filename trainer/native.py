"""Native kernels for the hot spots of training on CPUs: a data layer's forward product, its weight gradient fused
with its Adam step, and the attention model's trunk (`trainer.native_trunk`).

The first layer of every branch (a data input of 768-5120 dims to the hidden size) holds nearly all of a model's
parameters. In PyTorch its step is three passes over memory: the weight gradient x^T g written by a matmul
(13 MB for a 5120-d lexical feature and K = 5 models), then fused Adam reading it back with the weights and both
moments. `trainer/kernels/wgrad_adam.c` computes the gradient block by block and applies Adam to each block while
it is still in registers: same arithmetic as torch's fused Adam (L2 weight decay, bias corrections), a different
summation order for the gradient (float32 rounding differences of ~1e-7 relative), never a written gradient.
Given the next training step's input (`x_next`, see models.base.BatchedModel.prefetch), the same pass also makes
that step's forward product on the updated weights, so the weights are read once a step, not twice.
`trainer/kernels/data_forward.c` computes the layer's forward product x[k] @ W[k] (with the dropout scale and the
bias) in (model, rows, 64 columns) tiles spread evenly over the threads, where torch's bmm gives each of the K
models to one thread (K = 5 on two threads: 3 + 2). `trainer/kernels/attention_trunk.c` runs the rest of the
attention model (its small layers, ~80 PyTorch operators a step) as one forward and one backward call; see
trainer.native_trunk. `trainer/kernels/dropout.c` makes a dropout mask from its random bits and applies it in one
pass (the same decisions as models.base's keep_mask, which takes four PyTorch passes).

The C sources are compiled on first use with the system C compiler (`$CC`, else `cc`; `-O3 -march=native
-fopenmp`, about 2 s) into one library in a cache keyed by the sources, the flags and the CPU
(`$FEATSTORE_KERNEL_CACHE`, else `~/.cache/featstore/kernels`), and loaded with ctypes. They run on torch's own
OpenMP runtime (libgomp, loaded with torch, so no second thread pool competes for the cores; where torch runs on
another runtime the kernels are not used) at torch's thread count, and every element they write is computed by
one thread in one order, so results do not depend on the thread count. Float32 on the CPU only; anything else
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

KERNELS = Path(__file__).with_name("kernels")
SOURCES = (KERNELS / "wgrad_adam.c", KERNELS / "data_forward.c", KERNELS / "attention_trunk.c", KERNELS / "dropout.c")
HEADERS = (KERNELS / "vec.h", KERNELS / "forward_tile.h", KERNELS / "attention_trunk.h")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)       # expf (the trunk's softmax): the library names libm itself, as any program that links it needs

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


def _compile(cc: str, extra: Sequence[str] = ()) -> Path:
    flags = (*FLAGS, *extra)
    parts = [*(s.read_bytes() for s in (*SOURCES, *HEADERS)), " ".join((*flags, *LIBS)).encode(), cc.encode(),
             _cpu_signature().encode(), torch.__version__.encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]
    out = _cache_dir() / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)   # several processes may compile at once
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, *map(str, SOURCES), *LIBS, "-o", tmp], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            errors = [ln.strip() for ln in said if "error" in ln]     # the first error, not the caret line under it
            why = errors[0] if errors else said[-1].strip() if said else f"exit status {proc.returncode}"
            raise RuntimeError(f"{cc} failed ({why})")
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


def _compiler() -> str:
    """The C compiler: $CC, else cc."""
    return os.environ.get("CC") or "cc"


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets the argument and result types of the kernels' entry points."""
    P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.wgrad_adam.argtypes = [P, ctypes.c_longlong, P, P, P, P, I, I, I, I, P, P, P, P, F, F, F, F, I]
    lib.wgrad_adam.restype = I
    lib.data_forward.argtypes = [P, ctypes.c_longlong, P, P, P, P, I, I, I, I, I]
    lib.data_forward.restype = None
    lib.wgrad_adam_next.argtypes = lib.wgrad_adam.argtypes[:-1] + [P, ctypes.c_longlong, P, I]
    lib.wgrad_adam_next.restype = I
    lib.scale_bias.argtypes = [P, P, P, I, I, I]
    lib.scale_bias.restype = None
    lib.dropout_apply.argtypes = [P, ctypes.c_longlong, P, ctypes.c_longlong, P, P, P, P, I, ctypes.c_longlong, I]
    lib.dropout_apply.restype = None
    for f in (lib.trunk_forward, lib.trunk_backward):    # trainer.native_trunk
        f.argtypes, f.restype = [P], None
    lib.vector_lanes.argtypes, lib.vector_lanes.restype = [], ctypes.c_int
    return lib


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
        cc = _compiler()
        if shutil.which(cc) is None:
            _reason = f"no C compiler ('{cc}' not found; set CC)"
            return None
        try:
            lib = ctypes.CDLL(str(_compile(cc)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _reason = f"could not build the kernels in {KERNELS.parent.name}/{KERNELS.name}: {e}"
            return None
        _declare(lib)
        _lib = lib
        return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels (building them on first use), or None where they cannot be used (`unavailable()`)."""
    return _load()


def _loaded() -> ctypes.CDLL:
    """The kernels, for a call that needs them (RuntimeError saying why they are not available)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {_reason}")
    return lib


def reset() -> None:
    """Forget the loaded kernels and why not, so that the next use tries again (after changing CC or the
    FEATSTORE_NATIVE / FEATSTORE_KERNEL_CACHE variables)."""
    global _lib, _reason, _tried
    with _lock:
        _lib, _reason, _tried = None, None, False


def unavailable() -> str | None:
    """Why the kernels cannot be used (loading them first if not tried yet), or None when they are loaded."""
    return None if _load() is not None else _reason


def vector_lanes() -> int:
    """The float32 lanes of the kernels' native vectors (16: AVX-512, 8: AVX2, 4: NEON / SSE); RuntimeError when
    the kernels are not available."""
    return int(_loaded().vector_lanes())


def status() -> str:
    """'native' when the kernels are loaded, else 'torch (<why not>)'."""
    why = unavailable()
    return "native" if why is None else f"torch ({why})"


def usable(w: torch.Tensor) -> bool:
    """Whether weight `w` [K, D, H] can take the native kernels: float32, contiguous, on the CPU, H a multiple of 16
    (their vector width; other widths would run their scalar loops, slower than PyTorch), kernels loaded."""
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


_hyper_key: tuple | None = None
_hyper: tuple[torch.Tensor, ...] = ()


def _adam_hyper(lr: Sequence[float], weight_decay: Sequence[float], steps: Sequence[int], active: Sequence[bool],
                betas: tuple[float, float]) -> tuple[torch.Tensor, ...]:
    """(step sizes, sqrt of the second bias corrections, weight decays, active flags) as the kernel takes them,
    kept while they stay the same (every data layer of a model takes the same ones at a step)."""
    global _hyper_key, _hyper
    key = (tuple(lr), tuple(weight_decay), tuple(steps), tuple(bool(a) for a in active), tuple(betas))
    with _lock:
        if key != _hyper_key:
            b1, b2 = betas
            K = len(steps)
            _hyper = (torch.tensor([lr[k] / (1.0 - b1 ** (steps[k] + 1)) for k in range(K)], dtype=torch.float32),
                      torch.tensor([(1.0 - b2 ** (steps[k] + 1)) ** 0.5 for k in range(K)], dtype=torch.float32),
                      torch.tensor([float(v) for v in weight_decay], dtype=torch.float32),
                      torch.tensor([bool(a) for a in active], dtype=torch.uint8))
            _hyper_key = key
        return _hyper


def wgrad_adam_(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                lr: Sequence[float], weight_decay: Sequence[float], steps: Sequence[int], active: Sequence[bool],
                betas: tuple[float, float], eps: float, x_next: torch.Tensor | None = None) -> torch.Tensor | None:
    """One Adam step of w [K, D, H] (in place, with its moments) on the gradient x[k]^T g[k] of every active model.

    x: [K, B, D] or [B, D] (rows shared by every model), float32, rows contiguous; g: [K, B, H]. steps[k]: the
    number of steps model k has taken before this one. Same update as torch.optim.Adam(weight_decay=...).
    x_next (the next training step's input, shaped as x): also returns x_next[k] @ w[k] on the updated weights,
    made in the same pass over w, equal to `data_forward(x_next, w, None)` after the step."""
    lib = _loaded()
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
    step_size, bc2_sqrt, wd, act = _adam_hyper(lr, weight_decay, steps, active, betas)
    args = (x.data_ptr(), int(x_stride), g.data_ptr(), w.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), K, B,
            D, H, step_size.data_ptr(), bc2_sqrt.data_ptr(), wd.data_ptr(), act.data_ptr(), 1.0 - b1, b2, 1.0 - b2, eps)
    z_next = None
    if x_next is None:
        rc = lib.wgrad_adam(*args, torch.get_num_threads())
    else:
        if H % 16:
            raise ValueError(f"wgrad_adam_: a next-step product needs a width that is a multiple of 16, got {H}")
        xn, xn_stride = _rows(x_next, K, D)
        if xn.shape[-2] != B:
            raise ValueError(f"wgrad_adam_: x_next {tuple(x_next.shape)} does not fit x {tuple(x.shape)}")
        z_next = torch.empty(K, B, H)
        rc = lib.wgrad_adam_next(*args, xn.data_ptr(), int(xn_stride), z_next.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise MemoryError(f"wgrad_adam_: could not allocate {torch.get_num_threads()} x {64 * B * 4} bytes of scratch")
    return z_next


def scale_bias_(y: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
    """y[k] = y[k] * scale[k] + b[k] in place (y: a contiguous float32 [K, B, H]; b [K, 1, H]; scale [K, 1, 1]):
    `data_forward`'s epilogue, for a product made by `wgrad_adam_(..., x_next=)`; the two together give
    data_forward's numbers bit for bit."""
    lib = _loaded()
    K, B, H = y.shape
    if y.dtype != torch.float32 or not y.is_contiguous() or (b is not None and b.numel() != K * H) or \
            (scale is not None and scale.numel() != K):
        raise ValueError(f"scale_bias_: y {y.dtype} {tuple(y.shape)}, b, scale do not fit")
    b = None if b is None else b.contiguous()
    scale = None if scale is None else scale.contiguous()
    lib.scale_bias(y.data_ptr(), None if b is None else b.data_ptr(), None if scale is None else scale.data_ptr(),
                   K, B, H)
    return y


def data_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """y[k] = (x[k] @ w[k]) * scale[k] + b[k] for every model k: the forward product of a data layer.

    x: [K, B, D] or [B, D] (rows shared by every model), float32, rows contiguous; w: [K, D, H] (`usable`);
    b: [K, 1, H] or None; scale: [K, 1, 1] or None. Same values as `torch.addcmul(b, torch.bmm(x, w), scale)` to
    float32 rounding (each element summed over D in order), with the (model, row, column) tiles spread evenly
    over the threads (torch's bmm runs each model's product on one thread). `out`: a [K, B, H] float32 buffer to
    write (else a new tensor)."""
    lib = _loaded()
    K, D, H = w.shape
    if not usable(w):
        raise ValueError(f"data_forward: the weight must be a contiguous float32 CPU tensor [K, D, H] with H a "
                         f"multiple of 16, got {w.dtype} {tuple(w.shape)} on {w.device}")
    x, x_stride = _rows(x, K, D)
    B = int(x.shape[-2])
    if b is not None:
        b = b.contiguous()
    if b is not None and (b.numel() != K * H or b.dtype != torch.float32):
        raise ValueError(f"data_forward: bias {b.dtype} {tuple(b.shape)} does not fit w {tuple(w.shape)}")
    if scale is not None:
        scale = scale.contiguous()
        if scale.numel() != K or scale.dtype != torch.float32:
            raise ValueError(f"data_forward: scale {scale.dtype} {tuple(scale.shape)} needs one float32 per model")
    if out is None:
        out = torch.empty(K, B, H, dtype=torch.float32)
    elif tuple(out.shape) != (K, B, H) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"data_forward: out {out.dtype} {tuple(out.shape)} is not a contiguous float32 "
                         f"[{K}, {B}, {H}]")
    threads = torch.get_num_threads() if K * B * D * H >= 1 << 20 else 1   # a parallel region costs ~20 us
    lib.data_forward(x.data_ptr(), int(x_stride), w.data_ptr(), None if b is None else b.data_ptr(),
                     None if scale is None else scale.data_ptr(), out.data_ptr(), K, B, D, H, threads)
    return out


def dropout_apply(x: torch.Tensor | None, raw: torch.Tensor, bits: torch.Tensor, thr: torch.Tensor,
                  scale: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out[k] = x[k] * keep[k] * scale[k] (x None: the mask; scale None: 1) in one pass, where keep[k] is the
    dropout decision `models.base.BatchedModel.keep_mask` makes from model k's random words raw[k] (int64, rows
    contiguous) with bits[k] random bits an element and threshold thr[k] (int32 [K] each). x: [K, n, d] or [n, d]
    (or an expanded [K, n, d]: rows shared by every model), float32; out: a contiguous float32 [K, n, d]."""
    lib = _loaded()
    K, numel = out.shape[0], out[0].numel()
    if out.dtype != torch.float32 or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError(f"dropout_apply: out must be a contiguous float32 CPU tensor, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    if raw.dtype != torch.int64 or raw.dim() != 2 or raw.shape[0] != K or raw.stride(1) != 1 \
            or raw.shape[1] * 64 < numel * int(bits.max()):
        raise ValueError(f"dropout_apply: raw {raw.dtype} {tuple(raw.shape)} does not hold {numel} draws a model")
    if bits.dtype != torch.int32 or thr.dtype != torch.int32 or bits.numel() != K or thr.numel() != K:
        raise ValueError("dropout_apply: bits and thr need one int32 per model")
    x_stride = 0
    if x is not None:
        x, x_stride = _rows(x, K, out.shape[-1])
        if out.dim() != 3 or x.shape[-2] != out.shape[1]:
            raise ValueError(f"dropout_apply: x {tuple(x.shape)} does not fit out {tuple(out.shape)}")
    if scale is not None:
        scale = scale.contiguous()
        if scale.numel() != K or scale.dtype != torch.float32:
            raise ValueError("dropout_apply: scale needs one float32 per model")
    threads = torch.get_num_threads() if K * numel >= 1 << 16 else 1
    lib.dropout_apply(None if x is None else x.data_ptr(), int(x_stride), raw.data_ptr(), raw.stride(0) * 8,
                      bits.data_ptr(), thr.data_ptr(), None if scale is None else scale.data_ptr(), out.data_ptr(),
                      K, numel, threads)
    return out
