"""hf-audio / hf-text encoders on tiny random models saved to folders and reloaded offline through load_encoder.

Tolerance: batched vs one-at-a-time outputs agree within 1e-4 relative error (max |a-b| / max |b|) in fp32.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from featstore.catalog import EncoderSpec  # noqa: E402
from featstore.encoders import hf_common as hc  # noqa: E402
from featstore.encoders import load_encoder  # noqa: E402
from featstore.errors import FeatstoreError  # noqa: E402

SR = 16000
TOL = 1e-4
CONV = dict(conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2)
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
WORDS = ["hello", "world", "i", "am", "so", "happy", "sad", "today", "the", "weather", "is", "nice", "angry",
         "really", "not", "bad", "今", "天", "气", "真", "好"]
TEXTS = ["i am so happy today", "the weather is really nice today and i am not angry", "sad"]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))


def wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ tiny models

def _save_audio(kind: str, folder: Path) -> None:
    from transformers import (Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, Wav2Vec2Model, WavLMConfig, WavLMModel, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)

    torch.manual_seed(0)
    if kind == "whisper":
        cfg = WhisperConfig(vocab_size=64, d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                            max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[])
        WhisperModel(cfg).save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
        return
    if kind == "hubert":      # large-style: layer-norm conv front end, stable layer norm
        model = HubertModel(HubertConfig(**SMALL, **CONV, feat_extract_norm="layer", do_stable_layer_norm=True))
        fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    elif kind == "wav2vec2":  # base-style: group-norm conv front end (HF default)
        model = Wav2Vec2Model(Wav2Vec2Config(**SMALL, **CONV))
        assert model.config.feat_extract_norm == "group"
        fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    elif kind == "wavlm":     # large-style; saved without a preprocessor config (defaults are used)
        model = WavLMModel(WavLMConfig(**SMALL, **CONV, feat_extract_norm="layer", do_stable_layer_norm=True,
                                       num_buckets=32, max_bucket_distance=100))
        fe = None
    elif kind == "data2vec":
        conv = {k: CONV[k] for k in ("conv_dim", "conv_stride", "conv_kernel")}
        model = Data2VecAudioModel(Data2VecAudioConfig(**SMALL, **conv, conv_pos_kernel_size=5,
                                                       num_conv_pos_embeddings=5))
        fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    if fe is not None:
        fe.save_pretrained(folder)


def _save_text(kind: str, folder: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        vocab = folder / "vocab_src.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        tok = BertTokenizer(vocab_file=str(vocab), do_lower_case=True)
        BertModel(BertConfig(vocab_size=len(WORDS) + 5, max_position_embeddings=64, **SMALL)).save_pretrained(folder)
        tok.save_pretrained(folder)
        vocab.unlink()
        return
    if kind == "llama":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=None)
        LlamaModel(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
        return
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """kind -> folder with a tiny random model (built on first use, once per session)."""
    root = tmp_path_factory.mktemp("hf-tiny")
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            folder = root / kind
            (_save_text if kind in ("bert", "llama") else _save_audio)(kind, folder)
            made[kind] = folder
        return made[kind]
    return get


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("FEATSTORE_CACHE", str(tmp_path / "cache"))


def audio_spec(folder: Path, **over) -> EncoderSpec:
    kw = dict(name="tiny-audio", modality="audio", family="hf-audio", dim=32, model=str(folder),
              layers=(-4, -3, -2, -1), layer_reduce="sum", input={"sample_rate": SR})
    kw.update(over)
    return EncoderSpec(**kw)


def text_spec(folder: Path, **over) -> EncoderSpec:
    kw = dict(name="tiny-text", modality="text", family="hf-text", dim=32, model=str(folder),
              layers=(-4, -3, -2, -1), layer_reduce="sum")
    kw.update(over)
    return EncoderSpec(**kw)


AUDIO = ["hubert", "wav2vec2", "wavlm", "data2vec", "whisper"]
TEXT = ["bert", "llama"]


def make(kind: str, tiny_models, **over):
    folder = tiny_models(kind)
    spec = text_spec(folder, **over) if kind in TEXT else audio_spec(folder, **over)
    return load_encoder(spec)


def inputs_for(kind: str) -> list:
    if kind in TEXT:
        return TEXTS
    return [wave(1.0, 0), wave(2.3, 1), wave(0.6, 2)]


# ------------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("kind", AUDIO + TEXT)
def test_shapes_for_layer_choices(kind, tiny_models):
    batch = inputs_for(kind)[:2]
    last = make(kind, tiny_models, layers="last").encode(batch)
    summed = make(kind, tiny_models).encode(batch)
    stacked = make(kind, tiny_models, layer_reduce="stack").encode(batch)
    every = make(kind, tiny_models, layers="all", layer_reduce="stack", n_layers=4).encode(batch)
    assert last.shape == (2, 1, 32) and summed.shape == (2, 1, 32) and stacked.shape == (2, 4, 32)
    assert every.shape == (2, 4, 32)
    for out in (last, summed, stacked, every):
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert rel_err(stacked.sum(axis=1, keepdims=True), summed) < TOL       # sum == sum of the stacked layers
    assert rel_err(stacked[:, -1:], last) < TOL
    np.testing.assert_allclose(every, stacked, rtol=1e-5, atol=1e-6)       # 4 hidden states = all of them
    mean = make(kind, tiny_models, layer_reduce="mean").encode(batch)
    assert rel_err(mean * 4, summed) < TOL


def test_layer_out_of_range_fails_naming_it(tiny_models):
    enc = make("bert", tiny_models, layers=(-9,))
    with pytest.raises(FeatstoreError, match="layer -9 is out of range"):
        enc.encode(["hello"])


def test_wrong_dim_fails_at_load(tiny_models):
    with pytest.raises(FeatstoreError, match="hidden size 32 but the catalog says dim 64"):
        load_encoder(audio_spec(tiny_models("hubert"), dim=64))


# ------------------------------------------------------------------------------------------------ batching

@pytest.mark.parametrize("kind", AUDIO + TEXT)
@pytest.mark.parametrize("recipe", ["default", "mertools"])
def test_batched_equals_one_at_a_time(kind, recipe, tiny_models):
    """Inputs of different lengths: each batched row equals the row encoded alone (padding never leaks)."""
    enc = make(kind, tiny_models, recipe=recipe)
    batch = inputs_for(kind)
    together = enc.encode(batch)
    for i, x in enumerate(batch):
        alone = enc.encode([x])[0]
        assert rel_err(together[i], alone) < TOL, (kind, recipe, i)
    assert not np.allclose(together[0], together[1])


def test_group_norm_model_runs_equal_length_sub_batches(tiny_models):
    """A naive padded batch changes group-norm outputs; the encoder's equal-length sub-batches do not."""
    folder = tiny_models("wav2vec2")
    enc = make("wav2vec2", tiny_models, layers="last")
    assert enc.equal_length_batches and enc.provenance()["equal_length_batches"] is True
    short, long = wave(1.0, 0), wave(3.0, 1)
    ours = enc.encode([short, long])
    alone = enc.encode([short])[0]
    assert rel_err(ours[0], alone) < TOL

    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = Wav2Vec2Model.from_pretrained(folder).eval()
    padded = fe([short, long], sampling_rate=SR, padding=True, return_tensors="pt").input_values
    with torch.inference_mode():
        hidden = model(padded).last_hidden_state
    n = int(model._get_feat_extract_output_lengths(torch.tensor(len(short))))
    naive = hidden[0, :n].mean(0).numpy()            # even pooled over real frames only, padding changed them
    assert rel_err(naive, alone) > 1e-2


def test_which_models_pad(tiny_models):
    """Padded batches only where the model honours masks exactly; data2vec-audio's stacked positional convs
    carry padding into the last real frames, so it runs equal-length sub-batches like group-norm models."""
    assert {k: make(k, tiny_models).equal_length_batches for k in ("hubert", "wavlm", "wav2vec2", "data2vec")} == \
        {"hubert": False, "wavlm": False, "wav2vec2": True, "data2vec": True}
    from transformers import Data2VecAudioModel
    model = Data2VecAudioModel.from_pretrained(tiny_models("data2vec")).eval()
    short = torch.from_numpy(wave(1.0, 0))[None]
    padded = torch.cat([short, torch.zeros(1, SR)], dim=1)
    mask = torch.cat([torch.ones(1, SR), torch.zeros(1, SR)], dim=1).long()
    n = int(model._get_feat_extract_output_lengths(torch.tensor(SR)))
    with torch.inference_mode():
        alone = model(short).last_hidden_state[0].numpy()
        masked = model(padded, attention_mask=mask).last_hidden_state[0, :n].numpy()
    assert rel_err(masked, alone) > 1e-3


def test_layer_norm_model_pads_with_attention_mask(tiny_models):
    """A layer-norm model batches different lengths in one padded pass and still matches exactly."""
    enc = make("hubert", tiny_models)
    assert not enc.equal_length_batches
    x = wave(1.0, 3)
    padded_batch = enc.encode([x, wave(4.0, 4)])[0]
    assert rel_err(padded_batch, enc.encode([x])[0]) < TOL
    # appending real zeros to the clip is not padding: the zeros' frames count and change the mean
    with_zeros = enc.encode([np.concatenate([x, np.zeros(3 * SR, np.float32)])])[0]
    assert rel_err(with_zeros, padded_batch) > 1e-3


def test_text_padding_never_leaks(tiny_models):
    for kind in TEXT:
        enc = make(kind, tiny_models, recipe="default")
        short = "sad"
        alone = enc.encode([short])[0]
        padded = enc.encode([short, "the weather is really nice today and i am not angry at all " * 3])[0]
        assert rel_err(padded, alone) < TOL, kind


# ------------------------------------------------------------------------------------------------ recipes: text

def _manual_text(folder: Path, text: str, drop_first: int, drop_last: int) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt")
    with torch.inference_mode():
        hs = model(**{k: v for k, v in ids.items() if k != "token_type_ids" or "bert" in str(folder)},
                   output_hidden_states=True).hidden_states
    summed = torch.stack(hs)[[-4, -3, -2, -1]].sum(0)[0]        # MERTools: sum of the last 4 layers, [T, D]
    end = summed.shape[0] - drop_last
    return summed[drop_first:end].mean(0).numpy()


@pytest.mark.parametrize("kind,lead,trail", [("bert", 1, 1), ("llama", 1, 0)])
def test_text_mertools_drops_added_special_tokens(kind, lead, trail, tiny_models):
    folder = tiny_models(kind)
    enc = make(kind, tiny_models, recipe="mertools")
    assert tuple(enc.added) == (lead, trail)
    text = TEXTS[1]
    got = enc.encode([TEXTS[0], text])[1, 0]
    assert rel_err(got, _manual_text(folder, text, lead, trail)) < TOL
    default = make(kind, tiny_models, recipe="default").encode([text])[0, 0]
    assert rel_err(default, _manual_text(folder, text, 0, 0)) < TOL      # default keeps every real token
    assert rel_err(default, got) > 1e-3


def test_text_empty_and_none(tiny_models):
    enc = make("bert", tiny_models, recipe="mertools")
    out = enc.encode(["", None, "happy"])
    assert out.shape == (3, 1, 32)
    assert not out[0].any() and not out[1].any()      # only CLS/SEP: MERTools writes zeros
    assert out[2].any()
    llama = make("llama", tiny_models, recipe="default").encode([""])
    assert llama.shape == (1, 1, 32) and np.isfinite(llama).all()


def test_decoder_gets_a_pad_token_and_right_padding(tiny_models):
    enc = make("llama", tiny_models)
    assert enc.tokenizer.pad_token == "</s>" and enc.tokenizer.padding_side == "right"


def test_text_cls_pooling(tiny_models):
    from transformers import AutoModel, AutoTokenizer
    folder = tiny_models("bert")
    enc = make("bert", tiny_models, layers="last", pooling="cls")
    got = enc.encode(["sad", TEXTS[1]])
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        ref = model(**tok(["sad"], return_tensors="pt")).last_hidden_state[0, 0].numpy()
    assert rel_err(got[0, 0], ref) < TOL


# ------------------------------------------------------------------------------------------------ recipes: audio

def test_audio_mertools_windows_match_manual(tiny_models):
    """MERTools split_into_batch: zero-pad to a multiple of the window, all frames of all windows averaged."""
    from transformers import HubertModel, Wav2Vec2FeatureExtractor
    folder = tiny_models("hubert")
    enc = make("hubert", tiny_models, recipe="mertools", input={"sample_rate": SR, "window_s": 1.0})
    x = wave(2.5, 5)
    got = enc.encode([wave(0.7, 6), x])[1, 0]
    fe, model = Wav2Vec2FeatureExtractor.from_pretrained(folder), HubertModel.from_pretrained(folder).eval()
    values = fe(x, sampling_rate=SR, return_tensors="pt").input_values          # [1, T], normalised whole clip
    batches = torch.zeros(1, 3 * SR)
    batches[:, :values.shape[1]] = values
    with torch.inference_mode():
        hs = model(batches.view(-1, SR), output_hidden_states=True).hidden_states
    ref = torch.stack(hs)[[-4, -3, -2, -1]].sum(0).reshape(-1, 32).mean(0).numpy()
    assert rel_err(got, ref) < TOL
    short = wave(0.8, 7)                      # shorter than the window: one pass, no padding
    with torch.inference_mode():
        values = fe(short, sampling_rate=SR, return_tensors="pt").input_values
        hs = model(values, output_hidden_states=True).hidden_states
    ref = torch.stack(hs)[[-4, -3, -2, -1]].sum(0)[0].mean(0).numpy()
    assert rel_err(enc.encode([short])[0, 0], ref) < TOL


def test_audio_default_windows_pool_real_frames(tiny_models):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
    folder = tiny_models("wav2vec2")
    enc = make("wav2vec2", tiny_models, layers="last", input={"sample_rate": SR, "window_s": 1.0})
    x = wave(2.5, 8)
    got = enc.encode([x, wave(1.3, 9)])[0, 0]
    fe, model = Wav2Vec2FeatureExtractor.from_pretrained(folder), Wav2Vec2Model.from_pretrained(folder).eval()
    values = fe(x, sampling_rate=SR, return_tensors="np").input_values[0]
    frames = []
    with torch.inference_mode():
        for part in np.array_split(values, 3):                 # 3 balanced windows, each run at its own length
            frames.append(model(torch.from_numpy(part)[None]).last_hidden_state[0])
    ref = torch.cat(frames).mean(0).numpy()
    assert rel_err(got, ref) < TOL


def test_audio_too_short_and_empty(tiny_models):
    enc = make("hubert", tiny_models)
    out = enc.encode([np.full(40, 0.1, np.float32)])            # below the receptive field: padded to one frame
    assert out.shape == (1, 1, 32) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="empty audio"):
        enc.encode([np.zeros(0, np.float32)])


def test_whisper_default_pools_real_frames_only(tiny_models):
    from transformers import WhisperFeatureExtractor, WhisperModel
    folder = tiny_models("whisper")
    enc = make("whisper", tiny_models, layers="last")
    one = wave(1.0, 0)
    alone = enc.encode([one])[0, 0]
    with_long = enc.encode([one, wave(3.0, 1)])[0, 0]
    assert rel_err(with_long, alone) < TOL
    fe, model = WhisperFeatureExtractor.from_pretrained(folder), WhisperModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        enc_out = model.encoder(fe(one, sampling_rate=SR, return_tensors="pt").input_features).last_hidden_state[0]
    assert rel_err(alone, enc_out[:50].mean(0).numpy()) < TOL        # 1 s = 100 mel frames = 50 encoder frames
    assert rel_err(alone, enc_out.mean(0).numpy()) > 1e-2            # not the 30 s of padding


def test_whisper_default_long_clip_windows(tiny_models):
    from transformers import WhisperFeatureExtractor, WhisperModel
    folder = tiny_models("whisper")
    enc = make("whisper", tiny_models, layers="last")
    x = wave(40.0, 2)
    got = enc.encode([x])[0, 0]
    fe, model = WhisperFeatureExtractor.from_pretrained(folder), WhisperModel.from_pretrained(folder).eval()
    frames = []
    with torch.inference_mode():
        for part in np.array_split(x, 2):                               # 2 windows of 20 s = 1000 frames each
            h = model.encoder(fe(part, sampling_rate=SR, return_tensors="pt").input_features).last_hidden_state[0]
            frames.append(h[:1000])
    assert rel_err(got, torch.cat(frames).mean(0).numpy()) < TOL


def test_whisper_mertools_uses_two_decoder_start_tokens(tiny_models):
    from transformers import WhisperFeatureExtractor, WhisperModel
    folder = tiny_models("whisper")
    enc = make("whisper", tiny_models, layers="last", recipe="mertools")
    x = wave(1.5, 3)
    got = enc.encode([wave(0.5, 4), x])[1, 0]
    fe, model = WhisperFeatureExtractor.from_pretrained(folder), WhisperModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        feats = fe(x, sampling_rate=SR, return_tensors="pt").input_features
        out = model(feats, decoder_input_ids=torch.tensor([[1, 1]]) * model.config.decoder_start_token_id)
    assert rel_err(got, out.last_hidden_state[0].mean(0).numpy()) < TOL


# ------------------------------------------------------------------------------------------------ loading, provenance

def test_missing_hub_id_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for family, modality in (("hf-audio", "audio"), ("hf-text", "text")):
        spec = EncoderSpec(name="ghost", modality=modality, family=family, dim=32, model="featstore-test/no-such-model")
        t0 = time.perf_counter()
        with pytest.raises(FeatstoreError) as info:
            load_encoder(spec)
        assert time.perf_counter() - t0 < 5
        msg = str(info.value)
        assert "\n" not in msg
        assert msg == ("encoder ghost: model 'featstore-test/no-such-model' is not available offline; "
                       "download it elsewhere and pass --model /path/to/folder")


def test_hub_id_loads_from_the_hf_cache_with_its_commit(tiny_models, tmp_path, monkeypatch):
    """A hub id already in the local HF cache loads offline; provenance records the snapshot's commit."""
    from huggingface_hub import constants
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--featstore-test--tiny-bert"
    shutil.copytree(tiny_models("bert"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = text_spec(Path("x"), model="featstore-test/tiny-bert", revision="main")
    enc = load_encoder(spec)
    prov = enc.provenance()
    assert prov["model"] == "featstore-test/tiny-bert" and prov["revision"] == commit
    assert prov["weights"] == hc.weights_identity(tiny_models("bert"))
    ref = load_encoder(text_spec(tiny_models("bert"))).encode(TEXTS)
    np.testing.assert_array_equal(enc.encode(TEXTS), ref)


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(hc, "_hub_offline", lambda: False)
    monkeypatch.setattr(hc, "_hub_reachable", lambda timeout=3.0: False)
    spec = EncoderSpec(name="ghost", modality="audio", family="hf-audio", dim=32, model="featstore-test/no-such-model")
    t0 = time.perf_counter()
    with pytest.raises(FeatstoreError, match="is not available offline; download it elsewhere and pass --model"):
        load_encoder(spec)
    assert time.perf_counter() - t0 < 5


def test_model_override_and_missing_folder(tiny_models, tmp_path):
    spec = audio_spec(Path("/nonexistent/hubert"))
    with pytest.raises(FeatstoreError, match="model folder not found"):
        load_encoder(spec)
    enc = load_encoder(spec, model=str(tiny_models("hubert")))
    assert enc.provenance()["model"] == str(tiny_models("hubert").resolve())


def test_provenance_weights_hash_follows_weights(tiny_models, tmp_path):
    src = tiny_models("bert")
    copy = tmp_path / "bert-copy"
    shutil.copytree(src, copy)
    a = make("bert", tiny_models).provenance()
    b = load_encoder(text_spec(copy)).provenance()
    assert a["weights"].startswith("sha256:") and len(a["weights"]) == len("sha256:") + 64
    assert a["weights"] == b["weights"]                       # same weights at another path, same identity
    for key in ("model", "revision", "recipe", "transformers", "torch"):
        assert key in a
    assert a["revision"] is None and a["recipe"] == "default"
    assert a["transformers"] == transformers.__version__ and a["torch"] == torch.__version__

    from transformers import BertModel
    model = BertModel.from_pretrained(copy)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1e-3)
    model.save_pretrained(copy)
    c = load_encoder(text_spec(copy)).provenance()
    assert c["weights"] != a["weights"]
    assert hc.weights_identity(copy) == c["weights"]


def test_weights_identity_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    calls = []
    real = hc.hashlib.sha256
    monkeypatch.setattr(hc.hashlib, "sha256", lambda *a: (calls.append(1), real(*a))[1])
    first = hc.weights_identity(tmp_path)
    n = len(calls)
    assert hc.weights_identity(tmp_path) == first and len(calls) - n == 1    # file hash memoised; only the combine
    assert hc.weights_identity(tmp_path / "missing") is None


def test_masked_mean_ignores_padding_values():
    x = torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x[0, :, 2:] = float("nan")                                   # padding values never enter
    out = hc.masked_mean(x, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], x[0, :, :2].mean(1))
    torch.testing.assert_close(out[1], x[1].mean(1))
    assert not hc.masked_mean(x[:1], torch.zeros(1, 5, dtype=torch.bool)).any()


def test_select_layers_reduce():
    hs = tuple(torch.full((1, 2, 3), float(i)) for i in range(5))

    def spec(**kw):
        return EncoderSpec(name="x", modality="text", family="hf-text", dim=3, model="m", **kw)
    assert hc.select_layers(hs, spec(layers=(0, -1), layer_reduce="stack"))[0, :, 0, 0].tolist() == [0.0, 4.0]
    summed = hc.select_layers(hs, spec(layers=(0, -1)))
    assert summed.shape == (1, 1, 2, 3) and float(summed[0, 0, 0, 0]) == 4.0
    assert math.isclose(float(hc.select_layers(hs, spec(layers="all", layer_reduce="mean"))[0, 0, 0, 0]), 2.0)


# ------------------------------------------------------------------------------------------------ frames (seq keys)

FRAME_CASES = [(k, r) for k in AUDIO + TEXT for r in ("default", "mertools") if (k, r) != ("whisper", "mertools")]


@pytest.mark.parametrize("kind,recipe", FRAME_CASES)
def test_frames_batched_equal_one_at_a_time(kind, recipe, tiny_models):
    """encode_frames: the utterance rows are encode's, and each item's frames equal its frames encoded alone."""
    enc = make(kind, tiny_models, recipe=recipe, seq_cap=8)
    batch = inputs_for(kind)
    utt, frames = enc.encode_frames(batch)
    assert rel_err(utt, enc.encode(batch)) < TOL
    assert len(frames) == len(batch)
    for i, x in enumerate(batch):
        alone_utt, alone = enc.encode_frames([x])
        assert frames[i].dtype == np.float32 and frames[i].ndim == 2 and frames[i].shape[1] == 32
        assert frames[i].shape == alone[0].shape and len(alone[0]) > 0, (kind, recipe, i)
        assert rel_err(frames[i], alone[0]) < TOL, (kind, recipe, i)
        assert rel_err(utt[i], alone_utt[0]) < TOL


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "data2vec", "whisper"])
def test_audio_frames_are_the_frames_the_utterance_mean_pools(kind, tiny_models):
    """Recipe default: frames of real audio, windows concatenated; their mean is the utterance vector."""
    window = {"window_s": 1.0} if kind != "whisper" else {}
    enc = make(kind, tiny_models, input={"sample_rate": SR, **window})
    clip = wave(2.5, 8)
    utt, frames = enc.encode_frames([wave(0.7, 1), clip])
    if kind == "whisper":
        expected = 125                                        # 2.5 s = 250 mel frames -> 125 encoder frames
    else:                                                     # 3 balanced windows, each at its own length
        expected = sum(int(enc.model._get_feat_extract_output_lengths(torch.tensor(len(p))))
                       for p in np.array_split(np.zeros(len(clip)), 3))
    assert frames[1].shape == (expected, 32)
    assert rel_err(frames[1].mean(axis=0), utt[1, 0]) < TOL


def test_audio_mertools_frames_leave_out_the_zero_tail(tiny_models):
    """MERTools' utterance mean counts the frames of its zero-padded last window; the sequence keeps real audio."""
    enc = make("hubert", tiny_models, recipe="mertools", input={"sample_rate": SR, "window_s": 1.0})
    utt, frames = enc.encode_frames([wave(2.5, 5)])
    per_window = int(enc.model._get_feat_extract_output_lengths(torch.tensor(SR)))
    half = int(enc.model._get_feat_extract_output_lengths(torch.tensor(SR // 2)))
    assert frames[0].shape == (2 * per_window + half, 32)
    assert rel_err(frames[0].mean(axis=0), utt[0, 0]) > 1e-3     # the utterance mean also has the tail's frames


def test_stacked_layers_keep_their_mean_as_frames(tiny_models):
    for kind in ("hubert", "bert"):
        stacked = make(kind, tiny_models, layer_reduce="stack", recipe="mertools")
        utt, frames = stacked.encode_frames(inputs_for(kind)[:2])
        assert utt.shape == (2, 4, 32) and frames[0].shape[1] == 32
        mean_layers = make(kind, tiny_models, layer_reduce="mean", recipe="mertools").encode_frames(inputs_for(kind)[:2])[1]
        for a, b in zip(frames, mean_layers):
            assert a.shape == b.shape and rel_err(a, b) < TOL
        if kind == "bert":                                         # mertools text: the tokens' mean is the utterance
            assert rel_err(frames[1].mean(axis=0), utt[1].mean(axis=0)) < TOL


@pytest.mark.parametrize("kind,lead,trail", [("bert", 1, 1), ("llama", 1, 0)])
def test_text_tokens_drop_added_special_tokens(kind, lead, trail, tiny_models):
    from transformers import AutoModel, AutoTokenizer
    folder = tiny_models(kind)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    ids = {k: v for k, v in tok(TEXTS[1], return_tensors="pt").items() if k != "token_type_ids" or kind == "bert"}
    with torch.inference_mode():
        hidden = model(**ids).last_hidden_state[0]
    ref = hidden[lead:hidden.shape[0] - trail].numpy()              # the text's own tokens, in order
    for recipe in ("default", "mertools"):
        enc = make(kind, tiny_models, recipe=recipe, layers="last")
        utt, tokens = enc.encode_frames(TEXTS)
        for text, t in zip(TEXTS, tokens):
            assert len(t) == len(tok(text, add_special_tokens=False)["input_ids"]), (kind, recipe, text)
        assert tokens[1].shape == ref.shape and rel_err(tokens[1], ref) < TOL
    empty = make("bert", tiny_models).encode_frames(["", "sad"])[1]
    assert empty[0].shape == (0, 32) and empty[1].shape == (1, 32)   # nothing of its own: the build records it


def test_whisper_mertools_has_no_frames(tiny_models):
    with pytest.raises(FeatstoreError, match=r"encoder tiny-audio: recipe mertools pools Whisper's two decoder "
                                             r"positions.*without --level frame"):
        make("whisper", tiny_models, recipe="mertools", seq_cap=16)
    assert make("whisper", tiny_models, recipe="mertools").encode([wave(0.5, 0)]).shape == (1, 1, 32)
