"""The attention model's trunk as one native forward and one native backward (trainer/kernels/attention_trunk.c).

The trunk is everything of `models.attention` after the data layers' products: each branch's two hidden layers,
the dropped concatenation, the attention MLP, the modality weights (softmax optional), their weighted sum and
the heads. On [K, 32, 128] tensors PyTorch spends most of its 3.3-4.8 ms a step (forward and backward, K = 5,
three branches) dispatching ~80 small operators; the kernel does the same arithmetic in two parallel loops for
the forward and two for the backward (~1.5 ms, 1.6-2.4 ms with this module's Python and autograd; benchmarks/
RESULTS.md). It is used where trainer.native's other kernels are (float32 on a
CPU, in the trainer's training steps, hidden size a multiple of 16) and when no branch is masked; evaluation and
every other case run the PyTorch layers, which give the same values to float32 rounding.

`AttentionTrunk.apply(dims, softmax, keep, *zs, *params)` is an autograd function: the data layers' outputs `zs` (before
their ReLU) and the trunk's parameters in, (emotion logits, valence, modality weights, fused vector) out; its
backward returns the gradient of every input, so the data layers and BatchedAdam see the usual autograd graph.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import torch

from trainer import native

_P = ctypes.c_void_p          # every pointer goes in as an address (an int), no ctypes casts


class _Trunk(ctypes.Structure):
    """The kernel's trunk_t (kernels/attention_trunk.h), field for field."""

    _fields_ = [(n, ctypes.c_int) for n in ("K", "B", "M", "H", "C", "V", "softmax", "threads")] + [(n, _P) for n in (
        "z", "w2", "b2", "w3", "b3", "keep",
        "wa1", "ba1", "wa2", "ba2", "wa3", "ba3", "wf", "bf", "we", "be", "wv", "bv",
        "a1", "a2", "h", "cat", "u1", "u2", "u3", "wn", "wt", "weights", "fused", "emo", "val",
        "g_emo", "g_val", "g_weights", "g_fused",
        "g_f", "g_u3", "g_u2", "g_u1", "g_s", "g_cat", "g_h", "g_a2",
        "g_z", "g_w2", "g_b2", "g_w3", "g_b3", "g_wa1", "g_ba1", "g_wa2", "g_ba2", "g_wa3", "g_ba3", "g_wf", "g_bf",
        "g_we", "g_be", "g_wv", "g_bv")]


_PER_BRANCH = ("w2", "b2", "w3", "b3")
_SINGLE = ("wa1", "ba1", "wa2", "ba2", "wa3", "ba3", "wf", "bf", "we", "be", "wv", "bv")


def _addresses(ts: Sequence[torch.Tensor]) -> ctypes.Array:
    return (_P * len(ts))(*(t.data_ptr() for t in ts))


def _parts(buf: torch.Tensor, sizes: Sequence[int]) -> list[int]:
    """The addresses of consecutive parts of `sizes` floats in buf."""
    out, at = [], buf.data_ptr()
    for n in sizes:
        out.append(at)
        at += 4 * n
    return out


class _Pool(threading.local):
    """Reused float32 buffers by size (and the kernel structs of `_trunk`), one pool a thread: a fresh multi-MB
    tensor every step costs a millisecond of page faults on these VMs. A buffer is taken for a step's forward (the
    activations its backward reads) or for one backward call (its scratch) and given back after; one never given
    back (a forward without a backward) is simply freed by Python."""

    def __init__(self) -> None:
        self.free: dict[int, list[torch.Tensor]] = {}
        self.structs: dict[tuple, tuple[_Trunk, Any]] = {}

    def take(self, n: int) -> torch.Tensor:
        bufs = self.free.get(n)
        return bufs.pop() if bufs else torch.empty(n)

    def give(self, buf: torch.Tensor) -> None:
        bufs = self.free.setdefault(buf.numel(), [])
        if len(bufs) < 2:
            bufs.append(buf)


_pool = _Pool()


def param_names(n_branches: int, n_classes: int, n_valence: int) -> list[str]:
    """The trunk's parameters in the order `AttentionTrunk.apply` takes them (models.attention's names)."""
    names = [f"enc{i}_2_w0" for i in range(n_branches)] + [f"enc{i}_2_b" for i in range(n_branches)]
    names += [f"enc{i}_3_w0" for i in range(n_branches)] + [f"enc{i}_3_b" for i in range(n_branches)]
    names += ["att_1_w0", "att_1_b", "att_2_w0", "att_2_b", "att_3_w0", "att_3_b", "fc_att_w0", "fc_att_b"]
    if n_classes:
        names += ["fc_out_1_w0", "fc_out_1_b"]
    if n_valence:
        names += ["fc_out_2_w0", "fc_out_2_b"]
    return names


def usable(tensors: Sequence[torch.Tensor], hidden: int) -> bool:
    """Whether the trunk can run natively on these parameters: all float32 contiguous CPU tensors, the hidden size
    a multiple of 16, the kernels loaded."""
    return (hidden % 16 == 0 and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                                     for t in tensors) and native.library() is not None)


class AttentionTrunk(torch.autograd.Function):
    """(emotion [K, B, C], valence [K, B, V], weights [K, B, M], fused [K, B, H]) from the data layers' outputs;
    see the module docstring. `keep`: the attention MLP's dropout keep-mask times 1 / (1 - p), [K, B, M H], or
    None; `softmax`: normalise the modality weights."""

    @staticmethod
    def forward(ctx, dims: tuple[int, int, int, int, int, int], softmax: bool,  # type: ignore[override]
                keep: torch.Tensor | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        K, B, M, H, C, V = dims
        zs, params = [z.contiguous() for z in tensors[:M]], tensors[M:]
        t, held = _trunk(dims, softmax, params)
        t.z, t.keep = ctypes.addressof(zs_addr := _addresses(zs)), None if keep is None else keep.data_ptr()
        KBH = K * B * H
        sizes = [M * KBH] * 3 + [K * B * M * H] + [KBH] * 3 + [K * (M + C + V) * H]
        saved = _pool.take(sum(sizes))
        outs = [torch.empty(K, B, n) for n in (C, V, M, H)]
        t.a1, t.a2, t.h, t.cat, t.u1, t.u2, t.u3, t.wn = _parts(saved, sizes)
        t.emo, t.val, t.weights, t.fused = (o.data_ptr() for o in outs)
        native.library().trunk_forward(ctypes.byref(t))
        ctx.t, ctx.held, ctx.saved, ctx.dims = t, (held, zs_addr), saved, dims
        ctx.save_for_backward(outs[2], outs[3], *zs, *params, *(() if keep is None else (keep,)))
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_emo: torch.Tensor | None, g_val: torch.Tensor | None,  # type: ignore[override]
                 g_weights: torch.Tensor | None, g_fused: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        K, B, M, H, C, V = ctx.dims
        _, _, *inputs = ctx.saved_tensors      # (kept alive and checked for in-place changes by autograd)
        params = inputs[M:M + len(param_names(M, C, V))]
        t = ctx.t
        grads_in = [None if g is None else g.float().contiguous() for g in (g_emo, g_val, g_weights, g_fused)]
        t.g_emo, t.g_val, t.g_weights, t.g_fused = (None if g is None else g.data_ptr() for g in grads_in)
        KBH = K * B * H
        sizes = [KBH] * 4 + [K * B * M, K * B * M * H, M * KBH, M * KBH, t.threads * M * H * H]
        scratch = _pool.take(sum(sizes))
        t.g_f, t.g_u3, t.g_u2, t.g_u1, t.g_s, t.g_cat, t.g_h, t.g_a2, t.wt = _parts(scratch, sizes)
        g_zs = [torch.empty(K, B, H) for _ in range(M)]
        g_params = [torch.empty_like(q) for q in params]
        gp = _named(g_params, M, C, V)
        arrays = [_addresses(g_zs), *(_addresses(gp[f]) for f in _PER_BRANCH)]
        t.g_z, t.g_w2, t.g_b2, t.g_w3, t.g_b3 = (ctypes.addressof(a) for a in arrays)
        for f in _SINGLE:
            setattr(t, f"g_{f}", gp[f].data_ptr() if f in gp else None)
        native.library().trunk_backward(ctypes.byref(t))
        _pool.give(scratch)
        _pool.give(ctx.saved)
        ctx.saved = ctx.t = ctx.held = None
        return (None, None, None, *g_zs, *g_params)


def _trunk(dims: tuple[int, int, int, int, int, int], softmax: bool, params: Sequence[torch.Tensor]
           ) -> tuple[_Trunk, Any]:
    """A fresh kernel struct with the sizes and the parameters' addresses filled in, and what must stay alive
    while it is used (the per-branch address arrays). Built once per set of parameters (their storage does not
    move: the optimiser updates them in place) and copied for every step."""
    threads = torch.get_num_threads()
    key = (dims, softmax, threads, tuple(p.data_ptr() for p in params))
    hit = _pool.structs.get(key)
    if hit is None:
        K, B, M, H, C, V = dims
        t = _Trunk(K=K, B=B, M=M, H=H, C=C, V=V, softmax=int(softmax), threads=threads)
        p = _named(params, M, C, V)
        arrays = [_addresses(p[f]) for f in _PER_BRANCH]
        t.w2, t.b2, t.w3, t.b3 = (ctypes.addressof(a) for a in arrays)
        for f in _SINGLE:
            setattr(t, f, p[f].data_ptr() if f in p else None)
        if len(_pool.structs) > 64:
            _pool.structs.clear()
        hit = _pool.structs[key] = (t, arrays)
    return _Trunk.from_buffer_copy(hit[0]), hit[1]


def _named(params: Sequence[torch.Tensor], M: int, C: int, V: int) -> dict[str, Any]:
    """The kernel's names for `params` (in `param_names` order): per-branch lists and single tensors."""
    it = iter(params)
    out: dict[str, Any] = {f: [next(it) for _ in range(M)] for f in ("w2", "b2", "w3", "b3")}
    for f in ("wa1", "ba1", "wa2", "ba2", "wa3", "ba3", "wf", "bf"):
        out[f] = next(it)
    if C:
        out["we"], out["be"] = next(it), next(it)
    if V:
        out["wv"], out["bv"] = next(it), next(it)
    return out
