"""LF-DNN, late-fusion DNN (the MMSA / MERBench baseline), K models at once.

Per branch an MLPEncoder (dropout on the input, three Linear+ReLU) to `hidden`; the branch vectors are
concatenated and a post-fusion MLP (dropout, Linear+ReLU to `hidden`, twice) feeds the emotion and valence
heads. Unlike attention fusion, every branch keeps its own slice of the fused vector. A missing branch
contributes zeros.
"""

from __future__ import annotations

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec


@register("lf_dnn")
class LateFusionDNN(MLPEncoderMixin, BatchedModel):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        H = spec.hidden
        self.names = self.branch_encoders(H)
        self.post_fusion(H * len(self.names))
        self.output_heads(H)

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        fused = torch.cat(self.run_branches(self.names, inputs, masks), dim=-1)
        return self.run_heads(self.run_post_fusion(fused))
