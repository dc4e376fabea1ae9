"""EF-LSTM, early fusion (Williams et al., "Recognizing Emotions in Video Using Multimodal DNN Feature Fusion",
ACL 2018 workshop; MMSA/MERTools `ef_lstm`): the aligned modalities concatenated at every step, one LSTM over
the joint sequence, its last layer's final state -> dropout -> Linear+ReLU -> dropout -> heads.

Needs aligned sequences (one time axis); the LSTM is packed, so padding never enters the state (MERTools pads
in front instead and reads the last step). Sequence model: K copies run one after another (trainer.models.layers).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import Heads, PerModelStack, SequenceNet, run_lstm
from trainer.protocol import ProtocolError


class EFLSTMNet(SequenceNet):
    def __init__(self, dims: list[int], hidden: int, dropout: float, num_layers: int, n_classes: int,
                 n_valence: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(sum(dims), hidden, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, hidden)
        self.heads = Heads(hidden, n_classes, n_valence)

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _, h = run_lstm(self.lstm, torch.cat(xs, dim=-1), lengths[0])
        x = self.dropout(F.relu(self.linear(self.dropout(h))))
        return self.heads(x)


@register("ef_lstm")
class EFLSTM(PerModelStack):
    aligned = True
    space: dict[str, tuple[Any, ...]] = {"hidden": (128, 256, 512, 1024), "lr": (1e-3, 1e-4),
                                         "dropout": (0.2, 0.3, 0.4, 0.5), "num_layers": (2, 3, 4)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, num_layers: int = 2) -> SequenceNet:
        if int(num_layers) < 1:
            raise ProtocolError(f"ef_lstm: num_layers must be >= 1, got {num_layers}")
        return EFLSTMNet(dims, spec.hidden, dropout, int(num_layers), spec.n_classes, spec.n_valence)
