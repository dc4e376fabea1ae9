"""MMIM, MultiModal InfoMax (Han et al., "Improving Multimodal Fusion with Hierarchical Mutual Information
Maximization for Multimodal Sentiment Analysis", EMNLP 2021; MERTools `mmim`), K models at once.

Per branch m (any M >= 2 branches, so Top-N sets work): h_m = MLPEncoder (dropout on the input, three
Linear+ReLU) to `hidden`; a branch missing for a row gives zeros there. Fusion: z = tanh(Linear(tanh(Linear(
dropout([h_1..h_M]))))) (hidden wide) -> emotion and valence heads.

Auxiliary loss (the training step; `aux_loss` [K], each model over its own minibatch rows weighed by the
trainer's `row_weight`, so padding rows never count):
  aux = alpha * sum_m NCE_m  -  beta * sum_{m != anchor} LLD_m
  LLD_m    input-level MI lower bound between the anchor branch a and branch m (MMILB): a Gaussian q(h_m | h_a)
           with mean MLP_mu(h_a) and log-variance tanh(MLP_logvar(h_a)) (each Linear, ReLU, Linear), and
           LLD = mean over rows of sum_d [-(h_m - mu)^2 / (2 exp(logvar)) - logvar / 2], i.e. the Gaussian
           log-likelihood up to a constant. MERTools (after the authors' code) leaves out the -logvar/2 term,
           which lets the bound grow without limit by inflating the variance; the tanh on logvar is the
           `last_activation` its MMILB takes but never applies. The paper's entropy term (a memory of past
           positive/negative batches, used for sentiment polarity) is left out, as MERTools leaves it out.
  NCE_m    fusion-level MI bound between z and h_m (CPC): h_m^ = CPC_m(z) (`cpc_layers` Linear layers, tanh
           between them), both L2-normalised; NCE = -mean over rows i of [s_ii - logsumexp_j s_ij] with
           s_ij = <h_i, h^_j>, the negatives j being the same model's other real rows of the minibatch.
The anchor is the `anchor` option (a branch name), else the first text branch (MMIM pairs text with the
acoustic and visual branches), else the first branch. MERTools optimises the bound jointly with the task (one
optimiser), as here; the paper's separate first stage that fits MMILB alone is not implemented.
Defaults alpha = beta = 0.1, MERTools' middle values. Utterance-level: the K models train as one batched
computation, like attention fusion.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec
from trainer.models.batch_stats import row_weights, weighted_mean
from trainer.models.layers import anchor_order, number_option
from trainer.protocol import ProtocolError


@register("mmim")
class MMIM(MLPEncoderMixin, BatchedModel):
    # MERTools' model-tune.yaml `mmim`, less grad_clip (the trainer does not clip gradients)
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.0, 0.1, 0.2, 0.3),
                                         "cpc_layers": (1, 2, 3, 4), "alpha": (0.0, 0.1, 0.2), "beta": (0.0, 0.1, 0.2)}

    def __init__(self, spec: ModelSpec, alpha: float = 0.1, beta: float = 0.1, cpc_layers: int = 1,
                 anchor: str | None = None) -> None:
        super().__init__(spec)
        self.alpha = number_option("mmim", "alpha", alpha, 0.0)
        self.beta = number_option("mmim", "beta", beta, 0.0)
        layers = number_option("mmim", "cpc_layers", cpc_layers, 1.0)
        if layers != int(layers):
            raise ProtocolError(f"mmim: cpc_layers must be a whole number >= 1, got {cpc_layers!r}")
        self.cpc_layers = int(layers)
        M, H = len(spec.branches), spec.hidden
        if M < 2:
            raise ProtocolError(f"mmim needs at least 2 branches (its bounds pair modalities), got {M} "
                                f"({', '.join(spec.branches)}); load another modality")
        self.order = anchor_order(spec, anchor, "mmim", "anchor")
        self.names = self.branch_encoders(H)
        for m in self.order[1:]:
            self.linear(f"mu{m}_1", [H], H)
            self.linear(f"mu{m}_2", [H], H)
            self.linear(f"logvar{m}_1", [H], H)
            self.linear(f"logvar{m}_2", [H], H)
        for m in range(M):
            for layer in range(self.cpc_layers):
                self.linear(f"cpc{m}_{layer}", [H], H)
        self.linear("fusion_1", [M * H], H)
        self.linear("fusion_2", [H], H)
        self.output_heads(H)

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        hs = self.run_branches(self.names, inputs, masks)
        z = torch.tanh(self.apply_linear("fusion_1", [self.drop(torch.cat(hs, dim=-1))]))
        z = torch.tanh(self.apply_linear("fusion_2", [z]))
        out = self.run_heads(z)
        if self.training:
            out["aux_loss"] = self.aux_loss(hs, z)
        return out

    # ------------------------------------------------------------------ auxiliary losses
    def aux_loss(self, hs: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """[K]: alpha * sum of the CPC bounds - beta * sum of the MMILB bounds (module docstring)."""
        w = row_weights(self, z.shape[1])
        total = torch.zeros(self.K, device=w.device)
        with torch.autocast(w.device.type, enabled=False):
            hs, z = [h.float() for h in hs], z.float()
            if self.beta:
                anchor = hs[self.order[0]]
                lld = sum(self.log_likelihood(m, anchor, hs[m], w) for m in self.order[1:])
                total = total - self.beta * lld
            if self.alpha:
                total = total + self.alpha * sum(self.nce(m, h, z, w) for m, h in enumerate(hs))
        return total

    def log_likelihood(self, m: int, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """MMILB: the weighted mean over rows of log q(y | x) (up to a constant) -> [K]."""
        mu = self.apply_linear(f"mu{m}_2", [torch.relu(self.apply_linear(f"mu{m}_1", [x]))])
        logvar = torch.tanh(self.apply_linear(f"logvar{m}_2", [torch.relu(self.apply_linear(f"logvar{m}_1", [x]))]))
        per_row = (-(y - mu).pow(2) / (2.0 * logvar.exp()) - 0.5 * logvar).sum(-1)
        return weighted_mean(per_row, w)

    def nce(self, m: int, h: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """CPC between the fusion z and branch m's h [K, n, H], negatives the model's other real rows -> [K]."""
        pred = z
        for layer in range(self.cpc_layers):
            pred = self.apply_linear(f"cpc{m}_{layer}", [pred])
            if layer < self.cpc_layers - 1:
                pred = torch.tanh(pred)
        h = torch.nn.functional.normalize(h, dim=-1)
        pred = torch.nn.functional.normalize(pred, dim=-1)
        scores = torch.bmm(h, pred.transpose(1, 2))                                   # [K, n, n]
        scores = scores.masked_fill((w <= 0).unsqueeze(1), -1e9)    # padding rows: no negatives (finite: no NaN)
        per_row = -(scores.diagonal(dim1=1, dim2=2) - torch.logsumexp(scores, dim=-1))
        return weighted_mean(per_row.masked_fill(w <= 0, 0.0), w)
