"""Linear: the convex baseline -- logistic regression or a ridge classifier (emotions, `solver` option) and ridge
(valence) on standardised features, regularisation chosen on held-out rows (trainer/linear.py). One feature: the per-feature baseline;
several: the stacked one. No epochs and no minibatches: `run_experiment` fits it directly (`convex = True`)."""

from __future__ import annotations

from typing import Any

from trainer.models import register
from trainer.models.base import BatchedModel, ModelSpec


@register("linear")
class Linear(BatchedModel):
    convex = True            # fitted by trainer.linear.fit_jobs, not by the minibatch loop
    # its regularisation is chosen inside each fit; a grid searches only the emotion solver
    space: dict[str, tuple[Any, ...]] = {"solver": ("logistic", "ridge")}

    def __init__(self, spec: ModelSpec) -> None:  # pragma: no cover - never built as a torch module
        raise TypeError("the linear baseline is fitted by trainer.linear, not built as a torch module")
