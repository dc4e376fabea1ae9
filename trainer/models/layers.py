"""Shared pieces of the sequence-level fusion models: K plain modules behind the batched interface, masked
recurrences, length-aware pooling and the output heads.

Sequence models (MulT, MFN, Graph-MFN, MCTN, MFM, EF-LSTM) are recurrent or attention networks whose layers
(LSTM cells, multi-head attention) have no K-stacked form in torch; writing each as batched matmuls over K
would make every file twice as long and unreadable. `PerModelStack` keeps them readable: a model file
defines one plain `nn.Module` (the network of one model, read top to bottom like the paper), and the
stack holds K copies' parameters stacked along a leading K dimension -- so the trainer's batched Adam, best-
epoch snapshots and one-interface forward work unchanged -- and runs each copy through
`torch.func.functional_call` on its own slice. The K forward passes run one after another (no speed-up from
batching K, unlike the utterance-level models), but each copy is initialised from its own generator and draws
its dropout from its own generator, so K models trained together still equal K trained alone.

Inputs of a sequence model (`inputs` of the one interface) are, per feature, [K, n, T, D] (or [n, T, D] shared
by every model) with lengths under `length_key(name)` ([K, n] or [n], int64, >= 1). Sequences are padded after
their real steps; every recurrence here stops updating a row at its length and every pooling ignores the
padding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainer.models.base import BatchedModel, ModelSpec
from trainer.protocol import ProtocolError


def length_key(name: str) -> str:
    """The inputs key holding the lengths of feature `name`'s sequences."""
    return f"{name}/len"


# ---------------------------------------------------------------------------------------------- small helpers
def time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[n] lengths -> [n, steps] bool, True on real steps."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the real steps of x [n, T, D] -> [n, D]."""
    m = time_mask(lengths, x.shape[1]).to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / lengths.clamp(min=1).to(x.dtype).unsqueeze(-1)


def last_step(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [n, T, D] at each row's last real step -> [n, D]."""
    idx = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
    return x.gather(1, idx).squeeze(1)


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch-first nn.LSTM over padded x [n, T, D]: (outputs [n, T, H*dirs], last layer's final hidden state
    [n, H*dirs]), both taken at each row's own length (packed sequences: padding never enters the state)."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    out, (h, _) = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    dirs = 2 if lstm.bidirectional else 1
    return out, torch.cat([h[-dirs + i] for i in range(dirs)], dim=-1)


def step_cells(cells: Sequence[nn.LSTMCell], xs: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor],
               hidden: int, on_step: Callable[[int, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                               torch.Tensor], None] | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run one LSTMCell per modality side by side over aligned sequences xs[i] [n, T, D_i], the state of a row
    frozen past its length. on_step(t, prev_c, new_c, new_h, live [n, 1]) runs after every step (MFN's memory).
    Returns the final (h, c) of every modality."""
    n, T = xs[0].shape[0], xs[0].shape[1]
    h = [xs[0].new_zeros(n, hidden) for _ in cells]
    c = [xs[0].new_zeros(n, hidden) for _ in cells]
    for t in range(T):
        prev_c = list(c)
        new_h, new_c = [], []
        for i, cell in enumerate(cells):
            live = (lengths[i] > t).to(xs[i].dtype).unsqueeze(-1)
            hi, ci = cell(xs[i][:, t], (h[i], c[i]))
            new_h.append(live * hi + (1 - live) * h[i])
            new_c.append(live * ci + (1 - live) * c[i])
        h, c = new_h, new_c
        if on_step is not None:
            on_step(t, prev_c, new_c, new_h, (lengths[0] > t).to(xs[0].dtype).unsqueeze(-1))
    return h, c


class Heads(nn.Module):
    """The emotion head (Linear to the classes) and, when the dataset has one, the valence head (Linear to 1)."""

    def __init__(self, width: int, n_classes: int, n_valence: int) -> None:
        super().__init__()
        self.emotion = nn.Linear(width, n_classes) if n_classes else None
        self.valence = nn.Linear(width, n_valence) if n_valence else None

    def forward(self, features: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"features": features, **extra}
        if self.emotion is not None:
            out["emotion"] = self.emotion(features)
        if self.valence is not None:
            out["valence"] = self.valence(features)[..., 0]
        return out


def row_mean(values: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    """A per-row loss [n] averaged with the trainer's row weights (padding rows weigh 0), or a plain mean."""
    if row_weight is None:
        return values.mean()
    return (values * row_weight.to(values.dtype)).sum()


# ---------------------------------------------------------------------------------------------- the stack
class SequenceNet(nn.Module):
    """One sequence model. forward(xs, lengths, row_weight) -> {'emotion': [n, C], 'valence': [n], 'aux_loss': []}.

    xs: one [n, T_i, D_i] tensor per branch (in ModelSpec.branches order), lengths: one [n] int64 per branch,
    row_weight: [n] weights of the minibatch rows during training (None otherwise) for auxiliary losses."""

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class PerModelStack(BatchedModel):
    """K copies of a SequenceNet (built by `make_net`) as one BatchedModel; see the module docstring.

    Subclasses set `aligned` (True: every branch must share its time axis -- MFN, Graph-MFN, MCTN, MFM, EF-LSTM;
    None: either) and implement make_net(spec, dims, dropout, **options): one model's network (dropout: its
    config's rate)."""

    level = "seq"
    aligned: bool | None = None

    def __init__(self, spec: ModelSpec, **options: Any) -> None:
        super().__init__(spec)
        self.branch_names = list(spec.branches)
        dims = [sum(spec.dims[p] for p in spec.branches[b]) for b in self.branch_names]
        nets = []
        for k, g in enumerate(spec.init_generators):
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                nets.append(self.make_net(spec, dims, self._p[k], **options))
        self._names = [n for n, _ in nets[0].named_parameters()]
        for name in self._names:
            stacked = torch.stack([dict(net.named_parameters())[name].detach() for net in nets])
            self.register_parameter(self._pname(name), nn.Parameter(stacked.to(self.device)))
        for net in nets:   # structure only (each model's own dropout rate etc.); the values are the stack's
            net.to(self.device)
            for p in net.parameters():
                p.requires_grad_(False)
        object.__setattr__(self, "_nets", nets)   # not registered submodules: their parameters are ours

    @staticmethod
    def _pname(name: str) -> str:
        return "net__" + name.replace(".", "__")

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float,
                 **options: Any) -> SequenceNet:  # pragma: no cover
        raise NotImplementedError

    def train(self, mode: bool = True) -> "PerModelStack":
        super().train(mode)
        for net in self._nets:
            net.train(mode)
        return self



    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        xs, lens = self._branch_inputs(inputs, masks)
        params = {name: getattr(self, self._pname(name)).unbind(0) for name in self._names}
        outs: list[dict[str, torch.Tensor] | None] = []
        for k in range(self.K):
            if self.active is not None and not self.active[k]:
                outs.append(None)     # idle this step: no loss weight, no update; nothing to compute
                continue
            xk = [x[k] if x.dim() == 4 else x for x in xs]
            lk = [ln[k] if ln.dim() == 2 else ln for ln in lens]
            rw = self.row_weight[k] if self.row_weight is not None else None
            with self._dropout_stream(k):
                outs.append(functional_call(self._nets[k], {n: params[n][k] for n in self._names}, (xk, lk, rw)))
        return _stack_outputs(outs)

    def _dropout_stream(self, k: int) -> Any:
        """Model k's dropout masks come from its own generator (a fresh global seed drawn from it per forward)."""
        if not self.training:
            return _NullContext()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.spec.drop_generators[k], device=self.device))
        return _SeededRng(seed, self.device)

    def _branch_inputs(self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per branch: its parts concatenated along features (aligned parts only) with the branch missing for a
        row zeroed, and its lengths."""
        xs, lens = [], []
        for b in self.branch_names:
            parts = self.spec.branches[b]
            for p in parts:
                if p not in inputs or length_key(p) not in inputs:
                    raise ProtocolError(f"fusion '{self.name}' is a sequence model: feature {p} arrived without "
                                        f"frame-level values and lengths (load it with level='seq')")
            x = torch.cat([inputs[p] for p in parts], dim=-1) if len(parts) > 1 else inputs[parts[0]]
            ln = inputs[length_key(parts[0])]
            if len(parts) > 1 and any(not torch.equal(inputs[length_key(p)], ln) for p in parts[1:]):
                raise ProtocolError(f"branch {b} concatenates features of different lengths; use aligned sequences")
            if masks is not None and b in masks:
                m = masks[b].to(x.dtype)
                x = x * m.view(*m.shape, *([1] * (x.dim() - m.dim())))
            xs.append(x)
            lens.append(ln)
        if self.aligned:
            first = lens[0]
            for b, ln in zip(self.branch_names[1:], lens[1:]):
                if ln.shape != first.shape or not torch.equal(ln, first):
                    raise ProtocolError(f"fusion '{self.name}' needs aligned sequences (every modality on one time "
                                        f"axis), but branch {b} has other lengths; load with aligned=True "
                                        f"(trainer --aligned)")
        return xs, lens


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _SeededRng:
    """Fork the global RNG (CPU, and the model's CUDA device) and seed it; restore on exit."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device

    def __enter__(self) -> None:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices, device_type=self.device.type
                                           if self.device.type == "cuda" else "cuda")
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def _stack_outputs(outs: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """Per-model outputs -> the one interface's [K, ...] tensors (idle models give zeros without gradient)."""
    ref = next(o for o in outs if o is not None)
    result: dict[str, torch.Tensor] = {}
    for key, v in ref.items():
        if key == "features":
            continue
        vals = [o[key] if o is not None and key in o else torch.zeros_like(v).detach() for o in outs]
        result[key] = torch.stack([x.float() if key == "aux_loss" else x for x in vals])
    return result


def aux_term(weight: float, value: torch.Tensor) -> torch.Tensor:
    """weight x value, skipped (an exact zero, no graph) when the weight is 0."""
    return value * weight if weight else value.new_zeros(())


def pairwise_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row squared L2 distance [n] between a and b [n, D] (a reconstruction or translation loss)."""
    return F.mse_loss(a, b, reduction="none").mean(-1)


def sequence_error(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error over the real steps [n] of a prediction vs its target [n, T, D]."""
    per_step = pairwise_l2(pred, target)                     # [n, T]
    real = time_mask(lengths, target.shape[1]).to(per_step.dtype)
    return (per_step * real).sum(1) / lengths.clamp(min=1).to(per_step.dtype)


# ---------------------------------------------------------------------------------------------- options
def number_option(model: str, name: str, value: Any, low: float, high: float | None = None) -> float:
    """A model option as a float in [low, high] (high None: no upper bound), else a ProtocolError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (v >= low and (high is None or v <= high)):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ProtocolError(f"{model}: {name} must be a number {bound}, got {value!r}")
    return v


def branch_modality(spec: ModelSpec, branch: str) -> str | None:
    """A branch's modality (audio | text | visual): the spec's own mapping when the trainer gave one, else the
    catalog's for its first feature's encoder (a feature is named after its encoder, '#2' etc. for repeats);
    None when neither knows."""
    if spec.modalities:
        return spec.modalities.get(branch)
    from featstore.catalog import load_catalog

    enc = load_catalog().encoders.get(re.sub(r"#\d+$", "", spec.branches[branch][0]))
    return enc.modality if enc is not None else None


def anchor_order(spec: ModelSpec, anchor: str | None, model: str, option: str) -> list[int]:
    """Branch indices, the anchor first: the branch named by the model's `option` (MCTN's source, MMIM's
    anchor), else the first text branch (text anchors both papers), else the first branch."""
    names = list(spec.branches)
    if anchor is not None:
        if anchor not in names:
            raise ProtocolError(f"{model}: {option} '{anchor}' is not a branch; the branches are {', '.join(names)}")
        first = names.index(anchor)
    else:
        first = next((i for i, b in enumerate(names) if branch_modality(spec, b) == "text"), 0)
    return [first] + [i for i in range(len(names)) if i != first]


__all__ = ["length_key", "time_mask", "masked_mean", "last_step", "run_lstm", "step_cells", "Heads",
           "row_mean", "SequenceNet", "PerModelStack", "aux_term", "pairwise_l2", "sequence_error", "number_option",
           "branch_modality", "anchor_order"]
