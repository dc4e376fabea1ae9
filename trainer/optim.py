"""Adam over K-stacked parameters, each model with its own learning rate, weight decay and step count.

The update is torch's (`torch.optim.adam.adam`, fused kernel where the device has one): L2 weight decay added
to the gradient as `torch.optim.Adam(weight_decay=...)` does (MERTools' optimiser). Models that share
(lr, weight_decay, step) and sit next to each other in K are updated by one call on views of the stacked
tensors; models idle at a step (their epoch has fewer minibatches) are not touched.

A data layer's weight whose gradient the model deferred (`_deferred_grad` = (x, g), see models.base._DataLinear)
takes its step from trainer.native: the gradient x^T g and the Adam update in one pass, every active model at
once with its own lr, weight decay and step count; the same update as the path above, to float32 rounding. When
the trainer has handed the model the next step's input (`BatchedModel.prefetch`: `_next_input` on the weight),
the same pass also makes the next step's forward product on the updated weight (`_next_product`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.adam import adam

from trainer import native


class BatchedAdam:
    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], weight_decay: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool | None = None) -> None:
        self.params = list(params)
        self.K = int(self.params[0].shape[0])
        if any(int(p.shape[0]) != self.K for p in self.params):
            raise ValueError("every parameter must lead with the same K dimension")
        if len(lr) != self.K or len(weight_decay) != self.K:
            raise ValueError("one lr and one weight_decay per model")
        self.lr = [float(v) for v in lr]
        self.wd = [float(v) for v in weight_decay]
        self.betas, self.eps = betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.steps = [0] * self.K
        dev = self.params[0].device.type
        self.fused = (dev in ("cpu", "cuda")) if fused is None else fused

    def zero_grad(self) -> None:
        for p in self.params:
            if not getattr(p, "_direct_grad", False):  # gradients written in place each step are kept
                p.grad = None

    @torch.no_grad()
    def step(self, active: Sequence[bool] | None = None) -> None:
        act = [True] * self.K if active is None else [bool(a) for a in active]
        stepped: set[int] = set()     # parameters trainer.native has already stepped
        for i, p in enumerate(self.params):
            pending = getattr(p, "_deferred_grad", None)
            if pending is not None:
                p._deferred_grad = None  # type: ignore[attr-defined]
                nxt = getattr(p, "_next_input", None)    # (input, masked input) of the next step: its product too
                z = native.wgrad_adam_(pending[0], pending[1], p.data, self.exp_avg[i], self.exp_avg_sq[i], self.lr,
                                       self.wd, self.steps, act, self.betas, self.eps,
                                       x_next=None if nxt is None else nxt[1])
                if nxt is not None:
                    p._next_input, p._next_product = None, (*nxt, z)  # type: ignore[attr-defined]
                stepped.add(i)
        k = 0
        while k < self.K:
            if not act[k]:
                k += 1
                continue
            key = (self.lr[k], self.wd[k], self.steps[k])
            e = k + 1
            while e < self.K and act[e] and (self.lr[e], self.wd[e], self.steps[e]) == key:
                e += 1
            self._update(k, e, stepped)
            for j in range(k, e):
                self.steps[j] += 1
            k = e

    def _update(self, a: int, b: int, skip: set[int]) -> None:
        ps, gs, ms, vs = [], [], [], []
        whole = a == 0 and b == self.K          # the usual case: every model takes the step, no views needed
        for i, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None or i in skip:
                continue
            for out, t in ((ps, p.data), (gs, p.grad), (ms, m), (vs, v)):
                out.append(t if whole else t[a:b])
        if not ps:
            return
        if self.fused and hasattr(torch, "_fused_adam_"):
            # the fused kernel itself (torch.optim.adam's wrapper costs ~1 ms a step in tensor grouping here)
            step = torch.tensor(float(self.steps[a] + 1), device=ps[0].device)
            torch._fused_adam_(ps, gs, ms, vs, [], [step] * len(ps), lr=self.lr[a], beta1=self.betas[0],
                               beta2=self.betas[1], weight_decay=self.wd[a], eps=self.eps, amsgrad=False,
                               maximize=False)
            return
        steps = [torch.tensor(float(self.steps[a]), device=ps[0].device) for _ in ps]  # adam() adds 1
        adam(ps, gs, ms, vs, [], steps, foreach=False, fused=self.fused, amsgrad=False, beta1=self.betas[0],
             beta2=self.betas[1], lr=self.lr[a], weight_decay=self.wd[a], eps=self.eps, maximize=False)
