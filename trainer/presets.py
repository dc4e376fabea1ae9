"""Named training recipes: sets of Protocol fields, kept here as data and nowhere else.

`default` is the MERTools protocol as the trainer runs it without a preset (100 epochs of batch-32 Adam at a
constant lr, the epoch picked on the selection rows). `fast` is the recipe `benchmarks/fast_preset.py` chose by
measurement on three synthetic settings (MER2024-shaped A+L+V, unimodal A, Top-3 A + Top-3 V; figures in
benchmarks/RESULTS.md): batch 128 at lr 2e-3, dropout 0.5 (MERTools' own, and the cheapest to draw: one random bit a
keep/drop decision), linear warm-up then cosine decay to zero over a fixed 12 epochs, the valence MSE weighted 0.5
in the loss (CE + 0.5 x MSE; MERTools adds them unweighted; `--valence-weight`), training steps in bfloat16 where
the hardware multiplies it natively (`train_bf16`: the data layers on kept bf16 copies, the other layers under
autocast; weights, gradients, Adam and evaluation stay float32), and the `strict` protocol with no selection at all
(inner_fraction 0): each fold model trains on its whole training fold and keeps its last epoch; the held-out fold
and the test splits are scored once, at the end, so nothing is tuned on them. History: valence weight 1.0 until
2026-12-07 11:30 UTC. Every figure before 2026-12-07 06:00 was measured while the attention MLP's first layer
followed Adam on the running sum of its past gradients (a bug, fixed in a47f2eb); without it, 12 epochs at weight
1.0 fell 1.9 WAF points below the MERTools protocol on Top-3 (16 epochs came within 0.3 but cost ~3 s more than the
15-s budget; warm-up, lr, weight decay and batch size moved nothing outside seed noise), while halving the valence
weight gained 2.0 (Top-3), 1.4 (main) and 1.0 (unimodal) WAF points at a test valence MSE 4.5% / 0.4% / -0.8% off
(seeds 0-4, one run). Dropout 0.3 (77/256) until 2026-12-07 03:50 UTC: 1.7 WAF points below the MERTools protocol on
Top-3 over five seeds, where dropout 0.4, 0.45 and 0.5 come within a point and gain on the main setting, within seed
noise of each other everywhere (0.5 draws 8x fewer random bytes); weight averaging (EMA, SWA), label smoothing and
more epochs at 0.3 did not move Top-3, nor did 10 epochs at 0.45 reach it. Batch 64 / lr 1e-3 / 10 epochs until
2026-12-07 01:00 (as accurate within seed noise on all three settings, ~25% slower: a step's fixed costs -- Adam
over 5 M parameters, the bf16 weight copies, small-layer overheads -- are paid half as often at batch 128, and bf16
autocast halves the hidden layers' matmuls); 7 epochs at lr 2e-3 until 2026-12-06 (3 points short on Top-3, whose
six branches need more passes). Against an inner split that picks the epoch and stops early (patience 3), training
on every row to the end of the decay scored 1.5-3 WAF points higher on the main and Top-3 settings. The linear
baseline still needs rows to choose its strength on and takes the default inner split (and says so).

A preset fills the fields the caller left at Protocol's defaults: `trainer run --preset fast --epochs 40`
keeps 40 epochs and takes the rest of the recipe; an option typed on the command line is kept even when it equals
the default (`--preset fast --lr 1e-4` trains at 1e-4). Its name is recorded with every result (`preset`
column) and shown by `trainer report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from featstore.errors import UnknownNameError
from trainer.protocol import Protocol

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"mode": "strict", "inner_fraction": 0.0, "batch_size": 128, "lr": 2e-3, "dropout": 0.5, "epochs": 12,
             "schedule": "cosine", "warmup": 0.1, "min_steps": 4, "train_bf16": True, "valence_weight": 0.5},
}

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Protocol)}


def preset_fields(name: str) -> dict[str, Any]:
    """The Protocol fields a preset sets (unknown names fail with the closest matches)."""
    if name not in PRESETS:
        raise UnknownNameError("preset", name, PRESETS)
    return dict(PRESETS[name])


def apply_preset(protocol: Protocol, name: str, keep: Collection[str] = ()) -> Protocol:
    """`protocol` with the preset's fields wherever the protocol still holds Protocol's default, except the fields
    named in `keep` (the options a user gave explicitly, even when equal to the default)."""
    fields = preset_fields(name)
    return protocol.replace(**{k: v for k, v in fields.items()
                               if k not in keep and getattr(protocol, k) == _DEFAULTS[k]})


__all__ = ["PRESETS", "preset_fields", "apply_preset"]
