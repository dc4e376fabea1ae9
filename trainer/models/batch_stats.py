"""Per-model minibatch statistics for the auxiliary losses of batched models (MISA, MMIM): row weights, means.

During a training step the trainer sets `model.row_weight` [K, n]: each active model's minibatch rows weigh
1/rows, padding rows (a model with fewer rows in this step) and idle models 0. A batch statistic (a mean, a
central moment, a set of contrastive negatives) weighs rows by it, so padding never counts and a model's loss
never depends on the others in its batch.
"""

from __future__ import annotations

import torch

from trainer.models.base import BatchedModel


def row_weights(model: BatchedModel, n: int) -> torch.Tensor:
    """[K, n] float32: the trainer's `model.row_weight`, or 1/n for every row when it is not set (a model called
    directly in training mode)."""
    w = model.row_weight
    if w is None:
        return torch.full((model.K, n), 1.0 / n, device=model.device)
    if tuple(w.shape) != (model.K, n):
        raise ValueError(f"{model.name}: row_weight has shape {tuple(w.shape)}, expected ({model.K}, {n})")
    return w.float()


def weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_rows w * x: x [K, n, ...], w [K, n] -> [K, ...] (each model's mean over its real rows)."""
    return (x * w.view(*w.shape, *([1] * (x.dim() - 2))).to(x.dtype)).sum(1)


def real_rows(w: torch.Tensor) -> torch.Tensor:
    """[K] float: how many rows of each model carry weight (0 for an idle model)."""
    return (w > 0).sum(-1).to(w.dtype)


__all__ = ["row_weights", "weighted_mean", "real_rows"]
