"""Named training recipes: sets of Protocol fields, kept here as data and nowhere else.

`default` is the MERTools protocol as the trainer runs it without a preset (100 epochs of batch-32 Adam at a
constant lr, the epoch picked on the selection rows). `fast` is the recipe `benchmarks/fast_preset.py`
chose by measurement on the synthetic MER2024-shaped benchmark (figures in benchmarks/RESULTS.md): fewer,
larger minibatches with a scaled learning rate, linear warm-up then cosine decay, early stopping on the
selection rows, and the `strict` protocol (an inner split of each training fold selects the epoch and
stops training; the held-out fold and the test splits are scored once, at the end, so nothing is tuned on
them).

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
    "fast": {"mode": "strict", "batch_size": 64, "lr": 2e-3, "dropout": 0.3, "epochs": 7, "schedule": "cosine",
             "warmup": 0.1, "patience": 3, "min_steps": 4},
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
