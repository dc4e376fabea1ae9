"""Utterance-level fusion models beyond attention (issue #7): shapes, masks, learning, batching; the auxiliary
losses of MISA and MMIM (padding rows, K together == alone, their weights) and their option errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featstore.errors import FeatstoreError
from trainer.models import available_models, build_model
from trainer.models.base import ModelSpec
from trainer.optim import BatchedAdam

DIMS = {"a": 12, "t": 20, "v": 8}
ZOO = ["tfn", "lmf", "lf_dnn", "misa", "mmim"]
AUX = ["misa", "mmim"]                  # models with training terms of their own


def spec(K: int = 2, hidden: int = 16, dropout: float = 0.0, branches: dict | None = None, n_valence: int = 1,
         seed: int = 10) -> ModelSpec:
    return ModelSpec(branches=branches or {k: (k,) for k in DIMS}, dims=DIMS, n_classes=4, n_valence=n_valence,
                     hidden=hidden, dropout=[dropout] * K,
                     init_generators=[torch.Generator().manual_seed(seed + k) for k in range(K)],
                     drop_generators=[torch.Generator().manual_seed(seed + 10 + k) for k in range(K)],
                     modalities={"a": "audio", "t": "text", "v": "visual"})


def data(n: int = 48, K: int = 2) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = {k: torch.randn(n, d, generator=g) + 2.0 * F.one_hot(y, 4).float().repeat(1, d // 4 + 1)[:, :d]
         for k, d in DIMS.items()}
    return {k: v.unsqueeze(0).expand(K, n, -1).contiguous() for k, v in x.items()}, y


@pytest.mark.parametrize("name", ZOO)
def test_shapes_shared_inputs_and_missing_branches(name: str) -> None:
    assert name in available_models()
    m = build_model(name, spec()).eval()
    x, _ = data(5)
    out = m(x)
    assert out["emotion"].shape == (2, 5, 4) and out["valence"].shape == (2, 5)
    shared = m({k: v[0] for k, v in x.items()})
    assert torch.allclose(shared["emotion"], out["emotion"], atol=1e-6)
    miss = {"a": torch.tensor([True, False, True, True, True])}
    out_m = m(x, miss)
    x0 = {k: v.clone() for k, v in x.items()}
    assert not torch.allclose(out_m["emotion"][:, 1], out["emotion"][:, 1])      # row 1 lost its audio
    assert torch.allclose(out_m["emotion"][:, 0], out["emotion"][:, 0], atol=1e-6)
    assert all(torch.equal(x0[k], x[k]) for k in x)                              # inputs untouched


@pytest.mark.parametrize("name", ZOO)
def test_each_model_overfits_a_tiny_set(name: str) -> None:
    m = build_model(name, spec(K=2, dropout=0.1)).train()
    x, y = data(48)
    params = list(m.parameters())
    opt = BatchedAdam(params, [3e-3, 3e-3], [0.0, 0.0])
    losses = []
    for _ in range(60):
        out = m(x)
        loss = F.cross_entropy(out["emotion"].reshape(-1, 4), y.repeat(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize("name", ZOO)
def test_batched_models_equal_separate_models(name: str) -> None:
    """Model k of a K-batch equals the same model built alone from the same generators."""
    both = build_model(name, spec(K=2)).eval()
    alone = build_model(name, ModelSpec(**{**spec(K=2).__dict__, "dropout": [0.0],
                                            "init_generators": [torch.Generator().manual_seed(11)],
                                            "drop_generators": [torch.Generator().manual_seed(21)]})).eval()
    x, _ = data(6)
    assert torch.allclose(both(x)["emotion"][1], alone({k: v[:1] for k, v in x.items()})["emotion"][0], atol=1e-5)


def test_tfn_refuses_too_many_branches_and_lmf_takes_them() -> None:
    many = {f"b{i}": (k,) for i, k in enumerate(["a", "t", "v", "a"])}
    with pytest.raises(FeatstoreError, match="--concat"):
        build_model("tfn", spec(branches=many))
    assert build_model("lmf", spec(branches=many)).eval()(data(3)[0])["emotion"].shape == (2, 3, 4)
    with pytest.raises(FeatstoreError, match="rank must be"):
        build_model("lmf", spec(), rank=0)


@pytest.mark.parametrize("name,options", [("tfn", {"subnet": 8}), ("lmf", {"rank": 2}), ("misa", {"sim_weight": 0.2}),
                                          ("mmim", {"cpc_layers": 2})])
def test_the_trainer_runs_them_with_their_options(name: str, options: dict, tmp_path) -> None:  # noqa: ANN001
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.protocol import Protocol
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=60, n_test=20, dims={"a1": ("audio", 8), "v1": ("visual", 6)})
    res = run_experiment(load_features(store, "synth", audio=["a1"], video=["v1"]), name, Protocol(epochs=2, folds="cv3"),
                         [options, {}])
    assert res.configs[0][next(iter(options))] == next(iter(options.values()))
    assert {r["split"] for r in res.rows} == {"cv", "test1"} and len(res.selected_epochs) == 2 * 3


def test_grid_searches_a_fusion_over_its_own_space(tmp_path) -> None:  # noqa: ANN001
    from trainer.grid import run_grid
    from trainer.protocol import Protocol
    from trainer.results import ResultsDB
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=60, n_test=20, dims={"a1": ("audio", 8), "v1": ("visual", 6)})
    db = ResultsDB(tmp_path / "r.sqlite")
    rep = run_grid(store, db, "synth", Protocol(epochs=1, folds="cv3"), topn=[1], combos=[("audio", "video")],
                   fusion="lmf", n_trials=3, rank_trials=1)
    hypers = [r["hyper"] for r in db.rows("fusion = 'lmf' AND fold = -1 AND split = 'cv'")]
    assert rep.trained == 3 and all(h["rank"] in (2, 4, 8) for h in hypers)


# ---------------------------------------------------------------------------------------------- auxiliary losses
def _aux(name: str, x: dict[str, torch.Tensor], w: torch.Tensor, K: int = 2, seed: int = 10,
         **options: object) -> torch.Tensor:
    m = build_model(name, spec(K=K, seed=seed), **options).train()
    m.row_weight = w
    return m(x)["aux_loss"]


@pytest.mark.parametrize("name", AUX)
def test_aux_loss_ignores_padding_rows_and_idle_models(name: str) -> None:
    x, _ = data(8)
    w = torch.tensor([[0.2] * 5 + [0.0] * 3, [0.0] * 8])          # model 1 idle, model 0 has 5 real rows
    base = _aux(name, x, w)
    assert base.shape == (2,) and float(base[0].detach()) != 0.0 and float(base[1].detach()) == 0.0
    moved = {k: v.clone() for k, v in x.items()}
    for v in moved.values():
        v[:, 5:] = torch.randn_like(v[:, 5:]) * 5                  # the padding rows change
    assert torch.allclose(_aux(name, moved, w), base, atol=1e-6)
    fewer = {k: v[:, :5] for k, v in x.items()}                      # ... or are not there at all
    assert torch.allclose(_aux(name, fewer, w[:, :5])[0], base[0], atol=1e-5)


@pytest.mark.parametrize("name", AUX)
def test_aux_loss_of_k_models_together_equals_each_alone(name: str) -> None:
    x, _ = data(6, K=3)
    w = torch.full((3, 6), 1 / 6)
    together = _aux(name, x, w, K=3)
    for k in range(3):
        alone = _aux(name, {n: v[k:k + 1] for n, v in x.items()}, w[:1], K=1, seed=10 + k)
        # the alone model's generators: init seed 10 + k and drop seed 20 + k, as model k of the three
        assert torch.allclose(alone[0], together[k], atol=1e-5), (k, alone, together)


@pytest.mark.parametrize("name,weights", [("misa", ("sim_weight", "diff_weight", "recon_weight")),
                                          ("mmim", ("alpha", "beta"))])
def test_aux_loss_is_the_weighted_sum_of_its_terms(name: str, weights: tuple[str, ...]) -> None:
    x, _ = data(8)
    w = torch.full((2, 8), 1 / 8)
    off = {k: 0.0 for k in weights}
    assert torch.equal(_aux(name, x, w, **off), torch.zeros(2))
    terms = [_aux(name, x, w, **{**off, k: 1.0}) for k in weights]
    assert all(bool((t != 0).all()) for t in terms)
    mixed = {k: 0.1 * (i + 1) for i, k in enumerate(weights)}
    expect = sum(0.1 * (i + 1) * t for i, t in enumerate(terms))
    assert torch.allclose(_aux(name, x, w, **mixed), expect, rtol=1e-4, atol=1e-6)
    assert "aux_loss" not in build_model(name, spec()).eval()(x)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0)])
def test_mmim_bounds_tighten_with_training(alpha: float, beta: float) -> None:
    """alpha: the CPC loss falls and the trained fusion predicts its own rows, not shuffled ones; beta: -LLD falls."""
    from trainer.models.batch_stats import row_weights

    x, _ = data(32)
    m = build_model("mmim", spec(), alpha=alpha, beta=beta).train()
    opt = BatchedAdam(list(m.parameters()), [3e-3, 3e-3], [0.0, 0.0])
    curve = []
    for _ in range(40):
        aux = m(x)["aux_loss"]
        curve.append(aux.detach())
        opt.zero_grad()
        aux.sum().backward()
        opt.step()
    assert bool((curve[-1] < curve[0] - 0.05).all()), (curve[0], curve[-1])
    if alpha:
        m.eval()
        hs = m.run_branches(m.names, x, None)
        z = torch.tanh(m.apply_linear("fusion_2", [torch.tanh(m.apply_linear("fusion_1", [torch.cat(hs, -1)]))]))
        w = row_weights(m, 32)
        shuffled = z[:, torch.randperm(32, generator=torch.Generator().manual_seed(0))]
        assert bool((m.nce(0, hs[0], z, w) < m.nce(0, hs[0], shuffled, w)).all())


def test_mmim_anchor_is_the_text_branch_or_the_option() -> None:
    assert build_model("mmim", spec()).order == [1, 0, 2]                 # t is the text branch
    assert build_model("mmim", spec(), anchor="v").order == [2, 0, 1]


@pytest.mark.parametrize("name,options,match", [
    ("misa", {"sim_weight": -1}, "misa: sim_weight must be a number >= 0"),
    ("mmim", {"alpha": -0.1}, "mmim: alpha must be a number >= 0"),
    ("mmim", {"cpc_layers": 1.5}, "mmim: cpc_layers must be a whole number >= 1"),
    ("mmim", {"cpc_layers": 0}, "mmim: cpc_layers must be a number >= 1"),
    ("mmim", {"anchor": "x"}, "mmim: anchor 'x' is not a branch; the branches are a, t, v"),
])
def test_bad_aux_options_are_named(name: str, options: dict, match: str) -> None:
    with pytest.raises(FeatstoreError, match=match):
        build_model(name, spec(), **options)


@pytest.mark.parametrize("name", AUX)
def test_one_branch_is_refused(name: str) -> None:
    with pytest.raises(FeatstoreError, match=f"{name} needs at least 2 branches"):
        build_model(name, spec(branches={"a": ("a",)}))


# ---------------------------------------------------------------------------------------------- every fusion
@pytest.mark.parametrize("name", [m for m in available_models() if m != "linear"])   # linear: no torch module
def test_missing_or_mismatched_modalities_are_named(name: str) -> None:
    from trainer.models import model_level
    from trainer.protocol import ProtocolError

    seq = model_level(name) == "seq"
    m = build_model(name, spec(K=1, branches={"a": ("a",), "t": ("t",)})).eval()
    shape = (1, 5, 3) if seq else (1, 5)
    x = {k: torch.randn(*shape, DIMS[k]) for k in ("a", "t")}
    if seq:
        x.update({f"{k}/len": torch.full((1, 5), 3) for k in ("a", "t")})
    with pytest.raises(ProtocolError, match=f"fusion '{name}': the input has no feature 't' .*the input has a$"):
        m({"a": x["a"], **({"a/len": x["a/len"]} if seq else {})})
    bad = dict(x, t=torch.randn(1, 6, *shape[2:], DIMS["t"]))
    with pytest.raises(ProtocolError, match=r"different numbers of samples \(a 5, t 6 rows\)"):
        m(bad)
