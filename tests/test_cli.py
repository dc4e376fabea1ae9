"""The `featstore` and `trainer` commands end to end through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import featstore_app, trainer_app
from featstore.store import FeatureStore

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(featstore_app, list(args))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def built(tmp_path: Path, demo_corpus: Path) -> str:
    store = str(tmp_path / "s.zarr")
    run("build", "--dataset", "demo", "--root", str(demo_corpus), "--encoder", "egemaps", "--store", store,
        "--rows-per-chunk", "4")
    return store


def test_catalog_lists_encoders_and_filters_by_modality() -> None:
    data = json.loads(run("catalog", "--json"))
    names = {e["name"] for e in data["encoders"]}
    assert {"hubert-large", "egemaps", "minilm-l6", "clip-large"} <= names
    text = json.loads(run("catalog", "--modality", "text", "--json"))
    assert text["encoders"] and all(e["modality"] == "text" for e in text["encoders"])
    assert "did you mean text" in run("catalog", "--modality", "txt", code=1)


def test_unknown_names_fail_with_closest_matches(tmp_path: Path) -> None:
    out = run("build", "--dataset", "demo", "--encoder", "hubert-larg", "--store", str(tmp_path / "s"), code=1)
    assert "unknown encoder 'hubert-larg'" in out and "hubert-large" in out
    out = run("build", "--dataset", "mer2042", "--encoder", "egemaps", "--store", str(tmp_path / "s"), code=1)
    assert "unknown dataset" in out and "mer2024" in out
    assert not (tmp_path / "s").exists()  # nothing written before the names are checked


def test_build_ls_info_verify(built: str) -> None:
    listing = json.loads(run("ls", "--store", built, "--json"))
    assert listing["keys"] == [{"key": "demo/egemaps/clean", "shape": [12, 1, 88], "dtype": "float32",
                                "rows_done": 12, "errors": 0, "seq_cap": 0}]
    assert listing["datasets"][0]["subsets"]["train"] + listing["datasets"][0]["subsets"]["test1"] == 12
    info = json.loads(run("info", "demo/egemaps", "--store", built, "--json"))
    assert info["rows_done"] == 12 and info["attrs"]["spec_hash"] and info["attrs"]["provenance"]["packages"]["opensmile"]
    assert "store is consistent" in run("verify", "--store", built)
    # a second build is a no-op
    assert "wrote 0 row(s)" in run("build", "--dataset", "demo", "--encoder", "egemaps", "--store", built)


def test_missing_key_and_not_a_store(built: str, tmp_path: Path) -> None:
    out = run("info", "demo/hubert-large/snr5-10", "--store", built, code=1)
    assert "no features for demo/hubert-large/snr5-10; run: featstore build --dataset demo --encoder hubert-large --corruption snr5-10" in out.replace("\n", " ")
    (tmp_path / "plain").mkdir()
    assert "is not a featstore store" in run("ls", "--store", str(tmp_path / "plain"), code=1)


def test_export_import_round_trip_and_rm(built: str, tmp_path: Path) -> None:
    h5 = tmp_path / "x.h5"
    run("export", str(h5), "--store", built)
    other = str(tmp_path / "other.zarr")
    run("import", "hdf5", str(h5), "--store", other)
    a, b = FeatureStore(built), FeatureStore(other)
    np.testing.assert_array_equal(a.read("demo", "egemaps"), b.read("demo", "egemaps"))
    assert a.open_key(next(iter(a.keys()))).attrs == b.open_key(next(iter(b.keys()))).attrs
    assert "already" in run("import", "hdf5", str(h5), "--store", other, code=1)
    run("rm", "demo/egemaps", "--store", other, "--yes")
    assert b.keys() == [] and b.has_dataset("demo")  # rm deletes exactly the key
    assert "no features" in run("rm", "demo/egemaps", "--store", other, "--yes", code=1)


def test_failed_samples_give_exit_code_3_and_show_in_info(tmp_path: Path, corpus_copy: Path) -> None:
    clip = sorted((corpus_copy / "clips").glob("*.mp4"))[3]
    clip.write_bytes(b"not an mp4 at all")
    store = str(tmp_path / "s.zarr")
    out = run("build", "--dataset", "demo", "--root", str(corpus_copy), "--encoder", "egemaps", "--store", store, code=3)
    assert clip.stem in out and "1 failed" in out
    info = json.loads(run("info", "demo/egemaps", "--store", store, "--json"))
    assert [e["id"] for e in info["errors"]] == [clip.stem] and info["rows_done"] == 11


def test_import_mertools_command(tmp_path: Path) -> None:
    feat = tmp_path / "mt" / "features" / "eGeMAPS_UTT"
    feat.mkdir(parents=True)
    train = {f"s{i}": {"emo": ["happy", "sad"][i % 2], "val": float(i)} for i in range(6)}
    np.savez(tmp_path / "mt" / "label-6way.npz", train_corpus=train, test1_corpus={})
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(feat / f"s{i}.npy", rng.standard_normal(88).astype(np.float32))
    store = str(tmp_path / "s.zarr")
    out = run("import", "mertools", str(tmp_path / "mt"), "--dataset", "mer2024", "--store", store)
    assert "mer2024/egemaps/clean" in out
    assert FeatureStore(store).read("mer2024", "egemaps").shape == (6, 1, 88)


def test_trainer_datasets_lists_stored_features(built: str) -> None:
    result = runner.invoke(trainer_app, ["datasets", "--store", built, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["demo"]["features"] == {"audio": ["egemaps/clean"]}
