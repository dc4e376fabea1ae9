"""trainer.native_trunk: the attention model's trunk (everything after the data layers' products) as one native
forward and backward, against the model's PyTorch layers: outputs, every gradient, the dropout draws, thread
counts, and where the PyTorch layers still run."""

from __future__ import annotations

import shutil

import pytest
import torch

from trainer import native, native_trunk
from trainer.models import build_model
from trainer.models.attention import Attention

from test_trainer_models import inputs, spec

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: trainer.native falls back")


def train_step(K: int, B: int, native_trunk_on: bool, monkeypatch: pytest.MonkeyPatch, shared: bool = False,
               loss_on: tuple[str, ...] = ("emotion", "valence"), threads: int | None = None,
               x: dict[str, torch.Tensor] | None = None, loss_w: dict[str, torch.Tensor] | None = None,
               **spec_kw) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """One training forward + backward of a fresh model (the trainer's setting: deferred data layers) on inputs x
    (default: `inputs`) with the loss sum(out[k] * loss_w[k]) (default weights: random); returns the outputs, every
    parameter's gradient (a data layer's: x^T g from its deferred pair) and the number of native trunk calls."""
    softmax = spec_kw.pop("softmax", False)
    m = build_model("attention", spec(K=K, **spec_kw), softmax=softmax).train()
    m.defer_data_grads = True
    calls = []
    real = native_trunk.AttentionTrunk.apply
    monkeypatch.setattr(native_trunk.AttentionTrunk, "apply", lambda *a: (calls.append(a[0]), real(*a))[1])
    if not native_trunk_on:
        monkeypatch.setattr(Attention, "_trunk_is_native", lambda self: False)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        out = m(inputs(K, B, shared=shared) if x is None else x)
        gen = torch.Generator().manual_seed(7)
        loss_w = loss_w or {k: torch.randn(out[k].shape, generator=gen) for k in loss_on if k in out}
        loss = sum((out[k] * w).sum() for k, w in loss_w.items())
        loss.backward()
    finally:
        torch.set_num_threads(before)
        monkeypatch.undo()
    grads = {}
    for name, p in m.named_parameters():
        pending = getattr(p, "_deferred_grad", None)
        if pending is not None:
            x, g = pending
            grads[name] = torch.matmul(x.transpose(-1, -2), g)
        elif p.grad is not None:
            grads[name] = p.grad
    return {k: v.detach() for k, v in out.items()}, grads, len(calls)


CASES = {   # K, B, spec: hidden, heads, dropout, softmax, branches
    "three branches, 4-row tiles": (3, 32, dict(hidden=16)),
    "one branch, a row tail, no valence, softmax": (2, 7, dict(hidden=32, n_valence=0, n_classes=4, dropout=0.3,
                                                              softmax=True, branches={"a": ("a",)})),
    "64 + 16 columns, no emotion head, no dropout": (4, 33, dict(hidden=80, n_classes=0, dropout=0.0, softmax=True)),
    "a two-part branch, one model, 2-bit dropout": (1, 5, dict(hidden=64, n_classes=3, dropout=0.25,
                                                               branches={"at": ("a", "t"), "v": ("v",)})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_trunk_equals_the_layers(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    K, B, kw = CASES[case]
    out_n, grads_n, calls = train_step(K, B, True, monkeypatch, **dict(kw))
    out_t, grads_t, none = train_step(K, B, False, monkeypatch, **dict(kw))
    assert calls == 1 and none == 0
    assert set(out_n) == set(out_t) and set(grads_n) == set(grads_t)
    for k, ref in out_t.items():
        assert torch.allclose(out_n[k], ref, rtol=1e-5, atol=1e-6), k
    for name, ref in grads_t.items():
        scale = float(ref.abs().max())
        assert float((grads_n[name] - ref).abs().max()) <= 1e-5 * scale + 1e-7, name
    # every layer took part -- but a softmax over a single branch's weight is 1 whatever the attention MLP says
    frozen = {n for n in grads_t if n.startswith(("att_", "fc_att"))} if kw.get("softmax") and kw.get("branches") \
        and len(kw["branches"]) == 1 else set()
    assert {n for n, g in grads_t.items() if not g.any()} == frozen


def test_gradients_through_the_weights_and_the_fused_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Losses on the attention weights and the fused vector (auxiliary terms) reach every layer the same way."""
    kw = dict(hidden=16, softmax=True)
    loss_on = ("attention", "features", "valence")
    _, grads_n, calls = train_step(3, 9, True, monkeypatch, loss_on=loss_on, **dict(kw))
    _, grads_t, _ = train_step(3, 9, False, monkeypatch, loss_on=loss_on, **dict(kw))
    assert calls == 1
    assert not grads_n["fc_out_1_w0"].any() and not grads_n["fc_out_1_b"].any()    # no loss on the emotion head
    for name, ref in grads_t.items():
        assert float((grads_n[name] - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-7, name


def test_rows_shared_by_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    out_n, grads_n, calls = train_step(3, 12, True, monkeypatch, shared=True, hidden=32)
    out_t, grads_t, _ = train_step(3, 12, False, monkeypatch, shared=True, hidden=32)
    assert calls == 1
    assert torch.allclose(out_n["emotion"], out_t["emotion"], rtol=1e-5, atol=1e-6)
    for name, ref in grads_t.items():
        assert float((grads_n[name] - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-7, name


def test_results_do_not_depend_on_the_thread_count_nor_on_the_other_models(monkeypatch: pytest.MonkeyPatch) -> None:
    x = inputs(5, 32)
    gen = torch.Generator().manual_seed(3)
    loss_w = {"emotion": torch.randn(5, 32, 6, generator=gen), "valence": torch.randn(5, 32, generator=gen)}
    one = train_step(5, 32, True, monkeypatch, threads=1, hidden=64, seeds=list(range(5)), x=x, loss_w=loss_w)
    two = train_step(5, 32, True, monkeypatch, threads=2, hidden=64, seeds=list(range(5)), x=x, loss_w=loss_w)
    for a, b in ((one[0], two[0]), (one[1], two[1])):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # model 3 of the five trained alone (its own generators, rows and loss): the same numbers, bit for bit
    alone = train_step(1, 32, True, monkeypatch, hidden=64, seeds=[3], x={k: v[3:4] for k, v in x.items()},
                       loss_w={k: w[3:4] for k, w in loss_w.items()})
    assert alone[2] == 1
    for k, v in alone[0].items():
        assert torch.equal(v, two[0][k][3:4]), k
    for name, g in alone[1].items():
        assert torch.equal(g, two[1][name][3:4]), name


def test_the_layers_run_where_the_kernel_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation, masked branches, a width that is not a multiple of 16, bf16 and FEATSTORE_NATIVE=0 keep the
    PyTorch layers (and give the same values)."""
    calls = []
    real = native_trunk.AttentionTrunk.apply
    monkeypatch.setattr(native_trunk.AttentionTrunk, "apply", lambda *a: (calls.append(1), real(*a))[1])
    m = build_model("attention", spec(K=2, hidden=16)).train()
    m.defer_data_grads = True
    x = inputs(2, 6)
    m(x)
    assert len(calls) == 1
    m(x, masks={"a": torch.ones(2, 6)})                            # a masked branch
    with torch.no_grad():
        m(x)                                                        # no gradients
    m.eval()
    m(x)                                                            # evaluation
    m.train()
    m.data_dtype = torch.bfloat16
    m(x)
    m.data_dtype = None
    odd = build_model("attention", spec(K=2, hidden=24)).train()
    odd.defer_data_grads = True
    odd(x)                                                          # 24 is not a multiple of 16
    assert len(calls) == 1
    try:
        monkeypatch.setenv("FEATSTORE_NATIVE", "0")
        native.reset()
        m(x)
        assert len(calls) == 1 and not native_trunk.usable(m._trunk_params(), 16)
    finally:
        monkeypatch.delenv("FEATSTORE_NATIVE")
        native.reset()
    m(x)
    assert len(calls) == 2


def test_a_parameter_changed_between_forward_and_backward_is_refused() -> None:
    m = build_model("attention", spec(K=2, hidden=16)).train()
    m.defer_data_grads = True
    out = m(inputs(2, 4))
    with torch.no_grad():
        m.att_2_w0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out["emotion"].sum().backward()
