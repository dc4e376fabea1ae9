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

from featstore.errors import UnknownNameError
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


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base", "layers"):
            importlib.import_module(f"{__name__}.{mod.name}")


def model_class(name: str) -> type[BatchedModel]:
    """The registered model class called `name` (unknown names fail with the closest matches)."""
    if not MODELS:
        _discover()
    if name not in MODELS:
        raise UnknownNameError("fusion model", name, MODELS)
    return MODELS[name]


def build_model(name: str, spec: ModelSpec, **options: object) -> BatchedModel:
    """Instantiate K models of fusion `name` (each initialised from its own generator in `spec`)."""
    return model_class(name)(spec, **options)


def available_models() -> list[str]:
    if not MODELS:
        _discover()
    return sorted(MODELS)


__all__ = ["BatchedModel", "ModelSpec", "MODELS", "register", "build_model", "model_class", "available_models"]
