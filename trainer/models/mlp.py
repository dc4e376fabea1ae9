"""MLP for unimodal (or early-fusion) experiments: the attention model's encoder and heads, no fusion.

MLPEncoder(sum of the input dims, hidden) -- dropout on the input, three Linear+ReLU layers -- then the
emotion head (and the valence head when the dataset has valence). Several branches are concatenated into the
one input (the weights are split by part, so no concatenated copy of the features is made).
"""

from __future__ import annotations

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec


@register("mlp")
class MLP(MLPEncoderMixin, BatchedModel):
    prefetch_safe = True     # one data layer, and no other dropout

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.parts = [p for parts in spec.branches.values() for p in parts]
        self.mlp_encoder("enc0", [spec.dims[p] for p in self.parts], spec.hidden)
        self.output_heads(spec.hidden)

    def data_inputs(self, inputs: dict[str, torch.Tensor]) -> list[tuple[str, list[torch.Tensor]]]:
        return [("enc0_1", [inputs[p] for p in self.parts])]

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return self.run_heads(self.run_encoder("enc0", [inputs[p] for p in self.parts]))
