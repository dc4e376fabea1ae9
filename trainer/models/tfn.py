"""TFN, Tensor Fusion Network (Zadeh et al., EMNLP 2017), K models at once.

Per branch an MLPEncoder (dropout on the input, three Linear+ReLU) to a small `subnet` width h; each branch
vector gets a constant 1 appended, and the fused vector is their outer product, flattened: (h+1)^M values
that hold every unimodal, bimodal and trimodal interaction. A post-fusion MLP (dropout, Linear+ReLU to
`hidden`, twice) feeds the emotion and valence heads. The outer product grows as (h+1)^M, so TFN takes at most
`MAX_BRANCHES` branches (use `--concat` to give it one per modality). A missing branch contributes [0..0, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec
from trainer.protocol import ProtocolError

MAX_BRANCHES = 3


@register("tfn")
class TFN(MLPEncoderMixin, BatchedModel):
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.2, 0.3, 0.4, 0.5),
                                         "subnet": (8, 16, 32)}

    def __init__(self, spec: ModelSpec, subnet: int = 16) -> None:
        super().__init__(spec)
        if len(spec.branches) > MAX_BRANCHES:
            raise ProtocolError(f"tfn fuses at most {MAX_BRANCHES} branches by outer product, got "
                                f"{len(spec.branches)}; pass --concat (one branch per modality)")
        if subnet < 1:
            raise ProtocolError(f"tfn: subnet must be >= 1, got {subnet}")
        self.names = self.branch_encoders(int(subnet))
        width = (int(subnet) + 1) ** len(self.names)
        self.post_fusion(width)
        self.output_heads(spec.hidden)

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        hs = self.run_branches(self.names, inputs, masks)
        fused: torch.Tensor | None = None
        for h in hs:
            z = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)                 # [K, n, h+1]
            fused = z if fused is None else (fused.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)
        assert fused is not None
        return self.run_heads(self.run_post_fusion(fused))
