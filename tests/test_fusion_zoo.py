"""Fusion models beyond attention (issue #7, utterance level so far): shapes, masks, learning, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featstore.errors import FeatstoreError
from trainer.models import available_models, build_model
from trainer.models.base import ModelSpec
from trainer.optim import BatchedAdam

DIMS = {"a": 12, "t": 20, "v": 8}
ZOO = ["tfn", "lmf", "lf_dnn"]


def spec(K: int = 2, hidden: int = 16, dropout: float = 0.0, branches: dict | None = None, n_valence: int = 1) -> ModelSpec:
    return ModelSpec(branches=branches or {k: (k,) for k in DIMS}, dims=DIMS, n_classes=4, n_valence=n_valence,
                     hidden=hidden, dropout=[dropout] * K,
                     init_generators=[torch.Generator().manual_seed(10 + k) for k in range(K)],
                     drop_generators=[torch.Generator().manual_seed(20 + k) for k in range(K)])


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


@pytest.mark.parametrize("name,options", [("tfn", {"subnet": 8}), ("lmf", {"rank": 2})])
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
