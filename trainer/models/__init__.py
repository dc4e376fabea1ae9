"""Fusion models, many at once: K independent models as one module whose parameters lead with a K dimension.

One interface: `model(inputs, masks=None) -> {'emotion': [K, n, C] logits, 'valence': [K, n], ...}` where
`inputs` maps feature names to [K, n, D] (each model its own rows) or [n, D] (the same rows for every model)
and `masks` maps branch names to row availability. A model with training terms of its own (MISA's subspace
losses, MMIM's MI bounds, ...) returns them as `aux_loss` [K] (one scalar per model, computed with
`self.row_weight` during training); the trainer adds them to the task loss. Adding a model is one file here:

    @register("mymodel")
    class MyModel(BatchedModel):
        def __init__(self, spec: ModelSpec, **options): ...
        def forward(self, inputs, masks=None): ...
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from featstore.errors import FeatstoreError, UnknownNameError
from trainer.models.base import BatchedModel, ModelSpec

MODELS: dict[str, type[BatchedModel]] = {}


def register(name: str) -> Callable[[type[BatchedModel]], type[BatchedModel]]:
    """Class decorator: make a BatchedModel available as `fusion=name`."""

    def deco(cls: type[BatchedModel]) -> type[BatchedModel]:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"fusion model '{name}' is registered twice ({MODELS[name].__name__}, {cls.__name__})")
        MODELS[name] = cls
        cls.name = name
        return cls

    return deco


_HELPERS = ("base", "layers", "batch_stats")   # modules of shared parts, not models
_discovered = False


def _discover() -> None:
    """Import every model module once (a module imported directly before this still registers only once)."""
    global _discovered
    if _discovered:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in _HELPERS:
            importlib.import_module(f"{__name__}.{mod.name}")
    _discovered = True


def model_class(name: str) -> type[BatchedModel]:
    """The registered model class called `name` (unknown names fail with the closest matches)."""
    _discover()
    if name not in MODELS:
        raise UnknownNameError("fusion model", name, MODELS)
    return MODELS[name]


def build_model(name: str, spec: ModelSpec, **options: object) -> BatchedModel:
    """Instantiate K models of fusion `name` (each initialised from its own generator in `spec`)."""
    return model_class(name)(spec, **options)


def input_options(fusion: str, protocol: Any) -> dict[str, Any]:
    """The load_features arguments a fusion needs: level 'seq' (with the protocol's steps and alignment -- aligned
    when the model requires it or the protocol asks) for sequence models, nothing extra for utterance models."""
    cls = model_class(fusion)
    if getattr(cls, "level", "utt") != "seq":
        return {}
    aligned = protocol.aligned if protocol.aligned is not None else bool(getattr(cls, "aligned", None))
    if getattr(cls, "aligned", None) and protocol.aligned is False:
        raise FeatstoreError(f"fusion '{fusion}' needs aligned sequences; drop --unaligned")
    return {"level": "seq", "steps": protocol.steps, "aligned": aligned}


def model_level(fusion: str) -> str:
    """'seq' for sequence models (frame-level input), 'utt' for utterance models."""
    return getattr(model_class(fusion), "level", "utt")


def available_models() -> list[str]:
    """Every registered fusion name, sorted."""
    _discover()
    return sorted(MODELS)


__all__ = ["BatchedModel", "ModelSpec", "MODELS", "register", "build_model", "model_class", "available_models",
           "input_options", "model_level"]
