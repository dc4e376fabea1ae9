"""MFN, the Memory Fusion Network (Zadeh et al., "Memory Fusion Network for Multi-view Sequential Learning",
AAAI 2018; MERTools `mfn`): one LSTM cell per branch, side by side over the aligned steps, and a multi-view gated
memory between them.

At every step t the cell states of all M branches before and after the step, c[t-1] and c[t] (window 2), are
concatenated into c* (2 x M x hidden wide). The Delta-memory Attention Network scores c* (Linear, ReLU, dropout,
Linear, softmax over its entries) and weighs it: a = softmax(...) * c*. The Multi-view Gated Memory then
proposes u = tanh(MLP(a)) (mem_dim wide) and updates u_t = gamma1 * u_{t-1} + gamma2 * u with the retain and
update gates gamma1, gamma2 = sigmoid(MLP([a, u_{t-1}])). The final hidden states of every branch and the final
memory -> Linear, ReLU, dropout, Linear -> heads. No auxiliary loss.

Generalised from the paper's three modalities to any M >= 2 branches (Top-N feature sets): c* and the gates simply
widen with M. Needs aligned sequences; a row's cells and memory stop changing past its length (padded steps never
change the result; MERTools runs every row to the padded length). Sequence model: K copies run one after another
(trainer.models.layers). `MFNNet` and `GatedMemory` are shared with Graph-MFN, which swaps the attention block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import Heads, PerModelStack, SequenceNet, step_cells
from trainer.protocol import ProtocolError


def mlp(width: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> dropout -> Linear: the small network inside every MFN block."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class DeltaAttention(nn.Module):
    """MFN's Delta-memory Attention Network over the window (previous, new) of every branch's cell state."""

    reads = "c"   # the LSTM state the fusion block reads: cell memories

    def __init__(self, n_branches: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.width = 2 * n_branches * hidden
        self.score = mlp(self.width, hidden, self.width, dropout)

    def forward(self, prev: list[torch.Tensor], new: list[torch.Tensor]) -> torch.Tensor:
        c_star = torch.cat(prev + new, dim=-1)
        return F.softmax(self.score(c_star), dim=-1) * c_star


class GatedMemory(nn.Module):
    """The Multi-view Gated Memory: u_t = gamma1 * u_{t-1} + gamma2 * tanh(MLP(fused)), gates from [fused, u_{t-1}]."""

    def __init__(self, width: int, hidden: int, mem_dim: int, dropout: float) -> None:
        super().__init__()
        self.mem_dim = mem_dim
        self.propose = mlp(width, hidden, mem_dim, dropout)
        self.retain = mlp(width + mem_dim, hidden, mem_dim, dropout)
        self.update = mlp(width + mem_dim, hidden, mem_dim, dropout)

    def forward(self, fused: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        proposal = torch.tanh(self.propose(fused))
        both = torch.cat([fused, mem], dim=-1)
        return torch.sigmoid(self.retain(both)) * mem + torch.sigmoid(self.update(both)) * proposal


class MFNNet(SequenceNet):
    """One MFN: LSTM cells per branch, a fusion block over each step's (previous, new) states, the gated memory.

    fusion: a module with `width` (its output size), `reads` ('c' cell or 'h' hidden states) and
    forward(prev, new) over the per-branch states -> [n, width] (DeltaAttention here, the DFG in Graph-MFN).
    with_output=False leaves out the output MLP and heads: a network that uses only `encode` (MFM)."""

    def __init__(self, dims: list[int], hidden: int, mem_dim: int, dropout: float, fusion: nn.Module,
                 n_classes: int, n_valence: int, with_output: bool = True) -> None:
        super().__init__()
        self.hidden = hidden
        self.cells = nn.ModuleList(nn.LSTMCell(d, hidden) for d in dims)
        self.fusion = fusion
        self.memory = GatedMemory(fusion.width, hidden, mem_dim, dropout)
        self.width = len(dims) * hidden + mem_dim     # the size of `encode`'s output
        self.with_output = with_output
        if with_output:
            self.out = mlp(self.width, hidden, hidden, dropout)
            self.heads = Heads(hidden, n_classes, n_valence)

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.out(self.encode(xs, lengths)))

    def encode(self, xs: list[torch.Tensor], lengths: list[torch.Tensor]) -> torch.Tensor:
        """The final hidden state of every branch and the final memory, concatenated: [n, width]."""
        n = xs[0].shape[0]
        mem = xs[0].new_zeros(n, self.memory.mem_dim)
        prev_h = [xs[0].new_zeros(n, self.hidden) for _ in self.cells]

        def on_step(t: int, prev_c: list[torch.Tensor], new_c: list[torch.Tensor], new_h: list[torch.Tensor],
                    live: torch.Tensor) -> None:
            nonlocal mem, prev_h
            prev, new = (prev_c, new_c) if self.fusion.reads == "c" else (prev_h, new_h)
            updated = self.memory(self.fusion(prev, new), mem)
            mem = live * updated + (1 - live) * mem      # a row past its length keeps its memory
            prev_h = new_h

        h, _ = step_cells(self.cells, xs, lengths, self.hidden, on_step)
        return torch.cat(h + [mem], dim=-1)


def check_mfn_options(name: str, n_branches: int, mem_dim: Any) -> int:
    """mem_dim as an int, or a ProtocolError naming the option (MFN and Graph-MFN need >= 2 branches)."""
    if n_branches < 2:
        raise ProtocolError(f"{name}: the multi-view memory needs at least 2 branches, got {n_branches}")
    try:
        mem = int(mem_dim)
    except (TypeError, ValueError):
        raise ProtocolError(f"{name}: mem_dim must be a positive integer, got {mem_dim!r}") from None
    if mem < 1 or mem != float(mem_dim):
        raise ProtocolError(f"{name}: mem_dim must be a positive integer, got {mem_dim!r}")
    return mem


@register("mfn")
class MFN(PerModelStack):
    aligned = True
    space: dict[str, tuple[Any, ...]] = {"hidden": (128, 256), "lr": (1e-3, 1e-4), "dropout": (0.0, 0.3, 0.5, 0.7),
                                         "mem_dim": (128,)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, mem_dim: int = 128) -> SequenceNet:
        mem = check_mfn_options("mfn", len(dims), mem_dim)
        return MFNNet(dims, spec.hidden, mem, dropout, DeltaAttention(len(dims), spec.hidden, dropout),
                      spec.n_classes, spec.n_valence)
