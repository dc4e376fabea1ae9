"""MFM, the Multimodal Factorization Model (Tsai et al., "Learning Factorized Multimodal Representations",
ICLR 2019; MERTools `mfm`): a joint representation factorised into a multimodal discriminative factor, which
predicts the labels, and one modality-specific generative factor per branch; both together regenerate each
branch's sequence.

Per branch m: an LSTM over the real steps (packed), its final state -> Linear -> z_m (hidden wide). The
discriminative code z_y: an MFN over all branches (trainer.models.mfn, without its output layers: the final
hidden states and memory) -> Linear -> z_y. Factors f = MLP(z) (Linear, ReLU, dropout, Linear, ReLU; hidden/2
wide) for z_y and every z_m. Generative decoder m: an LSTM cell fed [f_y, f_m] at the first step and its own
hidden state after, one step per frame of the sample, a Linear to branch m's width. Discriminative output:
f_y -> Linear, ReLU, dropout, Linear (hidden/2) -> emotion and valence heads.

Auxiliary loss (`aux_loss`, part of the training step, training mode only):
  lda_mmd * sum over z_y and every z_m of MMD(z, N(0, I))   (the Wasserstein-autoencoder prior term; Gaussian
             kernel exp(-mean_d (a - b)^2 / dim) as the paper's code; as many prior draws as minibatch rows,
             from torch's global RNG, which the stack seeds per model, so a model's draws never depend on the
             others; the batch-side kernel means weigh rows by the trainer's row weights: padding never counts)
  + sum_m lda_x[modality of m] * reconstruction error of branch m (mean squared error over its real steps,
             averaged over rows with the row weights)
lda_xl / lda_xa / lda_xv weigh text / audio / visual branches (MERTools' three options; a Top-N branch takes its
modality's weight); `lda_x` sets one weight for every branch and is needed when a branch's modality is unknown.

Generalised from three modalities to any M >= 2 branches. Needs aligned sequences (MFN steps all branches
together). MFN's window is fixed at 2 steps (MERTools' only window_dim). Sequence model: K copies run one after
another (trainer.models.layers); `ModelSpec.hidden` must be even (the factors are hidden/2 wide).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import (Heads, PerModelStack, SequenceNet, aux_term, branch_modality, number_option,
                                   row_mean, run_lstm, sequence_error)
from trainer.models.mfn import DeltaAttention, MFNNet, check_mfn_options
from trainer.protocol import ProtocolError

LDA_OPTION = {"text": "lda_xl", "audio": "lda_xa", "visual": "lda_xv"}


def factor(width: int, out: int, dropout: float) -> nn.Sequential:
    """z -> f: Linear, ReLU, dropout, Linear, ReLU."""
    return nn.Sequential(nn.Linear(width, out), nn.ReLU(), nn.Dropout(dropout), nn.Linear(out, out), nn.ReLU())


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """exp(-mean_d (a_i - b_j)^2 / dim): [n, D] x [m, D] -> [n, m]."""
    return torch.exp(-(a.unsqueeze(1) - b.unsqueeze(0)).pow(2).mean(-1) / a.shape[-1])


def mmd_to_prior(z: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    """MMD between the rows of z [n, D] (weighed by row_weight [n], else uniformly) and as many N(0, I) draws."""
    n = z.shape[0]
    w = row_weight.to(z.dtype) if row_weight is not None else z.new_full((n,), 1.0 / n)
    prior = torch.randn_like(z)
    return (gaussian_kernel(prior, prior).mean() + w @ gaussian_kernel(z, z) @ w
            - 2.0 * (gaussian_kernel(prior, z) @ w).mean())


class Decoder(nn.Module):
    """An LSTM cell fed the factors at the first step and its own hidden state after; a Linear to the frames."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(width, width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, code: torch.Tensor, steps: int) -> torch.Tensor:
        h = c = torch.zeros_like(code)
        x, outs = code, []
        for _ in range(steps):
            h, c = self.cell(x, (h, c))
            outs.append(h)
            x = h
        return self.proj(torch.stack(outs, dim=1))


class MFMNet(SequenceNet):
    def __init__(self, dims: list[int], hidden: int, mem_dim: int, dropout: float, lda_x: list[float],
                 lda_mmd: float, n_classes: int, n_valence: int) -> None:
        super().__init__()
        f = hidden // 2
        self.lda_x, self.lda_mmd = lda_x, lda_mmd
        self.encoders = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.to_z = nn.ModuleList(nn.Linear(hidden, hidden) for _ in dims)
        self.mfn = MFNNet(dims, hidden, mem_dim, dropout, DeltaAttention(len(dims), hidden, dropout), 0, 0,
                          with_output=False)
        self.to_zy = nn.Linear(self.mfn.width, hidden)
        self.factor_y = factor(hidden, f, dropout)
        self.factors = nn.ModuleList(factor(hidden, f, dropout) for _ in dims)
        self.decoders = nn.ModuleList(Decoder(2 * f, d) for d in dims)
        self.out = nn.Sequential(nn.Linear(f, f), nn.ReLU(), nn.Dropout(dropout), nn.Linear(f, f))
        self.heads = Heads(f, n_classes, n_valence)

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        zy = self.to_zy(self.mfn.encode(xs, lengths))
        fy = self.factor_y(zy)
        out = self.heads(self.out(fy))
        if not self.training:
            return out
        zs = [lin(run_lstm(lstm, x, ln)[1]) for lstm, lin, x, ln in zip(self.encoders, self.to_z, xs, lengths)]
        loss = aux_term(self.lda_mmd, sum(mmd_to_prior(z, row_weight) for z in [zy] + zs))
        T = int(lengths[0].max())
        for m, (z, fac, dec, x, ln) in enumerate(zip(zs, self.factors, self.decoders, xs, lengths)):
            if self.lda_x[m]:
                recon = dec(torch.cat([fy, fac(z)], dim=-1), T)
                loss = loss + self.lda_x[m] * row_mean(sequence_error(recon, x[:, :T], ln), row_weight)
        out["aux_loss"] = loss
        return out


@register("mfm")
class MFM(PerModelStack):
    aligned = True
    # MERTools' model-tune.yaml `mfm` (window_dim 2 is MFN's fixed window here; grad_clip -1 means none)
    space: dict[str, tuple[Any, ...]] = {"hidden": (128, 256), "lr": (1e-3, 1e-4), "dropout": (0.0, 0.3, 0.5, 0.7),
                                         "mem_dim": (128,), "lda_xl": (0.01, 0.1, 0.5, 1.0),
                                         "lda_xa": (0.01, 0.1, 0.5, 1.0), "lda_xv": (0.01, 0.1, 0.5, 1.0),
                                         "lda_mmd": (10, 50, 100)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, mem_dim: int = 128,
                 lda_xl: float = 0.1, lda_xa: float = 0.1, lda_xv: float = 0.1, lda_mmd: float = 10.0,
                 lda_x: float | None = None) -> SequenceNet:
        mem = check_mfn_options("mfm", len(dims), mem_dim)
        if spec.hidden % 2:
            raise ProtocolError(f"mfm: hidden must be even (the factors are hidden/2 wide), got {spec.hidden}")
        given = {"lda_xl": lda_xl, "lda_xa": lda_xa, "lda_xv": lda_xv}
        weights = {k: number_option("mfm", k, v, 0.0) for k, v in given.items()}
        one = None if lda_x is None else number_option("mfm", "lda_x", lda_x, 0.0)
        per_branch = []
        for b in spec.branches:
            if one is not None:
                per_branch.append(one)
                continue
            modality = branch_modality(spec, b)
            if modality not in LDA_OPTION:
                raise ProtocolError(f"mfm: the modality of branch '{b}' is unknown, so none of lda_xl/lda_xa/lda_xv "
                                    f"applies; pass lda_x (one reconstruction weight for every branch)")
            per_branch.append(weights[LDA_OPTION[modality]])
        return MFMNet(dims, spec.hidden, mem, dropout, per_branch, number_option("mfm", "lda_mmd", lda_mmd, 0.0),
                      spec.n_classes, spec.n_valence)
