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

In the trainer's training steps on a CPU (float32, trainer.native's kernels built, no branch masked) everything
after the data layers' products runs as one native forward and backward (trainer.native_trunk); the layers below
are the definition, and the path of every other case.
"""

from __future__ import annotations

import torch

from trainer import native_trunk
from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec


@register("attention")
class Attention(MLPEncoderMixin, BatchedModel):
    prefetch_safe = True     # the branches' data masks come first, then the attention MLP's

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
        if masks is None and self._trunk_is_native():
            return self._forward_native(inputs)
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

    def data_inputs(self, inputs: dict[str, torch.Tensor]) -> list[tuple[str, list[torch.Tensor]]]:
        return [(f"enc{i}_1", [inputs[p] for p in self.spec.branches[b]]) for i, b in enumerate(self.branch_names)]

    def _trunk_params(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in native_trunk.param_names(len(self.branch_names), self.spec.n_classes,
                                                                    self.spec.n_valence)]

    def _trunk_is_native(self) -> bool:
        """A training step of the trainer's float32 CPU path (see trainer.native_trunk)."""
        return (self.training and torch.is_grad_enabled() and self.defer_data_grads and self.data_dtype is None
                and not torch.is_autocast_enabled(self.device.type)
                and native_trunk.usable(self._trunk_params(), self.spec.hidden))

    def _forward_native(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training forward with the trunk in one native call; the same outputs as `forward`'s layers."""
        zs = [self.apply_data_linear(name, xs) for name, xs in self.data_inputs(inputs)]
        K, B, H = zs[0].shape
        M, C, V = len(zs), self.spec.n_classes, self.spec.n_valence
        keep = self.drop_mask(B, M * H)    # the attention MLP's dropout, drawn after the data layers' masks
        emotion, valence, weights, fused = native_trunk.AttentionTrunk.apply(
            (K, B, M, H, C, V), self.softmax, keep, *zs, *self._trunk_params())
        out = {"features": fused, "attention": weights}
        if C:
            out["emotion"] = emotion
        if V:
            out["valence"] = valence[..., 0]
        return out
