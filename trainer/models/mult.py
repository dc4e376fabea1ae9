"""MulT, the Multimodal Transformer (Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language
Sequences", ACL 2019; MMSA/MERTools `mult`), for aligned or unaligned sequences.

Per branch: a Conv1d projection to `hidden` (kernel `conv1d_kernel_size`, no padding leak: the convolution is
'same'-padded and padded steps are zeroed first) plus sinusoidal positions. For every target branch t and every
other branch s, a cross-modal transformer of `layers` blocks lets t's steps attend to s's steps
(query = t, key/value = s, s's padding masked); the M-1 outputs of target t are concatenated and a self-attention
transformer of `layers` blocks (hidden * (M-1) wide) runs over them; its state at t's last real step is t's
summary. The summaries of all targets are concatenated, passed through a residual two-layer MLP and the heads.
Pre-norm blocks (LayerNorm -> attention -> dropout -> residual; LayerNorm -> FFN(4x) -> dropout -> residual).
With M branches there are M(M-1) cross-modal transformers (6 for A, T, V).

Sequence model: K copies run one after another (see trainer.models.layers for why MulT does not batch K).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import Heads, PerModelStack, SequenceNet, last_step, time_mask
from trainer.protocol import ProtocolError


def sinusoid(steps: int, dim: int, device: torch.device) -> torch.Tensor:
    """[steps, dim] sinusoidal position encodings (Vaswani et al.)."""
    pos = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(steps, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class Block(nn.Module):
    """One pre-norm transformer block; `source` given: cross-modal attention (queries from x, keys from source)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, source: torch.Tensor | None = None,
                source_pad: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if source is None else self.norm_kv(source)
        a, _ = self.attn(q, kv, kv, key_padding_mask=pad if source is None else source_pad, need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm_ff(x)))


class MulTNet(SequenceNet):
    def __init__(self, dims: list[int], hidden: int, dropout: float, layers: int, num_heads: int, kernel: int,
                 n_classes: int, n_valence: int) -> None:
        super().__init__()
        M = len(dims)
        self.M, self.hidden, self.kernel = M, hidden, kernel
        self.proj = nn.ModuleList(nn.Conv1d(d, hidden, kernel, padding=kernel // 2, bias=False) for d in dims)
        self.cross = nn.ModuleList(nn.ModuleList(nn.ModuleList(Block(hidden, num_heads, dropout) for _ in range(layers))
                                                 for _ in range(M - 1)) for _ in range(M))
        wide = hidden * (M - 1)
        self.self_attn = nn.ModuleList(nn.ModuleList(Block(wide, num_heads, dropout) for _ in range(layers))
                                       for _ in range(M))
        self.norm = nn.ModuleList(nn.LayerNorm(wide) for _ in range(M))
        self.proj1 = nn.Linear(wide * M, wide * M)
        self.proj2 = nn.Linear(wide * M, wide * M)
        self.drop = nn.Dropout(dropout)
        self.heads = Heads(wide * M, n_classes, n_valence)

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hs, pads = [], []
        for i, (x, ln) in enumerate(zip(xs, lengths)):
            real = time_mask(ln, x.shape[1])
            x = x * real.unsqueeze(-1).to(x.dtype)
            h = self.proj[i](x.transpose(1, 2)).transpose(1, 2)[:, :x.shape[1]]
            h = (h * math.sqrt(self.hidden) + sinusoid(h.shape[1], self.hidden, h.device)) * real.unsqueeze(-1)
            hs.append(self.drop(h))
            pads.append(~real)
        summaries = []
        for t in range(self.M):
            outs = []
            for j, s in enumerate(s for s in range(self.M) if s != t):
                h = hs[t]
                for block in self.cross[t][j]:
                    h = block(h, pads[t], hs[s], pads[s])
                outs.append(h)
            h = torch.cat(outs, dim=-1)
            for block in self.self_attn[t]:
                h = block(h, pads[t])
            summaries.append(last_step(self.norm[t](h), lengths[t]))
        z = torch.cat(summaries, dim=-1)
        z = z + self.proj2(self.drop(F.relu(self.proj1(z))))
        return self.heads(z)


@register("mult")
class MulT(PerModelStack):
    aligned = None   # aligned or unaligned sequences
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.0, 0.1, 0.2, 0.3),
                                         "layers": (2, 4, 6), "conv1d_kernel_size": (1, 3)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, layers: int = 2, num_heads: int = 8,
                 conv1d_kernel_size: int = 1) -> SequenceNet:
        if len(dims) < 2:
            raise ProtocolError(f"mult: cross-modal attention needs at least 2 branches, got {len(dims)}")
        if int(layers) < 1:
            raise ProtocolError(f"mult: layers must be >= 1, got {layers}")
        if int(num_heads) < 1 or spec.hidden % int(num_heads):
            raise ProtocolError(f"mult: hidden ({spec.hidden}) must be a multiple of num_heads ({num_heads})")
        if int(conv1d_kernel_size) not in (1, 3, 5):
            raise ProtocolError(f"mult: conv1d_kernel_size must be 1, 3 or 5, got {conv1d_kernel_size}")
        return MulTNet(dims, spec.hidden, dropout, int(layers), int(num_heads), int(conv1d_kernel_size),
                       spec.n_classes, spec.n_valence)
