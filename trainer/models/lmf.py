"""LMF, Low-rank Multimodal Fusion (Liu et al., ACL 2018), K models at once.

Per branch an MLPEncoder (dropout on the input, three Linear+ReLU) to `hidden`, a constant 1 appended, and a
modality-specific factor W_m of shape [hidden+1, rank x hidden]. The fused vector is
sum_r w_r * prod_m (z_m W_m)_r + b: the rank-`rank` approximation of TFN's outer-product fusion, linear in
the number of branches (so Top-N sets of any size work). Emotion and valence heads follow. A missing branch
contributes [0..0, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.models import register
from trainer.models.base import BatchedModel, MLPEncoderMixin, ModelSpec
from trainer.protocol import ProtocolError


@register("lmf")
class LMF(MLPEncoderMixin, BatchedModel):
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.2, 0.3, 0.4, 0.5),
                                         "rank": (2, 4, 8)}

    def __init__(self, spec: ModelSpec, rank: int = 4) -> None:
        super().__init__(spec)
        if rank < 1:
            raise ProtocolError(f"lmf: rank must be >= 1, got {rank}")
        self.rank, H = int(rank), spec.hidden
        self.names = self.branch_encoders(H)
        for i in range(len(self.names)):
            self.linear(f"factor{i}", [H + 1], self.rank * H)
        self.linear("rank_weights", [self.rank], 1)
        self.output_heads(H)

    def forward(self, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        hs = self.run_branches(self.names, inputs, masks)
        prod: torch.Tensor | None = None
        for i, h in enumerate(hs):
            z = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
            f = self.apply_linear(f"factor{i}", [z])                                 # [K, n, rank * H]
            prod = f if prod is None else prod * f
        assert prod is not None
        K, n = prod.shape[0], prod.shape[1]
        per_rank = prod.view(K, n, self.rank, -1).transpose(2, 3).reshape(K, -1, self.rank)   # [K, n*H, rank]
        fused = self.apply_linear("rank_weights", [per_rank]).view(K, n, -1)                # [K, n, H]
        return self.run_heads(fused)
