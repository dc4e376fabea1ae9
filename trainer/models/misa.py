"""MISA, Modality-Invariant and -Specific Representations (Hazarika et al., ACM MM 2020), K models at once.

Per branch m (any number M >= 2 of branches, so Top-N sets work):
  u_m    MLPEncoder (dropout on the input, three Linear+ReLU) to `hidden`, then a projection
         Linear+ReLU+LayerNorm (MISA's "project" layer); a branch missing for a row gives a zero encoder output
  p_m    private (modality-specific) vector: Linear+Sigmoid of u_m, one layer per branch
  c_m    shared (modality-invariant) vector: Linear+Sigmoid of u_m, ONE layer for every branch
  r_m    reconstruction of u_m from p_m + c_m by ONE decoder shared by every branch (the paper's D(.; theta_d);
         MERTools and the authors' code give each modality its own decoder layer)
Fusion: the 2M vectors [p_1..p_M, c_1..c_M] are the tokens of one post-norm transformer encoder layer (2 heads,
batched multi-head attention written with einsum on K-stacked weights, feed-forward width 4 x hidden; MERTools
uses torch's layer with its default width 2048 and its own dropout 0.1 -- here the layer drops the outputs of
its two residual branches at the model's dropout rate); its 2M outputs, concatenated, go through
Linear(2M*hidden -> M*hidden), dropout, ReLU, Linear(-> hidden/2), and the emotion and valence heads.

Auxiliary losses (the training step; `aux_loss` [K], each model over its own minibatch rows weighed by the
trainer's `row_weight`, so padding rows never count):
  aux = sim_weight * L_sim + diff_weight * L_diff + recon_weight * L_recon
  L_sim    similarity: CMD (central moment discrepancy, 5 moments) between the shared vectors of every pair of
           branches, averaged over the pairs -- MISA's default; the paper's domain-adversarial alternative is
           not implemented. The moments are weighted moments: mean = sum_i w_i x_i, k-th central moment
           sum_i w_i (x_i - mean)^k, and CMD = ||mean_a - mean_b|| + sum_k ||moment_k,a - moment_k,b||.
  L_diff   difference: soft orthogonality ||A^T B||_F^2 / hidden^2 between each branch's private and shared
           vectors and between every pair of private vectors, summed (MISA's sum; 6 terms for 3 branches). A
           and B are the batch-centred (weighted mean), row-L2-normalised vectors (norms not differentiated, as
           MISA), and A^T B sums over the real rows (sum_i rows * w_i a_i b_i^T: MISA's batch sum when the
           weights are the trainer's 1/rows).
  L_recon  reconstruction: MSE between r_m and u_m (weighted mean over rows of the mean over features),
           averaged over the branches.
A term whose weight is 0 is not computed (aux_loss is exactly 0 when all three are). Defaults 0.1 each, the
middle of MERTools' search space (the MISA paper's own settings were 1.0 / 0.3 / 1.0 for sim / diff / recon).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec
from trainer.models.batch_stats import real_rows, row_weights, weighted_mean
from trainer.protocol import ProtocolError

HEADS = 2        # attention heads of the fusion layer (MERTools: nhead=2)
FF_WIDTH = 4     # feed-forward width of the fusion layer, in multiples of hidden
MOMENTS = 5      # CMD moments (MISA: 5)
NORM_EPS = 1e-6  # added to the row norms of the difference loss (MISA)


@register("misa")
class MISA(MLPEncoderMixin, BatchedModel):
    # MERTools' model-tune.yaml `misa`, less grad_clip (the trainer does not clip gradients)
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.2, 0.3, 0.4, 0.5),
                                         "sim_weight": (0.0, 0.1, 0.2), "diff_weight": (0.0, 0.1, 0.2),
                                         "recon_weight": (0.0, 0.1, 0.2)}

    def __init__(self, spec: ModelSpec, sim_weight: float = 0.1, diff_weight: float = 0.1,
                 recon_weight: float = 0.1) -> None:
        super().__init__(spec)
        for name, v in (("sim_weight", sim_weight), ("diff_weight", diff_weight), ("recon_weight", recon_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ProtocolError(f"misa: {name} must be a number >= 0, got {v!r}")
        self.sim_weight, self.diff_weight, self.recon_weight = float(sim_weight), float(diff_weight), float(recon_weight)
        M, H = len(spec.branches), spec.hidden
        if M < 2:
            raise ProtocolError(f"misa needs at least 2 branches (its losses compare modalities), got {M} "
                                f"({', '.join(spec.branches)}); load another modality")
        if H % HEADS:
            raise ProtocolError(f"misa: hidden must be a multiple of {HEADS} (attention heads; hidden/2 fused "
                                f"features), got {H}")
        self.names = self.branch_encoders(H)
        for i in range(M):
            self.linear(f"project{i}", [H], H)
            self.layer_norm(f"project{i}_ln", H)
        for i in range(M):
            self.linear(f"private{i}", [H], H)
        self.linear("shared", [H], H)
        self.linear("recon", [H], H)
        self.linear("att_in", [H], 3 * H)
        self.linear("att_out", [H], H)
        self.layer_norm("att_ln1", H)
        self.linear("ff_1", [H], FF_WIDTH * H)
        self.linear("ff_2", [FF_WIDTH * H], H)
        self.layer_norm("att_ln2", H)
        self.linear("fusion_1", [2 * M * H], M * H)
        self.linear("fusion_2", [M * H], H // 2)
        self.output_heads(H // 2)

    # ------------------------------------------------------------------ layers
    def layer_norm(self, name: str, width: int) -> None:
        """K LayerNorms over `width` features: gain `{name}_g` (ones) and bias `{name}_b` (zeros), [K, 1, width]."""
        self.register_parameter(f"{name}_g", nn.Parameter(torch.ones(self.K, 1, width, device=self.device)))
        self.register_parameter(f"{name}_b", nn.Parameter(torch.zeros(self.K, 1, width, device=self.device)))

    def apply_layer_norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(getattr(self, f"{name}_b"), F.layer_norm(x, x.shape[-1:]), getattr(self, f"{name}_g"))

    def fusion_layer(self, tokens: torch.Tensor) -> torch.Tensor:
        """One post-norm transformer encoder layer over tokens [K, n, T, H] -> [K, n, T, H]."""
        K, n, T, H = tokens.shape
        dh = H // HEADS
        x = tokens.reshape(K, n * T, H)
        q, k, v = self.apply_linear("att_in", [x]).view(K, n, T, 3, HEADS, dh).unbind(3)   # [K, n, T, heads, dh]
        att = torch.softmax(torch.einsum("knthd,knshd->knhts", q, k) / math.sqrt(dh), dim=-1)
        ctx = torch.einsum("knhts,knshd->knthd", att, v).reshape(K, n * T, H)
        x = self.apply_layer_norm("att_ln1", x + self.drop(self.apply_linear("att_out", [ctx])))
        ff = self.apply_linear("ff_2", [torch.relu(self.apply_linear("ff_1", [x]))])
        return self.apply_layer_norm("att_ln2", x + self.drop(ff)).view(K, n, T, H)

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        hs = self.run_branches(self.names, inputs, masks)
        utt = [self.apply_layer_norm(f"project{i}_ln", torch.relu(self.apply_linear(f"project{i}", [h])))
               for i, h in enumerate(hs)]
        private = [torch.sigmoid(self.apply_linear(f"private{i}", [u])) for i, u in enumerate(utt)]
        shared = [torch.sigmoid(self.apply_linear("shared", [u])) for u in utt]
        z = self.fusion_layer(torch.stack(private + shared, dim=2)).flatten(2)              # [K, n, 2M * H]
        fused = self.apply_linear("fusion_2", [torch.relu(self.drop(self.apply_linear("fusion_1", [z])))])
        out = self.run_heads(fused)
        if self.training:
            out["aux_loss"] = self.aux_loss(utt, private, shared)
        return out

    # ------------------------------------------------------------------ auxiliary losses
    def aux_loss(self, utt: list[torch.Tensor], private: list[torch.Tensor],
                 shared: list[torch.Tensor]) -> torch.Tensor:
        """[K]: sim_weight * CMD + diff_weight * orthogonality + recon_weight * reconstruction (module docstring)."""
        n = utt[0].shape[1]
        w = row_weights(self, n)
        M = len(utt)
        total = torch.zeros(self.K, device=w.device)
        with torch.autocast(w.device.type, enabled=False):   # 5th moments and sums of squares in float32
            utt, private, shared = [u.float() for u in utt], [p.float() for p in private], [s.float() for s in shared]
            pairs = [(a, b) for a in range(M) for b in range(a + 1, M)]
            if self.sim_weight:
                sim = sum(cmd(shared[a], shared[b], w) for a, b in pairs) / len(pairs)
                total = total + self.sim_weight * sim
            if self.diff_weight:
                rows = real_rows(w)
                diff = sum(orthogonality(private[m], shared[m], w, rows) for m in range(M))
                diff = diff + sum(orthogonality(private[a], private[b], w, rows) for a, b in pairs)
                total = total + self.diff_weight * diff
            if self.recon_weight:
                recon = sum(weighted_mean((self.apply_linear("recon", [p + s]) - u).pow(2).mean(-1), w)
                            for u, p, s in zip(utt, private, shared)) / M
                total = total + self.recon_weight * recon
        return total


def cmd(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, moments: int = MOMENTS) -> torch.Tensor:
    """Central moment discrepancy between a and b [K, n, H] over rows weighed by w [K, n] -> [K]."""
    ma, mb = weighted_mean(a, w), weighted_mean(b, w)
    out = torch.linalg.vector_norm(ma - mb, dim=-1)
    ca, cb = a - ma.unsqueeze(1), b - mb.unsqueeze(1)
    pa, pb = ca, cb
    for _ in range(2, moments + 1):
        pa, pb = pa * ca, pb * cb
        out = out + torch.linalg.vector_norm(weighted_mean(pa, w) - weighted_mean(pb, w), dim=-1)
    return out


def orthogonality(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """MISA's difference loss: mean over the H x H entries of (A^T B)^2, A and B batch-centred and row-normalised,
    the sum over rows weighed by rows * w (a plain sum over the real rows for the trainer's weights) -> [K]."""
    a = a - weighted_mean(a, w).unsqueeze(1)
    b = b - weighted_mean(b, w).unsqueeze(1)
    a = a / (torch.linalg.vector_norm(a, dim=-1, keepdim=True).detach() + NORM_EPS)
    b = b / (torch.linalg.vector_norm(b, dim=-1, keepdim=True).detach() + NORM_EPS)
    corr = torch.bmm((a * (w * rows.unsqueeze(1)).unsqueeze(-1)).transpose(1, 2), b)            # [K, H, H]
    return corr.pow(2).mean(dim=(1, 2))
