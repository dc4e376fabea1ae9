"""Family `hf-text`: encoder LMs (BERT family, RoBERTa, XLNet, ELECTRA, DeBERTa, ALBERT, MacBERT, PERT,
LERT) and decoder LLMs (LLaMA-style, OPT, BLOOM, Falcon, Baichuan, ChatGLM2, ...) through transformers.

Input: strings (None reads as ""). Output: float32 [B, L, D], the chosen hidden layers pooled over tokens.

- Batches are right-padded (decoder LMs without a pad token get pad = eos, else unk) with an
  attention mask; with right padding and the mask, real tokens never see padding (causal LMs look
  only backwards; encoders mask it), and absolute positions of real tokens do not move. Hub
  tokenizers that only pad on the left (ChatGLM2's) keep their side and the rows are right-aligned after.
- Hidden states come batch first; params.hidden_layout 'seq-first' (ChatGLM: [T, B, D]) says otherwise,
  and model_type 'chatglm' implies it. Without either, [T, B, D] is recognised by shape when T != B.
- Remote code whose auto_map names AutoModelForCausalLM but not AutoModel (Baichuan-13B) loads through
  AutoModelForCausalLM unless params.auto_class says otherwise.
- recipe `mertools` (MERTools extract_text_huggingface.py, `find_start_end_pos` + `extract_embedding`):
  each sentence alone, hidden_states[layer_ids] summed (layer_ids = [-4, -3, -2, -1] there: the catalog
  entry carries them in spec.layers), then the tokens the tokenizer adds around the text (CLS/SEP, BOS,
  <sep><cls>, [gMASK]/sop, ...) are cut off before the mean over tokens; no token left -> zeros.
  MERTools finds those positions once per tokenizer with a probe sentence ('今天天气真好'); here the
  probe compares the ids with and without `add_special_tokens`, which gives the same counts without
  relying on decode() round-trips.
- recipe `default`: the mean over every real token (attention mask; special tokens included).
- pooling `cls`: the summary token (first token, or the last for tokenizers that append it, XLNet).
- Texts longer than the model's limit (params.max_tokens, else the tokenizer/model maximum) are
  truncated; the added special tokens are kept.
- CPU: float32 weights. CUDA: weights loaded in params.dtype (default bfloat16, as MERTools runs LLMs
  in half precision), params.device_map (e.g. 'auto', needs `accelerate`) spreads big models.
- Tokens (`encode_frames`, frame-level keys): per text the hidden states of its real tokens without the
  tokens the tokenizer adds (found as the mertools recipe finds them), same layers and layer sum/mean as
  the utterance vector (their mean when layers are stacked), in order. Under recipe mertools their mean is
  the utterance vector; recipe default's utterance mean also counts the added tokens. A text with no token
  of its own gets no tokens (the build records it).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np

from featstore.catalog import EncoderSpec
from featstore.encoders import hf_common as hc
from featstore.errors import FeatstoreError

PROBE = "今天天气真好 hello world"   # MERTools' probe sentence, plus Latin text for English-only vocabularies
AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM")
HIDDEN_LAYOUTS = ("batch-first", "seq-first")

__all__ = ["HFTextEncoder", "build", "added_token_counts", "frames_unavailable"]


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """Every hf-text entry can keep its tokens (None)."""
    return None


def added_token_counts(tokenizer: Any) -> tuple[int, int] | None:
    """(leading, trailing) tokens the tokenizer adds around one text, or None when the probe cannot tell."""
    with_special = list(tokenizer(PROBE)["input_ids"])
    bare = list(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    if not bare:
        return None
    for i in range(len(with_special) - len(bare) + 1):
        if with_special[i:i + len(bare)] == bare:
            return i, len(with_special) - i - len(bare)
    return None


class HFTextEncoder:
    """Strings in, float32 [B, L, D] out (see the module docstring for the recipes)."""

    def __init__(self, spec: EncoderSpec, path_or_id: str, revision: str | None, model: Any, tokenizer: Any,
                 device: str, dtype: Any, max_tokens: int | None, added: tuple[int, int] | None) -> None:
        self.spec, self.path_or_id, self.revision = spec, path_or_id, revision
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype
        self.max_tokens, self.added = max_tokens, added
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.net = model.get_encoder() if self.is_encoder_decoder else model
        params = inspect.signature(self.net.forward).parameters
        self._token_types = "token_type_ids" in params
        self._use_cache = "use_cache" in params
        self.hidden_layout = _hidden_layout(spec, model.config)
        self._provenance: dict[str, Any] | None = None

    def _input_device(self) -> Any:
        try:
            return self.net.get_input_embeddings().weight.device
        except Exception:
            return self.device

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Encode a batch of strings -> float32 [B, L, D]."""
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Strings -> (float32 [B, L, D] as `encode`, per text its tokens [T_i, D]; see the module docstring)."""
        utt, tokens = self._encode(batch, frames=True)
        return utt, tokens or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        import torch

        L, D = self.spec.n_stored_layers, self.spec.dim
        out = np.zeros((len(batch), L, D), dtype=np.float32)
        tokens: list[np.ndarray] | None = [np.zeros((0, D), np.float32) for _ in batch] if frames else None
        if not batch:
            return out, tokens
        texts = ["" if t is None else str(t) for t in batch]
        enc = self.tokenizer(texts, padding=True, truncation=self.max_tokens is not None, max_length=self.max_tokens,
                             return_tensors="pt", return_special_tokens_mask=self.added is None)
        _right_align(enc)
        attn = enc["attention_mask"].bool()
        lengths = attn.sum(dim=1)
        keep = self._content_mask(enc, attn, lengths, drop_added=self.spec.recipe == "mertools")
        own = self._content_mask(enc, attn, lengths, drop_added=True) if frames else keep
        rows = [i for i in range(len(texts)) if bool(keep[i].any()) and int(lengths[i]) > 0]   # own is within keep
        if not rows:                                   # nothing to encode: MERTools writes zeros
            return out, tokens
        t_max = int(lengths[rows].max())
        dev = self._input_device()
        inputs: dict[str, Any] = {"input_ids": enc["input_ids"][rows, :t_max].to(dev),
                                  "attention_mask": enc["attention_mask"][rows, :t_max].to(dev)}
        if self._token_types and "token_type_ids" in enc:
            inputs["token_type_ids"] = enc["token_type_ids"][rows, :t_max].to(dev)
        if self._use_cache:
            inputs["use_cache"] = False
        with torch.inference_mode(), hc.autocast(self.device, self.dtype):
            hidden = self.net(**inputs, output_hidden_states=True).hidden_states
            hidden = tuple(_batch_first(h, len(rows), self.hidden_layout) for h in hidden)
            layers = hc.select_layers(hidden, self.spec)                      # [b, L, T, D] float32
            if self.spec.pooling == "cls":
                pos = torch.zeros(len(rows), dtype=torch.long) if (self.added is None or self.added[0] > 0) \
                    else lengths[rows] - 1
                pooled = layers[torch.arange(len(rows), device=layers.device), :, pos.to(layers.device)]
            else:
                pooled = hc.masked_mean(layers, keep[rows, :t_max])
            if tokens is not None:
                per_token = layers.mean(dim=1).float().cpu()                   # [b, T, D]
                for r, i in enumerate(rows):
                    tokens[i] = per_token[r, own[i, :t_max]].numpy()
        out[rows] = pooled.float().cpu().numpy()
        return out, tokens

    def _content_mask(self, enc: Any, attn: Any, lengths: Any, drop_added: bool) -> Any:
        """Real tokens (drop_added False: recipe default's mean), or minus the added special ones (mertools, tokens)."""
        import torch

        if not drop_added:
            return attn
        if self.added is None:                          # probe failed: drop every token the tokenizer marks special
            return attn & ~enc["special_tokens_mask"].bool()
        lead, trail = self.added
        pos = torch.arange(attn.shape[1])[None, :]
        return attn & (pos >= lead) & (pos < (lengths[:, None] - trail))

    def provenance(self) -> dict[str, Any]:
        """Resolved model (path/id, commit, weights sha256), token handling, package versions."""
        if self._provenance is None:
            self._provenance = hc.hf_provenance(
                self.spec, self.path_or_id, self.model, self.revision,
                model_type=getattr(self.model.config, "model_type", None),
                tokenizer=type(self.tokenizer).__name__, max_tokens=self.max_tokens,
                added_tokens=list(self.added) if self.added else None,
                compute_dtype=str(self.dtype).replace("torch.", ""))
        return dict(self._provenance)


def _batch_first(h: Any, b: int, layout: str | None = None) -> Any:
    """[B, T, D] (some old models return [T, B, D]: layout 'seq-first', or by shape when T != B)."""
    if layout == "seq-first" or (layout is None and h.shape[0] != b and h.dim() == 3 and h.shape[1] == b):
        return h.transpose(0, 1)
    return h


def _hidden_layout(spec: EncoderSpec, config: Any) -> str | None:
    layout = spec.params.get("hidden_layout")
    if layout is None:
        return "seq-first" if getattr(config, "model_type", None) == "chatglm" else None
    if layout not in HIDDEN_LAYOUTS:
        raise FeatstoreError(f"encoder {spec.name}: params.hidden_layout must be one of {', '.join(HIDDEN_LAYOUTS)}")
    return str(layout)


def _right_align(enc: Any) -> None:
    """Move each row's real tokens to the front, in order (a no-op for right-padded batches)."""
    import torch

    attn = enc["attention_mask"]
    if attn.numel() == 0 or not bool((attn[:, :-1] < attn[:, 1:]).any()):
        return
    order = torch.argsort((attn == 0).to(torch.int8), dim=1, stable=True)
    for key in list(enc.keys()):
        value = enc[key]
        if isinstance(value, torch.Tensor) and value.shape == attn.shape:
            enc[key] = torch.gather(value, 1, order)


def _padding_side(tokenizer: Any) -> str:
    """'right', unless the tokenizer refuses it (ChatGLM2's hub tokenizer asserts left padding)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        tokenizer(["a", "a a"], padding=True)
        return "right"
    except Exception:
        return side


def _auto_class(spec: EncoderSpec, path_or_id: str, revision: str | None) -> str:
    """params.auto_class; else AutoModelForCausalLM for remote code that registers no AutoModel; else AutoModel."""
    name = spec.params.get("auto_class")
    if name is not None:
        return str(name)
    if spec.trust_remote_code:
        folder = hc.local_folder(path_or_id, revision)
        auto_map: Any = {}
        if folder is not None:
            try:
                auto_map = json.loads((folder / "config.json").read_text()).get("auto_map")
            except (OSError, ValueError, AttributeError):
                pass
        if isinstance(auto_map, dict) and "AutoModel" not in auto_map and "AutoModelForCausalLM" in auto_map:
            return "AutoModelForCausalLM"
    return "AutoModel"


def _max_tokens(spec: EncoderSpec, tokenizer: Any, config: Any) -> int | None:
    limits = []
    if spec.params.get("max_tokens"):
        limits.append(int(spec.params["max_tokens"]))
    for value in (getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)):
        if isinstance(value, int) and 0 < value < 1_000_000:
            limits.append(value)
    return min(limits) if limits else None


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu", *,
          dtype: str | None = None) -> HFTextEncoder:
    """Load an hf-text encoder for a catalog entry.

    spec.model (overridden by `model`): a local folder or a hub id in the local HF cache. spec.params:
    max_tokens, dtype (CUDA weights dtype, default bfloat16; CPU is always float32), device_map (CUDA,
    e.g. 'auto'), auto_class (AutoModel | AutoModelForCausalLM, for checkpoints whose remote code only
    registers a causal-LM class). `dtype` overrides spec.params['dtype'].
    """
    if spec.modality != "text":
        raise FeatstoreError(f"encoder {spec.name}: family hf-text needs modality text, not {spec.modality}")
    if spec.pooling not in ("mean", "cls"):
        raise FeatstoreError(f"encoder {spec.name}: family hf-text pools with 'mean' or 'cls', not '{spec.pooling}'")
    import transformers

    path_or_id, revision = hc.resolve_model(spec, model)
    auto_name = _auto_class(spec, path_or_id, revision)
    if auto_name not in AUTO_CLASSES:
        raise FeatstoreError(f"encoder {spec.name}: params.auto_class must be one of {', '.join(AUTO_CLASSES)}")
    torch_dtype = hc.compute_dtype(spec, device, dtype)
    kw: dict[str, Any] = {"dtype": torch_dtype}
    on_cuda = str(device).startswith("cuda")
    device_map = spec.params.get("device_map") if on_cuda else None
    if device_map:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise FeatstoreError(f"encoder {spec.name}: params.device_map needs the accelerate package "
                                 f"(pip install accelerate)") from None
        kw["device_map"] = device_map
    net = hc.load_pretrained(getattr(transformers, auto_name), spec, model, **kw)
    tokenizer = hc.load_pretrained(transformers.AutoTokenizer, spec, model)
    hc.check_dim(spec, net.config, path_or_id)
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
        else:
            raise FeatstoreError(f"encoder {spec.name}: the tokenizer in {path_or_id} has no pad, eos or unk token")
    tokenizer.padding_side = _padding_side(tokenizer)
    net.eval()
    if not device_map:
        net.to(device)
    return HFTextEncoder(spec, path_or_id, revision, net, tokenizer, device, torch_dtype,
                         _max_tokens(spec, tokenizer, net.config), added_token_counts(tokenizer))
