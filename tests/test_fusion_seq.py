"""Sequence-level fusion models (issue #7): forward/backward, padding invariance, learning, K together == K alone,
aligned input, option and branch-count errors; MCTN's source-only prediction and its auxiliary loss.

Tests common to every sequence model are parametrised over SEQ_MODELS (extend the list for further models)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from trainer.data import load_features
from trainer.fit import run_experiment
from trainer.models import build_model, model_class
from trainer.models.base import ModelSpec
from trainer.models.graph_mfn import DynamicFusionGraph
from trainer.models.layers import anchor_order, length_key
from trainer.optim import BatchedAdam
from trainer.protocol import Protocol, ProtocolError
from trainer.synthetic import make_store

SEQ_MODELS = ["mfn", "graph_mfn", "mctn", "mfm"]
DIMS = {"a": 6, "t": 5, "v": 4}
ENCS = dict(audio="audio-a", text="text-t", video="video-v")
# MFM's discriminative path is six layers deep behind its MFN (as MERTools'): it learns, only slower -- a
# lighter prior term and 60 steps for its overfit, 60 epochs in the trainer (it sits on plateaus: at 30 epochs its
# test WAF ranged 0.22-0.60 over synthetic stores, at 60 epochs 0.55-0.95 over seeds 0-3)
OVERFIT_OPTIONS = {"mfm": {"lda_mmd": 1.0}}
OVERFIT_STEPS = {"mfm": 60}
TRAINER_EPOCHS = {"mfm": 60}


MODALITIES = ("audio", "text", "visual")


def spec(K: int = 2, dropout: float = 0.1, dims: dict[str, int] | None = None, seed: int = 5,
         n_valence: int = 1, modalities: bool = True) -> ModelSpec:
    """Branches a, t, v (audio, text, visual) or b0, b1, ... (audio, text, visual, audio, ...)."""
    dims = dims or DIMS
    named = {k: {"a": "audio", "t": "text", "v": "visual"}.get(k, MODALITIES[i % 3]) for i, k in enumerate(dims)}
    return ModelSpec(branches={k: (k,) for k in dims}, dims=dims, n_classes=3, n_valence=n_valence, hidden=16,
                     dropout=[dropout] * K,
                     init_generators=[torch.Generator().manual_seed(seed + k) for k in range(K)],
                     drop_generators=[torch.Generator().manual_seed(10 * seed + k) for k in range(K)],
                     modalities=named if modalities else None)


def inputs(K: int = 2, n: int = 5, T: int = 4, pad: int = 0, dims: dict[str, int] | None = None,
           aligned: bool = True, signal: torch.Tensor | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random padded sequences [K, n, T + pad, D] (zero past each row's length); one length per row for every
    branch when aligned. signal: class labels [n] planted in every branch's features."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or DIMS
    ln = torch.randint(2, T + 1, (n,), generator=g)
    out = {}
    for name, d in dims.items():
        x = torch.randn(n, T, d, generator=g)
        if signal is not None:
            x = 0.5 * x + F.one_hot(signal, 3).float().repeat(1, d // 3 + 1)[:, None, :d]
        x = torch.cat([x, torch.zeros(n, pad, d)], dim=1)
        lk = ln if aligned else torch.randint(1, T + 1, (n,), generator=g)
        x[torch.arange(T + pad).unsqueeze(0) >= lk.unsqueeze(1)] = 0.0
        out[name] = x.unsqueeze(0).expand(K, -1, -1, -1).contiguous()
        out[length_key(name)] = lk.unsqueeze(0).expand(K, -1).contiguous()
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):  # noqa: ANN001, ANN201
    return make_store(tmp_path_factory.mktemp("fseq") / "s.zarr", n_train=100, n_test=30, seq_steps=4, signal=2.5)


# ---------------------------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name", SEQ_MODELS)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    m = build_model(name, spec(2)).train()
    out = m(inputs(2))
    assert out["emotion"].shape == (2, 5, 3) and out["valence"].shape == (2, 5)
    loss = out["emotion"].square().sum() + out["valence"].square().sum()
    if "aux_loss" in out:
        assert out["aux_loss"].shape == (2,) and bool((out["aux_loss"] > 0).all())
        loss = loss + out["aux_loss"].sum()
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert bool((p.grad[0] != 0).any()), f"{pname} gets no gradient"


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_shared_inputs_equal_per_model_inputs(name: str) -> None:
    m = build_model(name, spec(2)).eval()
    x = inputs(2)
    shared = m({k: v[0] for k, v in x.items()})
    assert torch.allclose(shared["emotion"], m(x)["emotion"], atol=1e-6)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_padding_steps_change_nothing(name: str) -> None:
    m = build_model(name, spec(2)).eval()
    a, b = m(inputs(2)), m(inputs(2, pad=3))
    assert torch.allclose(a["emotion"], b["emotion"], atol=1e-5)
    assert torch.allclose(a["valence"], b["valence"], atol=1e-5)
    # training mode too (dropout 0; two models from the same generators draw the same teacher-forcing coins,
    # and the draws at the real steps come first)
    a = build_model(name, spec(2, dropout=0.0)).train()(inputs(2))
    b = build_model(name, spec(2, dropout=0.0)).train()(inputs(2, pad=3))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_each_model_overfits_a_tiny_set(name: str) -> None:
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0))
    x = inputs(2, n=32, signal=y)
    m = build_model(name, spec(2, dropout=0.1, n_valence=0), **OVERFIT_OPTIONS.get(name, {})).train()
    opt = BatchedAdam(list(m.parameters()), [1e-2, 1e-2], [0.0, 0.0])
    ce_curve, aux_curve = [], []
    for _ in range(OVERFIT_STEPS.get(name, 30)):
        out = m(x)
        ce = F.cross_entropy(out["emotion"].reshape(-1, 3), y.repeat(2))
        loss = ce + (out["aux_loss"].sum() if "aux_loss" in out else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ce_curve.append(float(ce.detach()))
        if "aux_loss" in out:
            aux_curve.append(float(out["aux_loss"].detach().sum()))
    assert ce_curve[-1] < 0.25 * ce_curve[0], ce_curve
    if aux_curve:
        assert aux_curve[-1] < 0.8 * aux_curve[0], aux_curve      # the translations learn too


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_k_models_together_equal_each_alone(name: str) -> None:
    x = inputs(3)
    together = build_model(name, spec(3)).train()(x)
    for k in range(3):
        s = spec(3)
        alone_spec = ModelSpec(branches=s.branches, dims=s.dims, n_classes=3, n_valence=1, hidden=16, dropout=[0.1],
                               init_generators=[s.init_generators[k]], drop_generators=[s.drop_generators[k]],
                               modalities=s.modalities)
        alone = build_model(name, alone_spec).train()({n: v[k:k + 1] for n, v in x.items()})
        for key in together:   # same init, dropout masks and teacher-forcing draws
            assert torch.allclose(alone[key][0], together[key][k], atol=1e-6), (key, k)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_unaligned_input_is_refused(name: str, store) -> None:  # noqa: ANN001
    m = build_model(name, spec(2)).eval()
    with pytest.raises(ProtocolError, match="needs aligned sequences"):
        m(inputs(2, aligned=False))
    unaligned = load_features(store, "synth", **ENCS, level="seq")
    with pytest.raises(ProtocolError, match="aligned"):
        run_experiment(unaligned, name, Protocol(folds="cv5", epochs=1))


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_runs_in_the_trainer_and_learns(name: str, store) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq", aligned=True)
    seen: list[float] = []
    epochs = TRAINER_EPOCHS.get(name, 10)
    r = run_experiment(f, name, Protocol(folds="cv2", epochs=epochs, lr=3e-3, hidden=32, dropout=0.1, mode="strict",
                                          batch_size=16),
                       {"mem_dim": 32} if name != "mctn" else {"source": "text-t"},
                       progress=lambda ev, info: seen.append(info["best"]) if ev == "epoch" else None)
    assert len(seen) == epochs
    test = next(d for d in r.summary() if d["split"] == "test1")
    assert test["waf_mean"] > 0.45, test          # six imbalanced classes: chance WAF is about 0.15


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_space_names_only_hyper_parameters_and_own_options(name: str) -> None:
    cls = model_class(name)
    own = set(inspect.signature(cls.make_net).parameters) - {"self", "spec", "dims", "dropout"}
    assert {"hidden", "lr", "dropout"} <= set(cls.space)
    assert set(cls.space) - {"hidden", "lr", "dropout"} <= own
    assert cls.aligned is True and cls.level == "seq"
    for value in cls.space.get("mem_dim", ()):   # every point of the space builds
        build_model(name, spec(1), mem_dim=value)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_one_branch_is_refused(name: str) -> None:
    with pytest.raises(ProtocolError, match=f"{name}: .*at least 2 branches.*got 1"):
        build_model(name, spec(1, dims={"a": 6}))


@pytest.mark.parametrize("name", SEQ_MODELS)
@pytest.mark.parametrize("n_branches", [2, 4])
def test_any_branch_count_from_two(name: str, n_branches: int) -> None:
    dims = {f"b{i}": 3 + i for i in range(n_branches)}
    out = build_model(name, spec(2, dims=dims)).eval()(inputs(2, dims=dims))
    assert out["emotion"].shape == (2, 5, 3) and torch.isfinite(out["emotion"]).all()


@pytest.mark.parametrize("name,options,match", [
    ("mfn", {"mem_dim": 0}, "mfn: mem_dim must be a positive integer, got 0"),
    ("mfn", {"mem_dim": "big"}, "mfn: mem_dim must be a positive integer"),
    ("graph_mfn", {"mem_dim": 2.5}, "graph_mfn: mem_dim must be a positive integer, got 2.5"),
    ("mctn", {"loss_weight": -0.1}, r"mctn: loss_weight must be a number >= 0"),
    ("mctn", {"teacher_forcing_ratio": 1.5}, r"mctn: teacher_forcing_ratio must be a number in \[0, 1\]"),
    ("mctn", {"source": "x"}, "mctn: source 'x' is not a branch; the branches are a, t, v"),
])
def test_bad_options_are_named(name: str, options: dict, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        build_model(name, spec(1), **options)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_unknown_option_is_named_by_the_trainer(name: str, store) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq", aligned=True)
    with pytest.raises(ProtocolError, match="does not take option"):
        run_experiment(f, name, Protocol(folds="cv2", epochs=1), {"window_dim": 3})


# ---------------------------------------------------------------------------------------------- Graph-MFN
@pytest.mark.parametrize("m,vertices,edges", [(2, 3, 5), (3, 7, 19), (4, 15, 65)])
def test_dynamic_fusion_graph_has_a_vertex_per_subset(m: int, vertices: int, edges: int) -> None:
    dfg = DynamicFusionGraph(m, 8)
    assert len(dfg.inputs) + m == vertices and len(dfg.tau_inputs) == vertices and dfg.n_edges == edges
    tau = dfg([torch.randn(4, 8) for _ in range(m)], [torch.randn(4, 8) for _ in range(m)])
    assert tau.shape == (4, 8)


def test_graph_mfn_refuses_five_branches() -> None:
    dims = {f"b{i}": 3 for i in range(5)}
    with pytest.raises(ProtocolError, match=r"graph_mfn: .*2 to 4 branches.*got 5"):
        build_model("graph_mfn", spec(1, dims=dims))
    build_model("mfn", spec(1, dims=dims))           # MFN's memory takes any number


# ---------------------------------------------------------------------------------------------- MCTN
def test_mctn_predicts_from_the_source_alone() -> None:
    m = build_model("mctn", spec(2), source="t").eval()
    x = inputs(2)
    base = m(x)
    assert "aux_loss" not in base                      # evaluation runs no decoder
    other = dict(x)
    for b in ("a", "v"):
        other[b] = torch.randn_like(x[b])
    assert torch.allclose(m(other)["emotion"], base["emotion"])
    changed = dict(x, t=torch.randn_like(x["t"]))
    assert not torch.allclose(m(changed)["emotion"], base["emotion"])


def test_mctn_source_is_the_first_text_branch() -> None:
    assert anchor_order(spec(1), None, "mctn", "source") == [1, 0, 2]       # the trainer's modalities: t is text
    s = spec(1, modalities=False)
    assert anchor_order(s, None, "mctn", "source") == [0, 1, 2]            # modality unknown: the first branch
    assert anchor_order(s, "t", "mctn", "source") == [1, 0, 2]
    named = ModelSpec(**{**s.__dict__, "branches": {"egemaps": ("egemaps",), "minilm-l6": ("minilm-l6",),
                                                    "videomae-base": ("videomae-base",)},
                         "dims": {"egemaps": 6, "minilm-l6": 5, "videomae-base": 4}})
    assert anchor_order(named, None, "mctn", "source") == [1, 0, 2]        # the catalog says minilm-l6 is text


ROW_WEIGHT = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0, 0.0]])     # 4 real rows, 2 padding rows


def aux_of(name: str) -> tuple[dict[str, torch.Tensor], Callable[..., torch.Tensor]]:
    """Six-row inputs and aux(inputs, **options): the model's training-mode aux_loss under ROW_WEIGHT; asserts
    first that the padding rows (weight 0) change nothing."""
    x = inputs(1, n=6)

    def aux(inp: dict[str, torch.Tensor], **options: float) -> torch.Tensor:
        m = build_model(name, spec(1, dropout=0.0), **options).train()
        m.row_weight = ROW_WEIGHT
        return m(inp)["aux_loss"]

    moved = {k: v.clone() for k, v in x.items()}
    for b in DIMS:
        moved[b][:, 4:] = torch.randn_like(moved[b][:, 4:])
    assert torch.allclose(aux(x), aux(moved))
    return x, aux


def test_mctn_aux_loss_ignores_padding_rows_and_follows_its_options() -> None:
    x, aux = aux_of("mctn")
    assert torch.allclose(aux(x, loss_weight=1.0), 2 * aux(x, loss_weight=0.5))
    assert float(aux(x, loss_weight=0.0)) == 0.0
    assert not torch.allclose(aux(x, teacher_forcing_ratio=0.0), aux(x, teacher_forcing_ratio=1.0))


# ---------------------------------------------------------------------------------------------- MFM
def test_mfm_aux_loss_ignores_padding_rows_and_weighs_each_modality() -> None:
    x, aux = aux_of("mfm")
    none = dict(lda_xl=0.0, lda_xa=0.0, lda_xv=0.0)
    assert float(aux(x, lda_mmd=0.0, **none)) == 0.0
    mmd = aux(x, **none)                                          # the prior term alone
    assert torch.allclose(aux(x, lda_mmd=20.0, **none), 2 * mmd, rtol=1e-5) and float(mmd.detach()) > 0
    text = aux(x, **{**none, "lda_xl": 1.0}) - mmd                 # branch t's reconstruction alone
    assert float(text.detach()) > 0
    assert torch.allclose(aux(x, lda_x=1.0) - mmd, text + aux(x, **{**none, "lda_xa": 1.0}) - mmd
                          + aux(x, **{**none, "lda_xv": 1.0}) - mmd, rtol=1e-4)
    assert "aux_loss" not in build_model("mfm", spec(1)).eval()(x)


def test_mfm_needs_a_weight_for_a_branch_of_unknown_modality() -> None:
    with pytest.raises(ProtocolError, match="mfm: the modality of branch 'a' is unknown.*pass lda_x"):
        build_model("mfm", spec(1, modalities=False))
    assert build_model("mfm", spec(1, modalities=False), lda_x=0.5).eval()(inputs(1))["emotion"].shape == (1, 5, 3)
    with pytest.raises(ProtocolError, match=r"mfm: lda_xv must be a number >= 0, got -1"):
        build_model("mfm", spec(1), lda_xv=-1)
