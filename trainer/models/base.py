"""The base of every batched model: K-stacked linear layers initialised per model, per-model dropout masks.

Each of the K models owns two generators: `init_generators[k]` (CPU; initialisation, then the trainer's
minibatch permutations) and `drop_generators[k]` (on the model's device; dropout masks). A model's numbers
never depend on which other models share its batch, so K models trained together equal K trained alone.

Initialisation is `nn.Linear`'s (kaiming-uniform weights with a=sqrt(5), uniform biases in +-1/sqrt(fan_in)),
drawn layer after layer in construction order: a model built from generator seed s starts from the same
weights as the MERTools module built after `torch.manual_seed(s)`.

Dropout: an element is kept when a uniform random integer clears a threshold -- one random bit for p = 0.5
(MERTools' default), two for p = 1/4 or 3/4, four for multiples of 1/16, 8 bits for multiples of 1/256, 16 bits
otherwise (p within 8e-6 of the nominal value). Raw random bytes cost ~0.5 ns each against ~6 ns a float from
`torch.rand` on these CPUs, and the input dropout of the first layers needs ~1M decisions a step when K = 5. The
keep-mask is made in float arithmetic, clamp(u - thr + 1, 0, 1), 2-3x faster than a comparison to a bool tensor and
a product with it.

Hot path (the first layer of every branch, where nearly all the parameters and FLOPs are): data inputs are masked
into reused buffers (the inputs themselves are never modified), and the layer's weight gradient is written by
`torch.bmm(out=)` straight into a persistent `.grad` buffer (no fresh 10-MB allocations, whose page faults cost
milliseconds on these virtual machines; made at the first step that needs it, so never on the native path). In
the trainer (`defer_data_grads`, float32 on a CPU where trainer.native's kernels are built) the forward product
is trainer.native's (every model's tiles spread over the threads) and the weight gradient is not computed here at
all: the backward leaves its inputs to BatchedAdam, which forms it and takes the Adam step in one pass. With
`data_dtype` = bfloat16 (Protocol.train_bf16) these layers multiply bf16 copies of the inputs (masked after the
copy, in bf16, when the dropout draws fit in 8 bits) and of the weights, kept in reused buffers too (autocast would
cast into fresh tensors every step); the trainer runs the other layers under autocast; weights, gradients and
Adam stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainer import native


@dataclass
class ModelSpec:
    """What a batched model needs to know: branches, input sizes, heads, K and each model's randomness."""

    branches: dict[str, tuple[str, ...]]     # branch name -> feature names concatenated into its input
    dims: dict[str, int]                     # feature name -> input dimension
    n_classes: int                           # emotion classes (0: no emotion head, e.g. sentiment datasets)
    n_valence: int                           # 1: a valence (or sentiment) regression head, 0: none
    hidden: int
    dropout: Sequence[float]                 # per model
    init_generators: Sequence[torch.Generator]   # per model, CPU
    drop_generators: Sequence[torch.Generator]   # per model, on `device`
    device: str | torch.device = "cpu"
    modalities: dict[str, str] | None = None     # branch name -> audio | text | visual (None: ask the catalog)

    @property
    def n_models(self) -> int:
        return len(self.dropout)


class _DataLinear(torch.autograd.Function):
    """y = (x @ W) * scale + b for a data input x [K, n, D] (no gradient). dW is written into W.grad in place
    (a persistent buffer), so autograd never allocates nor accumulates it; returning None for W is deliberate.
    defer=True (trainer.native): y comes from native.data_forward, and dW is not computed at all; (x, scaled output
    gradient) are left on W as `_deferred_grad` for BatchedAdam, which computes dW and the Adam step in one pass.

    low = (x_low, w_low, dw_low): the products run in bfloat16 (train_bf16, or under autocast) on copies of x and
    W held in these reused buffers, and dW is stored back in float32. Reused, because a fresh multi-MB tensor
    per step costs milliseconds of page faults on these VMs (a [5, 5120, 128] cast took 6 ms, not 0.3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None,
                grad_buf: torch.Tensor | None, low: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
                defer: bool = False, product: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):
            if product is not None:   # x @ w, made by the previous step's Adam pass (BatchedModel.prefetch)
                out = native.scale_bias_(product, b, scale)
            elif defer:   # trainer.native: the product balanced over the threads, scale and bias applied
                out = native.data_forward(x, w, b, scale)
            else:
                if low is None:
                    y = torch.bmm(x, w)
                else:
                    if x.dtype != low[0].dtype:
                        x = low[0].copy_(x)
                    y = torch.bmm(x, low[1].copy_(w)).float()
                out = torch.addcmul(b, y, scale) if scale is not None else y.add_(b)
        ctx.save_for_backward(x, scale if scale is not None else torch.empty(0))
        ctx.has_scale, ctx.grad_buf, ctx.low = scale is not None, grad_buf, low
        ctx.deferred_to = w if defer else None
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, scale = ctx.saved_tensors
        g = g.float()
        gb = g.sum(dim=1, keepdim=True)
        if ctx.has_scale:
            g = g * scale
        if ctx.deferred_to is not None:
            if getattr(ctx.deferred_to, "_deferred_grad", None) is not None:
                raise RuntimeError("a data layer ran twice in one training step (or backward ran twice without an "
                                   "optimiser step): its deferred gradient would be overwritten")
            ctx.deferred_to._deferred_grad = (x, g)
        elif ctx.low is None:
            torch.bmm(x.transpose(1, 2), g, out=ctx.grad_buf)
        else:
            dw = ctx.low[2]
            ctx.grad_buf.copy_(torch.bmm(x.transpose(1, 2), g.to(dw.dtype), out=dw))
        return None, None, gb, None, None, None, None, None


class BatchedModel(nn.Module):
    """K independent models in one module. Subclasses build layers with `linear()` and drop with `drop()`."""

    name = "base"
    # True where forward draws every data layer's dropout mask before any other random number, in the order of
    # `data_inputs`: the next step's masks can then be drawn early (`prefetch`) without changing any draw
    prefetch_safe = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if not (len(spec.dropout) == len(spec.init_generators) == len(spec.drop_generators)) or not spec.dropout:
            raise ValueError("ModelSpec: dropout, init_generators and drop_generators need one entry per model")
        self.spec = spec
        self.K = spec.n_models
        self.device = torch.device(spec.device)
        self.active: list[bool] | None = None   # set by the trainer: models that take this step (None: all)
        # set by the trainer during a training step: [K, n] weights of the minibatch rows (each active model's
        # sum to 1; padding rows and idle models 0), for auxiliary losses over batch statistics (MISA, MMIM)
        self.row_weight: torch.Tensor | None = None
        self._p = [float(p) for p in spec.dropout]
        for p in self._p:
            if not 0.0 <= p < 1.0:
                raise ValueError(f"dropout must be in [0, 1), got {p}")
        self._scale = torch.tensor([1.0 / (1.0 - p) for p in self._p], dtype=torch.float32,
                                   device=self.device).view(-1, 1, 1)
        # per model, so that a model's random stream never depends on the others in its batch: the fewest random
        # bits b in (1, 2, 4, 8) with p * 2^b a whole number (1 bit for p = 0.5, MERTools' default; 2 for 0.25),
        # else 16 (p within 8e-6 of its nominal value); an element is kept iff its b-bit draw u >= p * 2^b
        self._bits = [next((b for b in (1, 2, 4, 8) if float(p * (1 << b)).is_integer()), 16) for p in self._p]
        thr = [round(p * (1 << b)) - (1 << 15 if b == 16 else 0) for p, b in zip(self._p, self._bits)]
        # keep iff u >= thr  <=>  clamp(u - (thr - 1), 0, 1) == 1   (u an integer held exactly in float32)
        self._thr_m1 = torch.tensor([t - 1 for t in thr], dtype=torch.float32, device=self.device).view(-1, 1)
        self._mask_args = (torch.tensor(self._bits, dtype=torch.int32), torch.tensor(thr, dtype=torch.int32))  # native
        # bit offsets of the b-bit fields of a byte, b < 8: [1, 8 / b, 1]
        self._shifts = {b: torch.arange(0, 8, b, dtype=torch.uint8, device=self.device).view(1, 8 // b, 1)
                        for b in set(self._bits) if b < 8}
        self._buffers_cache: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self.data_weights: list[str] = []   # weights whose gradient is written in place (persistent .grad) or deferred
        self.data_dtype: torch.dtype | None = None   # set by the trainer (Protocol.train_bf16): see _DataLinear
        # set by the trainer when its optimiser takes deferred data-layer gradients (BatchedAdam + trainer.native)
        self.defer_data_grads = False

    # ------------------------------------------------------------------ layers
    def linear(self, name: str, in_dims: Sequence[int], out: int, data: bool = False) -> None:
        """Register K stacked Linear layers: weights `{name}_w{i}` [K, in_i, out] per input part, bias
        `{name}_b` [K, 1, out]. One nn.Linear(sum(in_dims), out) per model, its columns split by part.
        data=True: the layer reads data inputs (see `apply_data_linear`)."""
        fan_in = int(sum(in_dims))
        ws = [torch.empty(self.K, d, out) for d in in_dims]
        b = torch.empty(self.K, 1, out)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        for k, g in enumerate(self.spec.init_generators):
            w = torch.empty(out, fan_in)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
            bk = torch.empty(out)
            nn.init.uniform_(bk, -bound, bound, generator=g)
            start = 0
            for wi, d in zip(ws, in_dims):
                wi[k].copy_(w[:, start:start + d].t())
                start += d
            b[k, 0].copy_(bk)
        for i, wi in enumerate(ws):
            p = nn.Parameter(wi.to(self.device))
            self.register_parameter(f"{name}_w{i}", p)
            if data:   # its .grad, made on first use by the PyTorch path (apply_data_linear), is kept across steps
                p._direct_grad = True  # type: ignore[attr-defined]
                self.data_weights.append(f"{name}_w{i}")
        self.register_parameter(f"{name}_b", nn.Parameter(b.to(self.device)))

    def apply_linear(self, name: str, xs: Sequence[torch.Tensor], scale: torch.Tensor | None = None) -> torch.Tensor:
        """sum_i xs[i] @ W_i (times `scale` per model) + b. xs: [K, n, in_i] or [n, in_i] (shared by every model)."""
        b = getattr(self, f"{name}_b")
        if self.training and torch.is_grad_enabled() and getattr(getattr(self, f"{name}_w0"), "_direct_grad", False):
            # autograd would add into the persistent .grad that zero_grad keeps: a gradient summed over all steps
            raise RuntimeError(f"{type(self).__name__}: layer '{name}' was built with data=True; with gradients "
                               f"on it must run through apply_data_linear (or be built with data=False)")
        if scale is None and len(xs) == 1 and xs[0].dim() == 3:
            return torch.baddbmm(b, xs[0], getattr(self, f"{name}_w0"))
        acc: torch.Tensor | None = None
        for i, x in enumerate(xs):
            w = getattr(self, f"{name}_w{i}")
            y = torch.bmm(x, w) if x.dim() == 3 else torch.matmul(x, w)
            acc = y if acc is None else acc + y
        assert acc is not None
        if scale is not None:
            return torch.addcmul(b, acc, scale)
        return acc + b

    def apply_data_linear(self, name: str, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The first layer of an encoder over data inputs, input dropout included (masks drawn per part)."""
        if not (self.training and torch.is_grad_enabled()):
            return self.apply_linear(name, xs)   # evaluation: no dropout, plain (possibly shared) matmul
        b = getattr(self, f"{name}_b")     # (rows [n, D] shared by every model are expanded to K below)
        scale = self._scale if any(self._p) else None
        dev = xs[0].device.type
        low_dt = self.data_dtype or (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None)
        out: torch.Tensor | None = None
        for i, x in enumerate(xs):
            w = getattr(self, f"{name}_w{i}")
            zero_b = b if out is None else torch.zeros_like(b)
            # prefetched: this step's masked input (its masks drawn a step early), and its product when the last Adam
            # pass made it
            ready = getattr(w, "_next_product", None) or getattr(w, "_next_input", None)
            if ready is not None:
                w._next_product = w._next_input = None  # type: ignore[attr-defined]
                if ready[0] is not x:
                    raise RuntimeError(f"{type(self).__name__}: layer '{name}' was prefetched for another input "
                                       f"than this step's (prefetch() must get the inputs the next forward gets)")
                y = _DataLinear.apply(ready[1], w, zero_b, scale, w.grad, None, True, *ready[2:])
            else:
                x = x.expand(self.K, *x.shape) if x.dim() == 2 else x
                low = None
                if low_dt is not None:   # bf16 copies of x and W, and the bf16 dW, in reused buffers
                    low = (self._buffer(f"{name}_xlow{i}", tuple(x.shape), low_dt),
                           self._buffer(f"{name}_wlow{i}", tuple(w.shape), low_dt),
                           self._buffer(f"{name}_dwlow{i}", tuple(w.shape), low_dt))
                if scale is not None:
                    if low is not None and max(self._bits) <= 8:
                        # masked in the low dtype (draws of <= 8 bits are exact there): the copy, then a
                        # half-width product, instead of a float32 product and the copy of its result
                        x = low[0].copy_(x).mul_(self.keep_mask(x.shape[1], x.shape[2], tag="mask_low", dtype=low_dt))
                    else:
                        x = self.dropped(x, x.shape[1], x.shape[2],
                                         self._buffer(f"{name}_x{i}", tuple(x.shape), x.dtype))
                defer = self.defer_data_grads and low is None and native.usable(w)
                if not defer and w.grad is None:   # the persistent dW buffer (the native pass needs none)
                    w.grad = torch.zeros_like(w)
                y = _DataLinear.apply(x, w, zero_b, scale, w.grad, low, defer)
            out = y if out is None else out + y
        assert out is not None
        return out

    def data_inputs(self, inputs: dict[str, torch.Tensor]) -> list[tuple[str, list[torch.Tensor]]]:
        """(data layer, its input parts) in the order forward applies them: what `prefetch` prepares. A model with
        `prefetch_safe` defines it."""
        raise NotImplementedError

    def prefetch(self, inputs: dict[str, torch.Tensor], active: Sequence[bool] | None) -> bool:
        """Hand the next training step's inputs (and its active models) to the data layers now, between this
        step's backward and its optimiser step: their dropout masks are drawn and applied here, and BatchedAdam's
        native pass makes their forward products on the updated weights (trainer.native, `x_next`), so the next
        forward reads each weight once less. The next forward must get these same input tensors. Returns False
        (and draws nothing) where it does not apply: a model whose forward draws other random numbers first, the
        bf16 path, weights the kernels do not take."""
        if not (self.prefetch_safe and self.training and self.defer_data_grads and self.data_dtype is None):
            return False
        layers = self.data_inputs(inputs)
        if not all(native.usable(getattr(self, f"{name}_w{i}")) and x.dtype == torch.float32
                   for name, xs in layers for i, x in enumerate(xs)):
            return False
        before, self.active = self.active, None if active is None else list(active)
        flip = self._prefetch_flip = 1 - getattr(self, "_prefetch_flip", 0)   # this step's inputs stay intact
        try:
            for name, xs in layers:
                for i, x in enumerate(xs):
                    full = x.expand(self.K, *x.shape) if x.dim() == 2 else x
                    masked = full if not any(self._p) else self.dropped(
                        full, full.shape[1], full.shape[2], self._buffer(f"{name}_xnext{i}_{flip}", tuple(full.shape),
                                                                         torch.float32))
                    getattr(self, f"{name}_w{i}")._next_input = (x, masked)
        finally:
            self.active = before
        return True

    # ------------------------------------------------------------------ dropout
    def _buffer(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (tag, shape)
        buf = self._buffers_cache.get(key)
        if buf is None or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers_cache[key] = buf
        return buf

    def _draw(self, numel: int) -> torch.Tensor:
        """The random words of this step's mask of `numel` elements, [K, words] int64 (a reused buffer): each active
        model with dropout draws its own from its generator; the other rows keep what they held (unused)."""
        words = [(numel * b + 63) // 64 for b in self._bits]
        raw = self._buffer("raw", (self.K, max(words)), torch.int64)
        active = self.active if self.active is not None else [True] * self.K
        for k in range(self.K):
            if active[k] and self._p[k] > 0:
                raw[k, :words[k]].random_(-(2**63), None, generator=self.spec.drop_generators[k])
        return raw

    def dropped(self, x: torch.Tensor | None, n: int, d: int, out: torch.Tensor, scaled: bool = False) -> torch.Tensor:
        """x [K, n, d] (or [n, d] rows shared by every model) times this step's keep-mask, or the mask itself when x
        is None, times 1 / (1 - p) when `scaled`, written into `out` [K, n, d] float32. Needs dropout in training
        (`keep_mask` is not None). The numbers of `x * keep_mask(n, d)` (and `keep_mask * scale`), in one pass of
        trainer.native's kernel where it is loaded (float32 on a CPU) instead of four PyTorch passes."""
        if out.device.type == "cpu" and native.library() is not None:
            return native.dropout_apply(x, self._draw(n * d), *self._mask_args,
                                        self._scale.view(-1) if scaled else None, out)
        keep = self.keep_mask(n, d)
        assert keep is not None, "dropped() needs dropout in training"
        if x is None:
            return torch.mul(keep, self._scale, out=out) if scaled else out.copy_(keep)
        return torch.mul(x, keep, out=out) if not scaled else torch.mul(x, keep * self._scale, out=out)

    def keep_mask(self, n: int, d: int, tag: str = "mask", dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """[K, n, d] keep-mask (1 = kept) for this step, each model's drawn from its own generator.

        Only active models draw (a model idle at this step consumes nothing); the mask is a reused buffer,
        valid until the next call with the same tag and shape. `dtype` other than float32 needs draws of at most
        8 bits (integers up to 255 are exact in bfloat16 and float16)."""
        if not self.training or not any(self._p):
            return None
        if dtype != torch.float32 and max(self._bits) > 8:
            raise ValueError(f"a {dtype} keep-mask needs draws of at most 8 bits; dropout {self._p} needs 16")
        K, numel = self.K, n * d
        raw = self._draw(numel)
        mask = self._buffer(tag, (K, numel), dtype)
        thr_m1 = self._thr_m1.to(dtype)
        if len(set(self._bits)) == 1:
            self._fill(mask, raw, self._bits[0], thr_m1, numel)
        else:
            for k in range(K):
                self._fill(mask[k:k + 1], raw[k:k + 1], self._bits[k], thr_m1[k:k + 1], numel)
        for k in range(K):
            if self._p[k] == 0:
                mask[k].fill_(1.0)
        return mask.view(K, n, d)

    def _fill(self, mask: torch.Tensor, raw: torch.Tensor, bits: int, thr_m1: torch.Tensor, numel: int) -> None:
        """mask [k, numel] <- keep (1.0) / drop (0.0) from the random words raw [k, words]: element j * nbytes + i
        draws field j (bits j*b .. j*b+b-1) of byte i when b < 8, byte i when b = 8, int16 word i when b = 16."""
        rows = raw.shape[0]
        if bits < 8:
            per = 8 // bits
            nbytes = -(-numel // per)
            u8 = raw.view(torch.uint8)[:, :nbytes]
            fields = self._buffer(f"bits{bits}", (rows, per, nbytes), torch.uint8)
            torch.bitwise_right_shift(u8.unsqueeze(1), self._shifts[bits], out=fields)
            draws = fields.bitwise_and_((1 << bits) - 1).view(rows, -1)[:, :numel]
        else:
            draws = raw.view(torch.uint8 if bits == 8 else torch.int16)[:, :numel]
        mask.copy_(draws)
        if bits > 1:      # p = 1/2 (1 bit): the bit itself is the keep decision
            mask.sub_(thr_m1).clamp_(0.0, 1.0)

    def drop_mask(self, n: int, d: int) -> torch.Tensor | None:
        """This step's dropout mask of an activation, times 1/(1-p): a fresh [K, n, d] float32 tensor (autograd
        keeps it for the backward), or None outside training or without dropout."""
        if not self.training or not any(self._p):
            return None
        return self.dropped(None, n, d, torch.empty(self.K, n, d, device=self.device), scaled=True)

    def drop(self, h: torch.Tensor) -> torch.Tensor:
        """Dropout on an activation [K, n, d] (differentiable, scaled by 1/(1-p))."""
        keep = self.drop_mask(h.shape[1], h.shape[2])
        return h if keep is None else h * keep

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
                 **kwargs: object) -> dict[str, torch.Tensor]:
        self.check_inputs(inputs)
        return super().__call__(inputs, masks, **kwargs)

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Every feature of every branch present, all with the same number of rows (else a ProtocolError naming
        the feature): one row of each modality per sample, in the same order."""
        from trainer.protocol import ProtocolError

        row_dim = 3 if getattr(self, "level", "utt") == "seq" else 2     # [.., n, T, D] or [.., n, D]
        rows: dict[str, int] = {}
        for branch, parts in self.spec.branches.items():
            for p in parts:
                x = inputs.get(p)
                if x is None:
                    have = ", ".join(sorted(k for k in inputs if "/" not in k)) or "none"
                    raise ProtocolError(f"fusion '{self.name}': the input has no feature '{p}' (branch '{branch}'); "
                                        f"the model was built for {', '.join(self.spec.dims)}, the input has {have}")
                if x.dim() < row_dim:
                    raise ProtocolError(f"fusion '{self.name}': feature '{p}' has shape {tuple(x.shape)}, expected "
                                        f"{'[(K,) n, T, D] frames' if row_dim == 3 else '[(K,) n, D] vectors'}")
                rows[p] = int(x.shape[-row_dim])
        if len(set(rows.values())) > 1:
            listed = ", ".join(f"{p} {n}" for p, n in rows.items())
            raise ProtocolError(f"fusion '{self.name}': the modalities hold different numbers of samples ({listed} "
                                f"rows); every feature needs one row per sample, in the same order")


class MLPEncoderMixin:
    """MERTools' MLPEncoder, batched: dropout on the input, then three Linear+ReLU layers to `hidden`."""

    def mlp_encoder(self: BatchedModel, name: str, in_dims: Sequence[int], hidden: int,  # type: ignore[misc]
                    data: bool = True) -> None:
        """data=True: the first layer reads data inputs (`run_encoder`, through apply_data_linear); False for an
        encoder over activations (`run_hidden_encoder`)."""
        self.linear(f"{name}_1", in_dims, hidden, data=data)
        self.linear(f"{name}_2", [hidden], hidden)
        self.linear(f"{name}_3", [hidden], hidden)

    def run_encoder(self: BatchedModel, name: str, xs: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[misc]
        """xs: data inputs ([K, n, D] or [n, D]) that the model may mask in place."""
        h = torch.relu(self.apply_data_linear(f"{name}_1", xs))
        h = torch.relu(self.apply_linear(f"{name}_2", [h]))
        return torch.relu(self.apply_linear(f"{name}_3", [h]))

    def branch_encoders(self: BatchedModel, hidden: int, prefix: str = "enc") -> list[str]:  # type: ignore[misc]
        """One MLPEncoder per branch (`{prefix}{i}`) to `hidden`; returns the branch names in order."""
        names = list(self.spec.branches)
        for i, b in enumerate(names):
            self.mlp_encoder(f"{prefix}{i}", [self.spec.dims[p] for p in self.spec.branches[b]], hidden)
        return names

    def run_branches(self: BatchedModel, names: Sequence[str], inputs: dict[str, torch.Tensor],  # type: ignore[misc]
                     masks: dict[str, torch.Tensor] | None, prefix: str = "enc") -> list[torch.Tensor]:
        """Each branch's encoder output; a branch missing for a row (its extraction failed) gives zeros there."""
        out = []
        for i, b in enumerate(names):
            h = self.run_encoder(f"{prefix}{i}", [inputs[p] for p in self.spec.branches[b]])
            if masks is not None and b in masks:
                h = h * masks[b].to(h.dtype).unsqueeze(-1)
            out.append(h)
        return out

    def post_fusion(self: BatchedModel, width: int) -> None:  # type: ignore[misc]
        """A post-fusion MLP from `width` to `hidden`: (dropout, Linear+ReLU) twice (TFN, LF-DNN)."""
        self.linear("post_1", [width], self.spec.hidden)
        self.linear("post_2", [self.spec.hidden], self.spec.hidden)

    def run_post_fusion(self: BatchedModel, fused: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
        x = torch.relu(self.apply_linear("post_1", [self.drop(fused)]))
        return torch.relu(self.apply_linear("post_2", [self.drop(x)]))

    def output_heads(self: BatchedModel, width: int) -> None:  # type: ignore[misc]
        """The emotion head (fc_out_1) and, when the dataset has valence, the valence head (fc_out_2)."""
        if self.spec.n_classes:
            self.linear("fc_out_1", [width], self.spec.n_classes)
        if self.spec.n_valence:
            self.linear("fc_out_2", [width], self.spec.n_valence)

    def run_heads(self: BatchedModel, fused: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[misc]
        """{'features': fused, 'emotion': logits, 'valence': [K, n], **extra}."""
        out = {"features": fused, **extra}
        if self.spec.n_classes:
            out["emotion"] = self.apply_linear("fc_out_1", [fused])
        if self.spec.n_valence:
            out["valence"] = self.apply_linear("fc_out_2", [fused])[..., 0]
        return out

    def run_hidden_encoder(self: BatchedModel, name: str, h: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
        """The same encoder over an activation (dropout differentiable)."""
        h = torch.relu(self.apply_linear(f"{name}_1", [self.drop(h)]))
        h = torch.relu(self.apply_linear(f"{name}_2", [h]))
        return torch.relu(self.apply_linear(f"{name}_3", [h]))
