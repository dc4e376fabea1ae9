"""Attention fusion, the MER2024 baseline (MERTools toolkit/models/attention_topn.py), K models at once.

Layer by layer as MERTools builds it (and in that order, so the initialisation matches):
  encoder_i      MLPEncoder(dim_i, hidden): dropout(input) -> 3 x (Linear + ReLU)     one per branch
  attention_mlp  MLPEncoder(hidden * M, hidden) over the concatenated branch vectors
  fc_att         Linear(hidden, M): one weight per branch -- used as is, NO softmax (MERTools' code);
                 `softmax=True` normalises them as the paper's equation does
  fused          sum_i weight_i * h_i   (MERTools: matmul of the stacked [hidden, M] vectors with the weights)
  fc_out_1       Linear(hidden, n_classes) -> emotion logits
  fc_out_2       Linear(hidden, 1)         -> valence (only when the dataset has valence; MERTools builds a
                                              0-wide layer otherwise, which draws no random numbers)
A branch missing for a row (its extraction failed) contributes a zero vector (and, with softmax, no weight).
"""

from __future__ import annotations

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec


@register("attention")
class Attention(MLPEncoderMixin, BatchedModel):
    def __init__(self, spec: ModelSpec, softmax: bool = False) -> None:
        super().__init__(spec)
        self.softmax = bool(softmax)
        H = spec.hidden
        self.branch_names = self.branch_encoders(H)
        M = len(self.branch_names)
        self.mlp_encoder("att", [H * M], H, data=False)    # over activations: plain autograd layers
        self.linear("fc_att", [H], M)
        self.output_heads(H)

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        hiddens = self.run_branches(self.branch_names, inputs, masks)
        att = self.run_hidden_encoder("att", torch.cat(hiddens, dim=-1))
        weights = self.apply_linear("fc_att", [att])                        # [K, n, M]
        if self.softmax:
            if masks is not None:
                shape = weights.shape[:-1]
                miss = torch.stack([(masks[b] == 0).expand(shape) if b in masks
                                    else torch.zeros(shape, dtype=torch.bool, device=weights.device)
                                    for b in self.branch_names], dim=-1)
                weights = weights.masked_fill(miss, float("-inf"))
            weights = torch.softmax(weights, dim=-1)
        fused = hiddens[0] * weights[..., 0:1]
        for i in range(1, len(hiddens)):
            fused = fused + hiddens[i] * weights[..., i:i + 1]
        return self.run_heads(fused, attention=weights)
