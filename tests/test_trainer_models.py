"""trainer.models: output shapes, MERTools-identical initialisation, softmax option, masks, per-model dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featstore.errors import UnknownNameError
from trainer.models import available_models, build_model, model_class, register
from trainer.models.base import BatchedModel, ModelSpec

DIMS = {"a": 12, "t": 20, "v": 8}


def spec(K: int = 3, n_classes: int = 6, n_valence: int = 1, hidden: int = 16, dropout: float | list[float] = 0.5,
         branches: dict[str, tuple[str, ...]] | None = None, seeds: list[int] | None = None) -> ModelSpec:
    seeds = seeds or list(range(100, 100 + K))
    drops = dropout if isinstance(dropout, list) else [dropout] * K
    return ModelSpec(branches=branches or {k: (k,) for k in DIMS}, dims=DIMS, n_classes=n_classes,
                     n_valence=n_valence, hidden=hidden, dropout=drops,
                     init_generators=[torch.Generator().manual_seed(s) for s in seeds],
                     drop_generators=[torch.Generator().manual_seed(s + 1) for s in seeds])


def inputs(K: int, n: int, shared: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(*(() if shared else (K,)), n, d, generator=g) for k, d in DIMS.items()}


# ------------------------------------------------------------------ MERTools' attention_topn, as it is written
class _MLPEncoder(nn.Module):
    def __init__(self, i: int, h: int, p: float) -> None:
        super().__init__()
        self.drop, self.linear_1, self.linear_2, self.linear_3 = nn.Dropout(p), nn.Linear(i, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear_3(F.relu(self.linear_2(F.relu(self.linear_1(self.drop(x)))))))


class RefAttentionTopN(nn.Module):
    """MERTools toolkit/models/attention_topn.py, layer by layer (a reference for the batched model)."""

    def __init__(self, dims: list[int], hidden: int, dropout: float, n_classes: int, n_valence: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList([_MLPEncoder(d, hidden, dropout) for d in dims])
        self.attention_mlp = _MLPEncoder(hidden * len(dims), hidden, dropout)
        self.fc_att = nn.Linear(hidden, len(dims))
        self.fc_out_1 = nn.Linear(hidden, n_classes)
        self.fc_out_2 = nn.Linear(hidden, n_valence)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hiddens = [e(x) for e, x in zip(self.encoders, xs)]
        att = self.fc_att(self.attention_mlp(torch.cat(hiddens, dim=1))).unsqueeze(2)
        fused = torch.matmul(torch.stack(hiddens, dim=2), att).squeeze(2)
        return self.fc_out_1(fused), self.fc_out_2(fused)


def test_attention_shapes_with_and_without_valence_and_shared_inputs() -> None:
    m = build_model("attention", spec(K=3)).eval()
    out = m(inputs(3, 7))
    assert out["emotion"].shape == (3, 7, 6) and out["valence"].shape == (3, 7) and out["attention"].shape == (3, 7, 3)
    out_shared = m(inputs(3, 7, shared=True))  # one set of rows for every model (test splits)
    assert out_shared["emotion"].shape == (3, 7, 6)
    m2 = build_model("attention", spec(K=2, n_valence=0)).eval()
    out2 = m2(inputs(2, 5))
    assert "valence" not in out2 and out2["emotion"].shape == (2, 5, 6)
    m3 = build_model("attention", spec(K=2, n_classes=0)).eval()  # sentiment: regression head only
    out3 = m3(inputs(2, 5))
    assert "emotion" not in out3 and out3["valence"].shape == (2, 5)


def test_mlp_shapes_and_registry() -> None:
    m = build_model("mlp", spec(K=2, branches={"a": ("a",)})).eval()
    out = m(inputs(2, 4))
    assert out["emotion"].shape == (2, 4, 6) and out["valence"].shape == (2, 4)
    assert {"attention", "mlp"} <= set(available_models())
    with pytest.raises(UnknownNameError, match="attention"):
        model_class("atention")


def test_adding_a_model_is_one_registered_class() -> None:
    @register("test-linear-probe")
    class Probe(BatchedModel):
        def __init__(self, spec: ModelSpec) -> None:
            super().__init__(spec)
            self.feats = [p for ps in spec.branches.values() for p in ps]
            self.linear("out", [spec.dims[p] for p in self.feats], spec.n_classes, data=True)

        def forward(self, inputs, masks=None):
            return {"emotion": self.apply_data_linear("out", [inputs[p] for p in self.feats])}

    try:
        m = build_model("test-linear-probe", spec(K=2)).eval()
        assert m(inputs(2, 3))["emotion"].shape == (2, 3, 6)
    finally:
        from trainer.models import MODELS

        del MODELS["test-linear-probe"]          # the registry is global: leave it as found


def test_initialisation_equals_mertools_module_built_after_manual_seed() -> None:
    """Model k built from generator seed s starts from the weights nn.Linear draws after torch.manual_seed(s)."""
    seeds = [11, 22]
    m = build_model("attention", spec(K=2, seeds=seeds, dropout=0.0)).eval()
    x = inputs(2, 9)
    out = m(x)
    for k, s in enumerate(seeds):
        torch.manual_seed(s)
        ref = RefAttentionTopN(list(DIMS.values()), 16, 0.0, 6, 1).eval()
        assert torch.equal(ref.encoders[0].linear_1.weight.t(), m.enc0_1_w0[k])
        assert torch.equal(ref.fc_out_2.bias, m.fc_out_2_b[k, 0])
        e, v = ref([x[n][k] for n in DIMS])
        assert torch.allclose(e, out["emotion"][k], atol=1e-6) and torch.allclose(v[:, 0], out["valence"][k], atol=1e-6)


def test_no_softmax_by_default_softmax_option_normalises() -> None:
    x = inputs(2, 5)
    w = build_model("attention", spec(K=2)).eval()(x)["attention"]
    assert not torch.allclose(w.sum(-1), torch.ones(2, 5))  # MERTools' raw weights
    ws = build_model("attention", spec(K=2), softmax=True).eval()(x)["attention"]
    assert torch.allclose(ws.sum(-1), torch.ones(2, 5)) and (ws > 0).all()


def test_missing_branch_contributes_nothing() -> None:
    m = build_model("attention", spec(K=2), softmax=True).eval()
    x = inputs(2, 4)
    masks = {"t": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    out = m(x, masks)
    assert torch.all(out["attention"][:, [1, 3], 1] == 0) and torch.all(out["attention"][:, [0, 2], 1] > 0)
    x2 = {k: v.clone() for k, v in x.items()}
    x2["t"][:, [1, 3]] = 123.0  # whatever a missing row holds is ignored
    assert torch.allclose(m(x2, masks)["emotion"], out["emotion"])


@pytest.mark.parametrize("p, bits", [(0.25, 2), (0.75, 2), (0.375, 4), (0.1015625, 8), (0.3, 16)])
def test_dropout_rate_on_every_bit_width(p: float, bits: int) -> None:
    """2 bits (p = 1/4, 3/4), 4 bits (multiples of 1/16), 8 bits (of 1/256), 16 bits otherwise: the rate holds,
    alone and beside a model of another width (the per-model path), and each model draws from its own stream."""
    both = build_model("attention", spec(K=2, dropout=[p, 0.5])).train()
    alone = build_model("attention", spec(K=1, dropout=[p])).train()
    assert both._bits == [bits, 1]
    keep, solo = both.keep_mask(64, 2000)[0], alone.keep_mask(64, 2000)[0]
    assert torch.equal(keep, solo) and set(torch.unique(keep).tolist()) == {0.0, 1.0}
    assert abs(float(1 - keep.mean()) - p) < 0.01
    assert abs(float(1 - alone.keep_mask(64, 2000)[0].mean()) - p) < 0.01   # the next draw: fresh bits, same rate


def test_dropout_rate_and_per_model_independence() -> None:
    s = spec(K=3, dropout=[0.5, 0.3, 0.0])
    m = build_model("attention", s).train()
    keep = m.keep_mask(64, 500)
    rates = 1 - keep.mean(dim=(1, 2))
    assert abs(rates[0] - 0.5) < 0.01 and abs(rates[1] - 0.3) < 0.01 and rates[2] == 0
    assert set(torch.unique(keep).tolist()) <= {0.0, 1.0}
    # model 0 alone draws the same mask as inside the batch of three
    alone = build_model("attention", spec(K=1, dropout=[0.5], seeds=[100])).train()
    assert torch.equal(alone.keep_mask(64, 500)[0], keep[0])
    assert not math.isclose(float((keep[0] == keep[1]).float().mean()), 1.0)


def test_data_layers_in_bfloat16_stay_within_its_rounding_of_float32() -> None:
    """data_dtype = bf16 (Protocol.train_bf16): the first layers multiply bf16 copies of the masked inputs and weights,
    their weight gradients land in the float32 .grad buffers; outputs stay within 1e-3 (relative) of the float32
    model's (same weights, same masks) and the weight gradients point the same way (cosine > 0.98; a few %
    apart: ReLUs near zero flip under bf16 rounding in this tiny model)."""
    x = inputs(3, 32)
    runs = {}
    for dt in (None, torch.bfloat16):
        m = build_model("attention", spec(K=3, dropout=0.3)).train()
        m.data_dtype = dt
        out = m(x)
        (out["emotion"].square().mean() + out["valence"].square().mean()).backward()
        runs[dt] = (m, out["emotion"].detach())
    (m32, e32), (m16, e16) = runs[None], runs[torch.bfloat16]
    assert not torch.equal(e16, e32) and float((e16 - e32).norm() / e32.norm()) < 1e-3
    assert any(b.dtype == torch.bfloat16 for b in m16._buffers_cache.values())
    assert not any(b.dtype == torch.bfloat16 for b in m32._buffers_cache.values())
    for name in m16.data_weights:
        g16, g32 = getattr(m16, name).grad, getattr(m32, name).grad
        assert g16.dtype == torch.float32
        assert not torch.equal(g16, g32) and float(F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)) > 0.98


@pytest.mark.parametrize("p", [0.5, 77 / 256, 0.3])
def test_bfloat16_data_layers_mask_after_the_cast_exactly_as_before_it(p: float) -> None:
    """Dropout draws of at most 8 bits (p = 1/2: 1 bit; multiples of 1/256: 8) mask the bf16 copy of the input in
    bf16: the result equals the float32-masked input cast to bf16 bit for bit (a 0/1 mask commutes with the cast).
    16-bit draws (p = 0.3) are not exact in bf16: those inputs are masked in float32 first, as before."""
    x = inputs(3, 32)
    seen = {}
    for dt in (None, torch.bfloat16):
        m = build_model("attention", spec(K=3, dropout=p)).train()
        m.data_dtype = dt
        m(x)
        seen[dt] = {tag: buf for (tag, _), buf in m._buffers_cache.items()}
    bits = build_model("attention", spec(K=3, dropout=p))._bits[0]
    for i in range(len(DIMS)):
        masked32, low = seen[None][f"enc{i}_1_x0"], seen[torch.bfloat16][f"enc{i}_1_xlow0"]
        assert low.dtype == torch.bfloat16 and torch.equal(low, masked32.to(torch.bfloat16))
        assert (f"enc{i}_1_x0" in seen[torch.bfloat16]) == (bits > 8)   # the float32 product only where needed
    assert ("mask_low" in seen[torch.bfloat16]) == (bits <= 8)
    if bits > 8:
        with pytest.raises(ValueError, match="at most 8 bits"):
            build_model("attention", spec(K=3, dropout=p)).train().keep_mask(4, 4, dtype=torch.bfloat16)


def test_every_weight_gets_only_this_steps_gradient() -> None:
    """Each step's update uses that step's gradient alone: BatchedAdam.zero_grad (which keeps the data layers'
    persistent .grad buffers) trains exactly like zeroing every .grad by hand before each step. A layer over
    activations registered as a data layer (as the attention MLP's first layer once was) would sum its
    gradients over all steps and fail this."""
    from trainer.optim import BatchedAdam

    batches = [inputs(3, 8) for _ in range(3)]
    for i, b in enumerate(batches):
        b["a"] = b["a"] + i
    runs = []
    for by_hand in (False, True):
        m = build_model("attention", spec(K=3, dropout=0.5)).train()
        opt = BatchedAdam(list(m.parameters()), [1e-2] * 3, [1e-5] * 3)
        for x in batches:
            out = m(x)
            opt.zero_grad()
            if by_hand:
                for p in m.parameters():
                    if p.grad is not None:
                        p.grad.zero_()
            (out["emotion"].square().mean() + out["valence"].square().mean()).backward()
            opt.step()
        runs.append(dict(m.named_parameters()))
    for name, p in runs[0].items():
        assert torch.equal(p, runs[1][name]), name


def test_data_layers_refuse_autograd_and_take_shared_rows_in_training() -> None:
    """A layer built with data=True keeps a persistent .grad that only apply_data_linear writes: running it through
    apply_linear while training is refused. Rows shared by every model ([n, D]) train like the same rows given
    to each model ([K, n, D])."""
    m = build_model("attention", spec(K=3, dropout=0.5)).train()
    with pytest.raises(RuntimeError, match="enc0_1.*apply_data_linear"):
        m.apply_linear("enc0_1", [torch.randn(3, 4, DIMS["a"])])
    shared = inputs(3, 8, shared=True)
    outs = []
    for x in (shared, {k: v.expand(3, *v.shape) for k, v in shared.items()}):
        mk = build_model("attention", spec(K=3, dropout=0.5)).train()
        out = mk(x)
        (out["emotion"].square().mean() + out["valence"].square().mean()).backward()
        outs.append((out["emotion"].detach(), mk.enc1_1_w0.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
