"""MCTN, the Multimodal Cyclic Translation Network (Pham et al., "Found in Translation: Learning Robust Joint
Representations by Cyclic Translations Between Modalities", AAAI 2019; MERTools `mctn`): the source modality is
translated into the others, and the encoder states of those translations are the joint representation.

Source: the `source` option (a branch name), else the first text branch (a branch's modality is read from
`ModelSpec.modalities` when the spec carries one, else from the catalog entry of its feature's encoder), else the
first branch -- synthetic or imported encoders the catalog does not know leave the first branch as the source.
Targets: the other branches in branch order. Level 1: the source's sequence (a per-branch Linear to `hidden`)
runs through a bidirectional LSTM encoder (directions summed, dropout) and an attention decoder (an LSTM cell
fed the previous frame and an additive-attention context over the encoder states, a Linear to the target's
width) produces the first target's sequence; the cycle encodes that translation with the same encoder (its own
input Linear) and a second decoder translates it back to the source. Level j >= 2 (hierarchical MCTN): a new
encoder reads level j-1's encoder states and its decoder produces target j. The last level's encoder states ->
an LSTM -> dropout -> Linear -> heads.

Auxiliary loss (`aux_loss`, part of the training step): loss_weight x (sum of the translation losses + the
cycle loss), each the per-row mean squared error over the real steps, averaged with the trainer's row weights
(padding rows of a minibatch never count); computed only in training mode. Teacher forcing: at each decoder step
the next input is the true frame with probability `teacher_forcing_ratio`, else the decoder's own prediction;
the draw comes from torch's global RNG, which the stack seeds from each model's dropout generator, so it is
deterministic per model (MERTools' port always feeds the true frame and keeps no decoder state between steps).

Prediction reads only the encoder states of the source's translation chain, never a decoder or a target's
features, so it needs the source alone (MCTN's point: at test time the targets may be missing); evaluation runs
no decoder. Needs aligned sequences (translations are step for step); every recurrence is packed or stops at a
row's length. Sequence model: K copies run one after another (trainer.models.layers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.models import register
from trainer.models.base import ModelSpec
from trainer.models.layers import (Heads, PerModelStack, SequenceNet, anchor_order, aux_term, number_option,
                                   row_mean, run_lstm, sequence_error, time_mask)
from trainer.protocol import ProtocolError


class Encoder(nn.Module):
    """A bidirectional LSTM over [n, T, hidden]: (states [n, T, hidden], directions summed, dropout; decoder
    start state [n, hidden])."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.start = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = run_lstm(self.lstm, x, lengths)
        H = self.hidden
        states = self.drop(out[..., :H] + out[..., H:])
        return states, torch.tanh(self.start(h[:, :H] + h[:, H:]))


class Decoder(nn.Module):
    """Attention decoder: one LSTM cell step per target frame, additive attention over the encoder states."""

    def __init__(self, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.query = nn.Linear(hidden, hidden, bias=False)     # additive attention: v . tanh(W_q s + W_k e_j)
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.cell = nn.LSTMCell(out_dim + hidden, hidden)
        self.proj = nn.Linear(2 * hidden, out_dim)

    def forward(self, states: torch.Tensor, start: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor,
                forcing: float) -> torch.Tensor:
        """The translation [n, T, out_dim] of encoder states [n, T, hidden] (target: the true frames, fed back
        with probability `forcing`); a row's state stops at its length."""
        n, T, _ = states.shape
        real = time_mask(lengths, T)
        keys = self.key(states)
        s, c = start, torch.zeros_like(start)
        y = states.new_zeros(n, self.out_dim)              # the start frame
        preds = []
        for t in range(T):
            energy = self.v(torch.tanh(keys + self.query(s).unsqueeze(1)))[..., 0]
            a = torch.softmax(energy.masked_fill(~real, float("-inf")), dim=-1)
            context = torch.bmm(a.unsqueeze(1), states)[:, 0]
            s_new, c_new = self.cell(torch.cat([y, context], dim=-1), (s, c))
            live = real[:, t:t + 1].to(s.dtype)
            s, c = live * s_new + (1 - live) * s, live * c_new + (1 - live) * c
            pred = self.proj(torch.cat([s, context], dim=-1))
            preds.append(pred)
            teacher = forcing >= 1 or (forcing > 0 and bool(torch.rand(()) < forcing))
            y = target[:, t] if teacher else pred
        return torch.stack(preds, dim=1)


class MCTNNet(SequenceNet):
    def __init__(self, dims: list[int], order: list[int], hidden: int, dropout: float, loss_weight: float,
                 forcing: float, n_classes: int, n_valence: int) -> None:
        super().__init__()
        self.order, self.loss_weight, self.forcing = order, loss_weight, forcing
        src, first = order[0], order[1]
        self.embed_source = nn.Linear(dims[src], hidden)
        self.embed_back = nn.Linear(dims[first], hidden)           # the cycle: the translation re-encoded
        self.encoders = nn.ModuleList(Encoder(hidden, dropout) for _ in order[1:])
        self.decoders = nn.ModuleList(Decoder(dims[b], hidden) for b in order[1:])
        self.back = Decoder(dims[src], hidden)
        self.head_lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, hidden)
        self.heads = Heads(hidden, n_classes, n_valence)

    def forward(self, xs: list[torch.Tensor], lengths: list[torch.Tensor],
                row_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        ln = lengths[0]
        T = int(ln.max())    # steps past every row's length are dropped, so padding never shifts a coin toss
        xs = [x[:, :T] for x in xs]
        translate = self.training and bool(self.loss_weight)
        loss = xs[0].new_zeros(ln.shape[0])
        h = self.embed_source(xs[self.order[0]])
        for level, (target, encoder, decoder) in enumerate(zip(self.order[1:], self.encoders, self.decoders)):
            h, start = encoder(h, ln)
            if translate:
                pred = decoder(h, start, xs[target], ln, self.forcing)
                loss = loss + sequence_error(pred, xs[target], ln)
                if level == 0:   # the cycle: back from the first translation to the source
                    back_states, back_start = self.encoders[0](self.embed_back(pred), ln)
                    src = xs[self.order[0]]
                    loss = loss + sequence_error(self.back(back_states, back_start, src, ln, self.forcing), src, ln)
        _, z = run_lstm(self.head_lstm, h, ln)
        out = self.heads(self.linear(self.drop(z)))
        if self.training:
            out["aux_loss"] = aux_term(self.loss_weight, row_mean(loss, row_weight))
        return out


@register("mctn")
class MCTN(PerModelStack):
    aligned = True
    space: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4),
                                         "dropout": (0.0, 0.1, 0.2, 0.3), "teacher_forcing_ratio": (0.3, 0.5),
                                         "loss_weight": (0.1, 0.3, 0.5, 0.8, 1.0)}

    def make_net(self, spec: ModelSpec, dims: list[int], dropout: float, loss_weight: float = 0.5,
                 teacher_forcing_ratio: float = 0.5, source: str | None = None) -> SequenceNet:
        if len(dims) < 2:
            raise ProtocolError(f"mctn: translation needs at least 2 branches (a source and a target), got {len(dims)}")
        weight = number_option("mctn", "loss_weight", loss_weight, 0.0, None)
        forcing = number_option("mctn", "teacher_forcing_ratio", teacher_forcing_ratio, 0.0, 1.0)
        return MCTNNet(dims, anchor_order(spec, source, "mctn", "source"), spec.hidden, dropout, weight, forcing,
                       spec.n_classes, spec.n_valence)
