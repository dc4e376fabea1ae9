"""Sequence-level input to the trainer: frame-level features loaded (unaligned, aligned, capped), fed to
sequence models through the one interface, and refused clearly when a key has no frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featstore.errors import BadValuesError, MissingFramesError
from featstore.sequence import pool_to_cap, resample
from featstore.store import FeatureStore, KeyName
from trainer.data import load_features
from trainer.fit import run_experiment
from trainer.models import build_model, input_options
from trainer.models.base import ModelSpec
from trainer.models.layers import length_key
from trainer.protocol import Protocol, ProtocolError
from trainer.synthetic import make_store

ENCS = dict(audio="audio-a", text="text-t", video="video-v")


@pytest.fixture(scope="module")
def store(tmp_path_factory):  # noqa: ANN001, ANN201
    path = tmp_path_factory.mktemp("seq") / "s.zarr"
    make_store(path, n_train=120, n_test=40, seq_steps=6, signal=2.5)
    return FeatureStore(path, read_only=True)


def test_unaligned_load_keeps_each_modality_its_lengths_and_caps_them(store) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq")
    a, t = f.features["audio-a"], f.features["text-t"]
    assert f.level == "seq" and not f.aligned
    assert a.seq.shape[0] == f.n and a.seq.shape[2] == 24 and a.seq.shape[1] <= 6
    assert not torch.equal(a.lengths, t.lengths)                      # unaligned: own lengths
    fa = store.open_key(KeyName("synth", "audio-a"))
    vals, lens = fa.read_seq()
    i = int(np.argmax(lens))
    assert torch.equal(a.seq[i, :lens[i]], torch.from_numpy(vals[i, :lens[i]].astype(np.float32)))
    assert not a.seq[i, lens[i]:].any()                               # padding after the real steps is zero
    capped = load_features(store, "synth", **ENCS, level="seq", steps=2)
    c = capped.features["audio-a"]
    assert int(c.lengths.max()) <= 2
    want = pool_to_cap(vals[i, :lens[i]].astype(np.float32), 2)
    assert torch.allclose(c.seq[i, :len(want)], torch.from_numpy(want))
    assert torch.equal(f.features["audio-a"].x, load_features(store, "synth", **ENCS).features["audio-a"].x)


def test_aligned_load_puts_every_modality_on_the_text_axis(store) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq", aligned=True)
    un = load_features(store, "synth", **ENCS, level="seq")
    t_len = un.features["text-t"].lengths
    for name, feat in f.features.items():
        assert torch.equal(feat.lengths, t_len), name
    i = int(torch.argmax((un.features["audio-a"].lengths != t_len).int()))
    a = un.features["audio-a"]
    want = resample(a.seq[i, :a.lengths[i]].numpy(), int(t_len[i]))
    assert np.allclose(f.features["audio-a"].seq[i, :t_len[i]].numpy(), want)
    capped = load_features(store, "synth", **ENCS, level="seq", aligned=True, steps=3)
    assert torch.equal(capped.features["video-v"].lengths, t_len.clamp(max=3))


def test_a_key_without_frames_names_the_build_to_run(tmp_path) -> None:  # noqa: ANN001
    fs = make_store(tmp_path / "u.zarr", n_train=20, n_test=10)
    with pytest.raises(MissingFramesError, match="featstore build --dataset synth --encoder audio-a --level frame"):
        load_features(fs, "synth", **ENCS, level="seq")
    f = load_features(fs, "synth", **ENCS)
    with pytest.raises(ProtocolError, match="sequence model.*--level frame"):
        run_experiment(f, "mult", Protocol(folds="cv5", epochs=1))


def test_a_done_row_with_an_empty_sequence_is_named(tmp_path) -> None:  # noqa: ANN001
    fs = make_store(tmp_path / "z.zarr", n_train=20, n_test=10, seq_steps=4)
    fa = fs.open_key(KeyName("synth", "video-v"))
    fa.seq_len[3] = 0        # what a broken writer or import could leave
    with pytest.raises(BadValuesError, match="s00003.*length 0"):
        load_features(fs, "synth", **ENCS, level="seq")


def test_input_options_follow_the_model() -> None:
    p = Protocol()
    assert input_options("attention", p) == {}
    assert input_options("mult", p) == {"level": "seq", "steps": None, "aligned": False}
    assert input_options("ef_lstm", p.replace(steps=4))["aligned"] is True
    with pytest.raises(Exception, match="needs aligned"):
        input_options("ef_lstm", p.replace(aligned=False))


def test_aligned_models_refuse_unaligned_rows(store) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq")
    with pytest.raises(ProtocolError, match="aligned"):
        run_experiment(f, "ef_lstm", Protocol(folds="cv5", epochs=1))


@pytest.mark.parametrize("fusion,aligned,options", [("mult", False, {"layers": 1}), ("ef_lstm", True, {})])
def test_sequence_models_learn_the_planted_signal(store, fusion, aligned, options) -> None:  # noqa: ANN001
    f = load_features(store, "synth", **ENCS, level="seq", aligned=aligned)
    r = run_experiment(f, fusion, Protocol(folds="cv5", epochs=12, lr=2e-3, hidden=32, dropout=0.1, mode="strict"),
                       options)
    test = next(d for d in r.summary() if d["split"] == "test1")
    assert test["waf_mean"] > 0.5, test          # six imbalanced classes: chance WAF is about 0.15


def seq_spec(K: int, dropout: float = 0.1) -> ModelSpec:
    dims = {"a": 6, "t": 5, "v": 4}
    return ModelSpec(branches={k: (k,) for k in dims}, dims=dims, n_classes=3, n_valence=1, hidden=16,
                     dropout=[dropout] * K, init_generators=[torch.Generator().manual_seed(5 + k) for k in range(K)],
                     drop_generators=[torch.Generator().manual_seed(50 + k) for k in range(K)])


def seq_inputs(K: int, n: int = 5, T: int = 4, pad: int = 0, aligned: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for i, (name, d) in enumerate({"a": 6, "t": 5, "v": 4}.items()):
        x = torch.cat([torch.randn(n, T, d, generator=g), torch.zeros(n, pad, d)], dim=1)
        ln = torch.full((n,), T) if aligned else torch.randint(1, T + 1, (n,), generator=g)
        x[torch.arange(T + pad).unsqueeze(0) >= ln.unsqueeze(1)] = 0.0
        out[name] = x.unsqueeze(0).expand(K, -1, -1, -1).contiguous()
        out[length_key(name)] = ln.unsqueeze(0).expand(K, -1).contiguous()
    return out


@pytest.mark.parametrize("fusion,aligned", [("mult", False), ("ef_lstm", True)])
def test_padding_steps_change_nothing(fusion, aligned) -> None:  # noqa: ANN001
    m = build_model(fusion, seq_spec(2)).eval()
    a = m(seq_inputs(2, aligned=aligned))
    b = m(seq_inputs(2, pad=3, aligned=aligned))
    assert torch.allclose(a["emotion"], b["emotion"], atol=1e-5)


@pytest.mark.parametrize("fusion,aligned", [("mult", False), ("ef_lstm", True)])
def test_k_models_together_equal_each_alone(fusion, aligned) -> None:  # noqa: ANN001
    together = build_model(fusion, seq_spec(3)).train()
    x = seq_inputs(3, aligned=aligned)
    out = together(x)["emotion"]
    for k in range(3):
        s = seq_spec(3)
        alone_spec = ModelSpec(branches=s.branches, dims=s.dims, n_classes=3, n_valence=1, hidden=16, dropout=[0.1],
                               init_generators=[torch.Generator().manual_seed(5 + k)],
                               drop_generators=[torch.Generator().manual_seed(50 + k)])
        alone = build_model(fusion, alone_spec).train()
        got = alone({n: v[k:k + 1] for n, v in x.items()})["emotion"][0]
        assert torch.allclose(got, out[k], atol=1e-6), k     # same init and the same dropout masks


def test_cli_runs_a_sequence_model_and_records_its_input(store, tmp_path) -> None:  # noqa: ANN001
    from cli import trainer_app

    db = tmp_path / "r.sqlite"
    args = ["run", "--dataset", "synth", "--store", str(store.path), "--audio", "audio-a", "--text", "text-t",
            "--fusion", "mult", "--epochs", "2", "--hidden-dim", "16", "--steps", "4", "--results", str(db),
            "--model-option", "layers=1", "--json"]
    res = CliRunner().invoke(trainer_app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["fusion"] == "mult" and out["protocol"]["steps"] == 4
    res2 = CliRunner().invoke(trainer_app, args[:-1] + ["--aligned", "--json"])   # another input: another trial
    assert res2.exit_code == 0, res2.output
    import sqlite3

    hashes = {r[0] for r in sqlite3.connect(db).execute("select distinct config_hash from results")}
    assert len(hashes) == 2


def test_grid_over_every_fusion_feeds_each_its_level_and_reports_table_9(tmp_path) -> None:  # noqa: ANN001
    from cli import trainer_app
    from trainer.models import available_models
    from trainer.results import ResultsDB

    path = tmp_path / "s.zarr"
    make_store(path, n_train=45, n_test=15, seq_steps=3, signal=2.5,
               dims={"audio-a": ("audio", 6), "text-t": ("text", 5), "video-v": ("visual", 4)})
    db = str(tmp_path / "r.sqlite")
    res = CliRunner().invoke(trainer_app, ["grid", "--store", str(path), "--dataset", "synth", "--topn", "1",
                                           "--modalities", "ATV", "--fusion", "all", "--trials", "1",
                                           "--rank-trials", "1", "--epochs", "1", "--folds", "cv3",
                                           "--results", db, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    every = set(available_models()) - {"mlp"}
    got = {r["fusion"] for r in ResultsDB(db).rows("split = 'cv' AND fold = -1")} - {"mlp"}
    assert got == every and out["trained"] == len(every) and not out["notes"]
    rep = CliRunner().invoke(trainer_app, ["report", "--store", str(path), "--results", db])
    table9 = rep.output[rep.output.index("Table 9 style"):]
    assert all(f"| {f} |" in table9 for f in every)
