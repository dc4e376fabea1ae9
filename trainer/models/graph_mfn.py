"""Graph-MFN (Zadeh et al., "Multimodal Language Analysis in the Wild: CMU-MOSEI Dataset and Interpretable
Dynamic Fusion Graph", ACL 2018; MERTools `graph_mfn`): MFN with its Delta-memory attention replaced by the
Dynamic Fusion Graph (DFG).

At every step t each branch i turns the window of its LSTM hidden states into a singleton vertex
v_i = ReLU(Linear([h_i[t-1], h_i[t]])) (hidden states, as the reference implementation of the authors and
MERTools do). The DFG has a vertex for every non-empty subset of the M branches (2^M - 1 vertices): a vertex of
two or more branches is ReLU(Linear(...)) over the concatenation of all its proper non-empty subsets' vertices,
each scaled by its edge's efficacy, and the top vertex tau reads every vertex the same way. The efficacies
(one per edge: sum over vertices S with |S| >= 2 of 2^|S| - 2, plus 2^M - 1 into tau; 19 for M = 3) come from
one network over the singletons, Linear, ReLU, Linear, sigmoid: scalars in [0, 1] per row, as the paper
describes them (MERTools' port leaves them unsquashed). tau feeds MFN's multi-view gated memory (trainer.models.mfn),
and the final hidden states + memory -> output MLP -> heads. No auxiliary loss.

2 <= M <= 4 branches (15 vertices and 65 edges at M = 4; the graph doubles with every branch, so larger Top-N
sets are refused -- use --concat for one branch per modality). Needs aligned sequences; a row's state stops
changing past its length. Sequence model: K copies run one after another (trainer.models.layers).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import PerModelStack, SequenceNet
from trainer.models.mfn import MFNNet, check_mfn_options
from trainer.protocol import ProtocolError

MAX_BRANCHES = 4


def subsets(m: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of range(m), by size then lexicographically (singletons first)."""
    return [s for r in range(1, m + 1) for s in combinations(range(m), r)]


class DynamicFusionGraph(nn.Module):
    """The DFG over M singleton inputs [n, hidden]; forward(prev, new) over per-branch hidden states -> tau [n, hidden]."""

    reads = "h"   # the LSTM state the fusion block reads: hidden states

    def __init__(self, n_branches: int, hidden: int) -> None:
        super().__init__()
        self.width = hidden
        self.singleton = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(n_branches))
        all_sets = subsets(n_branches)
        # the edges into each vertex of >= 2 branches (its proper non-empty subsets), then into tau (every vertex)
        self.inputs: list[tuple[tuple[int, ...], list[tuple[int, ...]]]] = [
            (v, [s for s in all_sets if len(s) < len(v) and set(s) <= set(v)]) for v in all_sets if len(v) > 1]
        self.tau_inputs = all_sets
        self.vertex = nn.ModuleList(nn.Linear(len(ins) * hidden, hidden) for _, ins in self.inputs)
        self.tau = nn.Linear(len(all_sets) * hidden, hidden)
        self.n_edges = sum(len(ins) for _, ins in self.inputs) + len(all_sets)
        self.efficacy = nn.Sequential(nn.Linear(n_branches * hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, self.n_edges), nn.Sigmoid())

    def forward(self, prev: list[torch.Tensor], new: list[torch.Tensor]) -> torch.Tensor:
        out = {(i,): torch.relu(f(torch.cat([p, q], dim=-1))) for i, (f, p, q) in enumerate(zip(self.singleton, prev, new))}
        alpha = self.efficacy(torch.cat([out[(i,)] for i in range(len(prev))], dim=-1))
        e = 0
        for (v, ins), f in zip(self.inputs, self.vertex):
            out[v] = torch.relu(f(torch.cat([out[s] * alpha[:, e + j:e + j + 1] for j, s in enumerate(ins)], dim=-1)))
            e += len(ins)
        return torch.relu(self.tau(torch.cat([out[s] * alpha[:, e + j:e + j + 1]
                                              for j, s in enumerate(self.tau_inputs)], dim=-1)))


@register("graph_mfn")
class GraphMFN(PerModelStack):
    aligned = True
    space: dict[str, tuple[Any, ...]] = {"hidden": (128, 256), "lr": (1e-3, 1e-4), "dropout": (0.0, 0.3, 0.5, 0.7),
                                         "mem_dim": (128,)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, mem_dim: int = 128) -> SequenceNet:
        mem = check_mfn_options("graph_mfn", len(dims), mem_dim)
        if len(dims) > MAX_BRANCHES:
            raise ProtocolError(f"graph_mfn: the dynamic fusion graph takes 2 to {MAX_BRANCHES} branches "
                                f"(2^M - 1 vertices), got {len(dims)}; pass --concat (one branch per modality)")
        return MFNNet(dims, spec.hidden, mem, dropout, DynamicFusionGraph(len(dims), spec.hidden),
                      spec.n_classes, spec.n_valence)
