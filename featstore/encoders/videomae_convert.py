"""Convert an original-format VideoMAE checkpoint (MCG-NJU/VideoMAE layout) to a transformers folder, once.

MERTools' released VideoMAE models (VoxCeleb2- and MER2023-pretrained, `checkpoint-N.pth`) use the
original repository's state dict; `featstore` loads transformers folders, so convert them first:

    from featstore.encoders.videomae_convert import convert
    convert("videomae-base-VoxCeleb2/checkpoint-99.pth", "models/videomae-base-voxceleb2",
            {"image_size": 160})        # MERTools runs this one as vit_base_patch16_160

then point the catalog entry (family hf-video) or `--model` at the folder.

Key mapping (as transformers' convert_videomae_to_pytorch.py, adapted to VideoMAEModel in
transformers 5, where q/v biases are the query/value Linear biases):
    [model|module][encoder.|backbone.]...       the state dict and prefixes stripped (MERTools does too)
    patch_embed.proj.{weight,bias}             embeddings.patch_embeddings.projection.*
    blocks.N.norm1 / norm2                     encoder.layer.N.layernorm_before / layernorm_after
    blocks.N.attn.qkv.weight  [3D, D]          ...attention.attention.{query,key,value}.weight (split in 3)
    blocks.N.attn.q_bias / v_bias              ...attention.attention.query.bias / value.bias (key has none)
    blocks.N.attn.proj                         ...attention.output.dense
    blocks.N.mlp.fc1 / fc2                     ...intermediate.dense / output.dense
    norm.{weight,bias}                         layernorm.*         (pre-training checkpoints)
    fc_norm.*, head.*                          fc_norm.*, classifier.*  (fine-tuned: saved as
                                               VideoMAEForVideoClassification; VideoMAEModel loads
                                               its encoder part and has no final layernorm)
    decoder*, encoder_to_decoder, mask_token   dropped (pre-training decoder)
    pos_embed                                  must equal the fixed sinusoid table (checked, dropped)

The config comes from the weights (hidden size, depth, MLP size, tubelet and patch size, q/v
biases, final norm vs fc_norm), ViT defaults for the head count (384 -> 6, 768 -> 12, 1024 -> 16,
1280 -> 16), layer_norm_eps 1e-6 (the original models' LayerNorm eps), image_size 224 and
num_frames 16 unless `config_overrides` says otherwise (or pos_embed pins the token count). An
image processor (short side resize + centre crop to image_size, ImageNet mean/std -- the
original fine-tuning/test transform) is saved beside the weights.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError

HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DROPPED = ("decoder", "encoder_to_decoder", "mask_token")

__all__ = ["convert", "convert_state_dict", "to_original", "load_original"]


def load_original(ckpt_path: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The model state dict of an original checkpoint (under 'model' or 'module' when wrapped).

    Loaded with torch's weights-only unpickler (tensors, containers and the argparse.Namespace that
    the original training scripts store under 'args'); `trust_pickle=True` allows any pickled object
    (it runs code from the file: only for checkpoints you trust).
    """
    import argparse

    import torch

    if not Path(ckpt_path).is_file():
        raise FeatstoreError(f"videomae convert: no checkpoint file at {ckpt_path}")
    try:
        if trust_pickle:
            obj = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = "" if trust_pickle else "; if you trust the file, pass trust_pickle=True"
        raise FeatstoreError(f"videomae convert: cannot read {ckpt_path} ({str(exc).splitlines()[0][:160]}){hint}") from None
    for key in ("model", "module", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise FeatstoreError(f"videomae convert: {ckpt_path} holds no state dict")
    return dict(obj)


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k.startswith(DROPPED):
            continue
        for prefix in ("encoder.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        out[k] = v
    return out


def infer_config(state: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Any:
    """A VideoMAEConfig from the (stripped) original weights plus overrides."""
    from transformers import VideoMAEConfig

    if "patch_embed.proj.weight" not in state:
        raise FeatstoreError("videomae convert: no patch_embed.proj.weight: not an original VideoMAE checkpoint")
    d, channels, tubelet, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    cfg: dict[str, Any] = {
        "hidden_size": int(d), "num_channels": int(channels), "tubelet_size": int(tubelet), "patch_size": int(patch),
        "num_hidden_layers": depth, "num_attention_heads": HEADS.get(int(d), max(1, int(d) // 64)),
        "intermediate_size": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
        "qv_bias": "blocks.0.attn.q_bias" in state, "use_mean_pooling": "norm.weight" not in state,
        "layer_norm_eps": 1e-6, "image_size": 224, "num_frames": 16,
    }
    if "head.weight" in state:
        cfg["num_labels"] = int(state["head.weight"].shape[0])
    overrides = dict(overrides or {})
    cfg.update(overrides)
    if "pos_embed" in state:   # the token count pins image_size (at the given num_frames)
        n_tokens = int(state["pos_embed"].shape[-2])
        per_frame = n_tokens // max(1, cfg["num_frames"] // cfg["tubelet_size"])
        if "image_size" not in overrides:
            cfg["image_size"] = math.isqrt(per_frame) * cfg["patch_size"]
        expected = (cfg["num_frames"] // cfg["tubelet_size"]) * (cfg["image_size"] // cfg["patch_size"]) ** 2
        if n_tokens != expected:
            raise FeatstoreError(f"videomae convert: pos_embed has {n_tokens} tokens but image_size "
                                 f"{cfg['image_size']} and num_frames {cfg['num_frames']} give {expected}")
    return VideoMAEConfig(**cfg)


def convert_state_dict(state: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Original (stripped or not) keys -> VideoMAEModel / VideoMAEForVideoClassification keys."""
    import torch
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    state = _strip(state)
    head = "head.weight" in state
    base = "videomae." if head else ""
    d = config.hidden_size
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k == "pos_embed":
            table = get_sinusoid_encoding_table(v.shape[-2], v.shape[-1])
            if v.shape != table.shape or not torch.allclose(v.float(), table.float(), atol=1e-4):
                raise FeatstoreError("videomae convert: the checkpoint has learned position embeddings; "
                                     "transformers' VideoMAEModel only has the fixed sinusoid table")
            continue
        if k.startswith("patch_embed.proj."):
            out[base + "embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
            continue
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m:
            n, rest = m.groups()
            p = f"{base}encoder.layer.{n}."
            if rest == "attn.qkv.weight":
                q, kk, vv = v[:d], v[d:2 * d], v[2 * d:]
                out[p + "attention.attention.query.weight"] = q
                out[p + "attention.attention.key.weight"] = kk
                out[p + "attention.attention.value.weight"] = vv
            elif rest == "attn.qkv.bias":    # timm-style full bias: the key bias must be zero to fit
                q, kk, vv = v[:d], v[d:2 * d], v[2 * d:]
                if kk.abs().max() > 0:
                    raise FeatstoreError("videomae convert: a non-zero key bias has no place in VideoMAEModel")
                out[p + "attention.attention.query.bias"] = q
                out[p + "attention.attention.value.bias"] = vv
            elif rest in ("attn.q_bias", "attn.v_bias"):
                out[p + ("attention.attention.query.bias" if rest.endswith("q_bias") else "attention.attention.value.bias")] = v
            else:
                names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
                         "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
                mod, _, leaf = rest.rpartition(".")
                if mod not in names:
                    raise FeatstoreError(f"videomae convert: unknown key {k}")
                out[p + names[mod] + "." + leaf] = v
            continue
        if k.startswith("norm."):
            out[base + "layernorm." + k.split(".", 1)[1]] = v
        elif k.startswith("fc_norm."):
            out["fc_norm." + k.split(".", 1)[1]] = v
        elif k.startswith("head."):
            out["classifier." + k.split(".", 1)[1]] = v
        else:
            raise FeatstoreError(f"videomae convert: unknown key {k}")
    return out


def to_original(hf_state: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """The inverse mapping: VideoMAEModel keys -> original keys (used by the tests to make checkpoints)."""
    import torch

    out: dict[str, Any] = {}
    layers: dict[str, dict[str, Any]] = {}
    for k, v in hf_state.items():
        k = k[len("videomae."):] if k.startswith("videomae.") else k
        if k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("encoder.layer."):
            n, rest = re.match(r"encoder\.layer\.(\d+)\.(.+)$", k).groups()
            layers.setdefault(n, {})[rest] = v
        elif k.startswith("layernorm."):
            out["norm." + k.split(".", 1)[1]] = v
        elif k.startswith("fc_norm."):
            out[k] = v
        elif k.startswith("classifier."):
            out["head." + k.split(".", 1)[1]] = v
    names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    for n, parts in layers.items():
        p = f"blocks.{n}."
        out[p + "attn.qkv.weight"] = torch.cat([parts["attention.attention.query.weight"],
                                                parts["attention.attention.key.weight"],
                                                parts["attention.attention.value.weight"]])
        if "attention.attention.query.bias" in parts:
            out[p + "attn.q_bias"] = parts["attention.attention.query.bias"]
            out[p + "attn.v_bias"] = parts["attention.attention.value.bias"]
        for rest, v in parts.items():
            mod, _, leaf = rest.rpartition(".")
            if mod in names:
                out[p + names[mod] + "." + leaf] = v
    return out


def convert(ckpt_path: str | Path, out_dir: str | Path, config_overrides: Mapping[str, Any] | None = None, *,
            trust_pickle: bool = False) -> Path:
    """Convert an original VideoMAE checkpoint to a transformers folder (weights, config, image processor).

    Returns out_dir. `config_overrides` sets VideoMAEConfig fields the weights cannot tell (image_size,
    num_frames, num_attention_heads, ...). See load_original for `trust_pickle`.
    """
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor, VideoMAEModel

    raw = load_original(ckpt_path, trust_pickle=trust_pickle)
    state = _strip(raw)
    config = infer_config(state, config_overrides)
    new = convert_state_dict(state, config)
    cls = VideoMAEForVideoClassification if "classifier.weight" in new else VideoMAEModel
    model = cls(config)
    result = model.load_state_dict(new, strict=False)
    missing = [k for k in result.missing_keys]
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise FeatstoreError(f"videomae convert: the weights do not fit the inferred config ({what}); "
                             f"pass config_overrides")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    VideoMAEImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(out)
    note = {"source": str(Path(ckpt_path).name), "converter": "featstore.encoders.videomae_convert",
            "class": cls.__name__, "n_tensors": len(new),
            "dropped": sorted({k.split(".")[0] for k in raw if _strip({k: None}) == {}})}
    (out / "featstore_conversion.json").write_text(json.dumps(note, indent=1))
    return out
