"""Named training recipes: sets of Protocol fields, kept here as data and nowhere else.

`default` is the MERTools protocol as the trainer runs it without a preset (100 epochs of batch-32 Adam at a
constant lr, the epoch picked on the selection rows). `fast` is the recipe `benchmarks/fast_preset.py` chose by
measurement on three synthetic settings (MER2024-shaped A+L+V, unimodal A, Top-3 A + Top-3 V; figures in
benchmarks/RESULTS.md): batch 64 at lr 1e-3, dropout 0.3 (77/256 = 0.3008: a multiple of 1/256, so each keep/drop
decision takes one random byte, not two; ~4% of the run), linear warm-up then cosine decay to zero over a fixed 10
epochs (7 epochs at lr 2e-3 until 2026-12-06: as good on the main setting and faster, but 3 points short on Top-3,
whose six branches need the longer schedule), the data layers in bfloat16 where the hardware multiplies it
natively (each branch's first Linear, nearly all the FLOPs; weights, gradients, Adam and evaluation stay float32:
~20% less training time, accuracy unchanged within seed noise), and the `strict` protocol with no selection at all
(inner_fraction 0): each fold model trains on its whole training fold and keeps its last epoch; the held-out fold
and the test splits are scored once, at the end, so nothing is tuned on them. Against an inner split that picks
the epoch and stops early (patience 3), training on every row to the end of the decay scored 1.5-3 WAF points
higher on the main and Top-3 settings for ~1 s more. The linear baseline still needs rows to choose its strength
on and takes the default inner split (and says so).

A preset fills the fields the caller left at Protocol's defaults: `trainer run --preset fast --epochs 40`
keeps 40 epochs and takes the rest of the recipe. Its name is recorded with every result (`preset`
column) and shown by `trainer report`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from featstore.errors import UnknownNameError
from trainer.protocol import Protocol

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"mode": "strict", "inner_fraction": 0.0, "batch_size": 64, "lr": 1e-3, "dropout": 77 / 256, "epochs": 10,
             "schedule": "cosine", "warmup": 0.1, "min_steps": 4, "data_bf16": True},
}

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Protocol)}


def preset_fields(name: str) -> dict[str, Any]:
    """The Protocol fields a preset sets (unknown names fail with the closest matches)."""
    if name not in PRESETS:
        raise UnknownNameError("preset", name, PRESETS)
    return dict(PRESETS[name])


def apply_preset(protocol: Protocol, name: str) -> Protocol:
    """`protocol` with the preset's fields wherever the protocol still holds Protocol's default."""
    fields = preset_fields(name)
    return protocol.replace(**{k: v for k, v in fields.items() if getattr(protocol, k) == _DEFAULTS[k]})


__all__ = ["PRESETS", "preset_fields", "apply_preset"]
