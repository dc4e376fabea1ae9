"""Family `hf-vision`: image encoders run on every frame of a clip (CLIP, DINOv2, ViT-style models; EVA-02 via timm).

Input: uint8 RGB frames [F, H, W, 3] per clip (decoded with spec.input frames/fps). Output: float32
[B, L, D], per-frame vectors averaged over the clip's frames (MERTools' UTTERANCE features).

Per clip: face crops first when spec.input['face'] is set (featstore.face; true or {size, margin,
detect_side}) -> the folder's image processor (AutoImageProcessor with the PIL backend, the
processors MERTools ran; frames are handed over as PIL images as MERTools does) -> the model in
chunks of params.frame_batch frames (default 32, MERTools' `split_into_batch`) -> one vector per
frame -> the mean over frames.

Pooling (per frame):
- 'image-features' (CLIP): the projected image embedding, `get_image_features` in MERTools
  (visual_projection(post_layernorm(CLS))); L = 1, layers must be 'last'. A CLIPModel folder is
  loaded as CLIPVisionModelWithProjection (vision tower + projection only; the text tower is
  never loaded), a CLIPVisionModelWithProjection folder as itself; D = projection_dim.
- 'mean' / 'cls' (DINOv2, ViT, data2vec-vision, CLIP's vision tower, ...): hidden states
  (hidden_states[0] = embeddings, [-1] = the last block's output before any final layernorm)
  chosen by spec.layers / layer_reduce, then
  * recipe 'mertools' + 'mean': the SUM over all tokens (CLS, registers and patches) --
    MERTools' DINOv2/data2vec `hidden_states[-1].sum(dim=1)`;
  * recipe 'default' + 'mean': the mean over patch tokens (CLS/register tokens excluded);
  * 'cls': token 0.
  D = the vision tower's hidden size.
- EVA-02 (timm): spec.params.backend 'timm' or a `timm/...` model id. timm needs torchvision,
  which does not load beside the CPU torch build here, so it fails with a one-line error naming
  the extra unless timm imports; with timm, the pooled `num_classes=0` output per frame (L = 1).

Batching: the frames of all clips in a batch are concatenated, run in chunks, and split back per
clip. A frame's vector depends only on that frame (images are resized to one size, no padding),
so a batch gives the same result as one clip at a time (up to float rounding).

Frames (`encode_frames`, frame-level keys): one vector per sampled (face) frame, the per-frame vector
the clip mean averages (the mean of its layers when layers are stacked), in frame order.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from featstore import face as facemod
from featstore.catalog import EncoderSpec
from featstore.encoders import hf_common as hc
from featstore.errors import FeatstoreError, SampleError

DEFAULT_FRAME_BATCH = 32
POOLINGS = ("image-features", "mean", "cls")
TIMM_HINT = ("needs the optional package timm (pip install timm); timm requires torchvision, whose PyPI "
             "wheels do not load beside the CPU torch build used here, so this encoder is unavailable in "
             "this environment -- bring its features with `featstore import mertools DIR` instead")

__all__ = ["HFVisionEncoder", "TimmVisionEncoder", "build", "clip_frames", "frames_unavailable"]


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """Every hf-vision entry keeps one vector per sampled frame (None)."""
    return None


# ---------------------------------------------------------------------------------------------- shared

def clip_frames(x: Any, i: int) -> np.ndarray:
    """Validate one clip: uint8 [F, H, W, 3] with F >= 1 (ValueError naming the batch item otherwise)."""
    a = np.asarray(x)
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] == 0:
        raise ValueError(f"visual encoder: batch item {i}: expected frames [F, H, W, 3] with F >= 1, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"visual encoder: batch item {i}: expected uint8 frames, got {a.dtype}")
    return x if isinstance(x, facemod.FaceCrops) else a


class _FrameEncoder:
    """Face step, frame batching and the mean over frames; subclasses turn frames into [n, L, D] vectors."""

    spec: EncoderSpec
    face: dict[str, Any] | None
    frame_batch: int

    def prepare(self, frames: np.ndarray, sample_id: str) -> np.ndarray:
        """Face crops of one clip (SampleError(sample_id, 'face', ...) when none is found); frames when face is off."""
        if self.face is None or isinstance(frames, facemod.FaceCrops):
            return frames
        return facemod.crop_faces(frames, sample_id, size=self.face["size"], margin=self.face["margin"],
                                  detect_side=self.face["detect_side"])

    def _clip(self, x: Any, i: int) -> np.ndarray:
        frames = clip_frames(x, i)
        try:
            return np.asarray(self.prepare(frames, f"batch item {i}"))
        except SampleError as exc:  # no sample id here: a plain error lets the build bisect to the culprit
            raise FeatstoreError(f"face: {exc.cause}") from None

    def _frame_vectors(self, frames: list[np.ndarray]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Clips in, float32 [B, L, D] out: the mean over each clip's frames of the per-frame vectors."""
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Clips in: (float32 [B, L, D] as `encode`, per clip its per-frame vectors [F_i, D], layers averaged)."""
        out, frames = self._encode(batch, frames=True)
        return out, frames or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        import torch

        if not batch:
            return np.zeros((0, self.spec.n_stored_layers, self.spec.dim), np.float32), [] if frames else None
        clips = [self._clip(x, i) for i, x in enumerate(batch)]
        flat = [f for c in clips for f in c]
        with self._lock, torch.inference_mode():
            parts = [self._frame_vectors(flat[s:s + self.frame_batch]).float().cpu()
                     for s in range(0, len(flat), self.frame_batch)]
        vecs = torch.cat(parts)                                      # [sum F, L, D]
        out = np.empty((len(clips), vecs.shape[1], vecs.shape[2]), np.float32)
        seqs: list[np.ndarray] | None = [] if frames else None
        start = 0
        for i, c in enumerate(clips):
            out[i] = vecs[start:start + len(c)].mean(dim=0).numpy()
            if seqs is not None:
                seqs.append(vecs[start:start + len(c)].mean(dim=1).numpy())
            start += len(c)
        return out, seqs


# ---------------------------------------------------------------------------------------------- transformers

class HFVisionEncoder(_FrameEncoder):
    """Frames in, float32 [B, L, D] out through a transformers vision model (see the module docstring)."""

    def __init__(self, spec: EncoderSpec, path_or_id: str, revision: str | None, model: Any, processor: Any,
                 device: str, dtype: Any, patch_size: int | None) -> None:
        self.spec, self.path_or_id, self.revision = spec, path_or_id, revision
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.patch_size = patch_size
        self.face = facemod.face_options(spec.input.get("face"), default_size=_processor_size(processor))
        self.frame_batch = max(1, int(spec.params.get("frame_batch", DEFAULT_FRAME_BATCH)))
        self._lock = threading.Lock()
        self._provenance: dict[str, Any] | None = None

    def _pixels(self, frames: list[np.ndarray]) -> Any:
        from PIL import Image

        images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
        return self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)

    def _frame_vectors(self, frames: list[np.ndarray]) -> Any:
        """[n frames] -> [n, L, D] float32 (per the spec's pooling, layers and recipe)."""
        px = self._pixels(frames)
        spec = self.spec
        with hc.autocast(self.device, self.dtype):
            if spec.pooling == "image-features":
                return self.model(pixel_values=px).image_embeds.float()[:, None, :]
            hidden = self.model(pixel_values=px, output_hidden_states=True).hidden_states
        layers = hc.select_layers(hidden, spec)                      # [n, L, T, D]
        if spec.pooling == "cls":
            return layers[:, :, 0]
        if spec.recipe == "mertools":
            return layers.sum(dim=2)
        n_prefix = self._n_prefix(layers.shape[2], px)
        return layers[:, :, n_prefix:].mean(dim=2)

    def _n_prefix(self, tokens: int, px: Any) -> int:
        """Tokens before the patch tokens (CLS, registers): all tokens minus (H / patch) x (W / patch)."""
        if not self.patch_size:
            return 1
        patches = (px.shape[-2] // self.patch_size) * (px.shape[-1] // self.patch_size)
        return max(0, min(tokens - 1, tokens - patches))

    def provenance(self) -> dict[str, Any]:
        """Resolved model (path/id, commit, weights sha256), processor, recipe, face pipeline, versions."""
        if self._provenance is None:
            self._provenance = hc.hf_provenance(
                self.spec, self.path_or_id, self.model, self.revision,
                model_type=getattr(self.model.config, "model_type", None), model_class=type(self.model).__name__,
                image_processor=type(self.processor).__name__, frame_batch=self.frame_batch,
                pooling=self.spec.pooling, face=facemod.face_provenance(self.face),
                compute_dtype=str(self.dtype).replace("torch.", ""))
        return dict(self._provenance)


def _processor_size(processor: Any) -> int:
    """The square side the processor feeds the model (crop size, else resize size), default 224."""
    for attr in ("crop_size", "size"):
        v = getattr(processor, attr, None)
        if isinstance(v, dict):
            for key in ("height", "shortest_edge", "width"):
                if v.get(key):
                    return int(v[key])
        elif isinstance(v, int) and v:
            return v
        elif v is not None:
            for key in ("height", "shortest_edge", "width"):
                if getattr(v, key, None):
                    return int(getattr(v, key))
    return facemod.DEFAULT_SIZE


def load_image_processor(spec: EncoderSpec, model: str | None) -> Any:
    """The folder's image processor with the PIL backend (deterministic with or without torchvision)."""
    from transformers import AutoImageProcessor

    return hc.load_pretrained(AutoImageProcessor, spec, model, backend="pil")


def _load_checked(cls: Any, spec: EncoderSpec, model: str | None, where: str, **kw: Any) -> Any:
    """from_pretrained that refuses to run with weights the folder does not have (randomly initialised)."""
    import torch

    net, info = hc.load_pretrained(cls, spec, model, output_loading_info=True, dtype=torch.float32, **kw)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        key = missing[0] if missing else mismatched[0]
        raise FeatstoreError(f"encoder {spec.name}: {where} lacks weights of {cls.__name__} (e.g. {key}); "
                             f"is it the right kind of model for pooling '{spec.pooling}'?")
    return net


def _vision_parts(spec: EncoderSpec, config: Any) -> tuple[Any, dict[str, Any], Any, int]:
    """(model class, from_pretrained kwargs, vision config, output dim) for the spec's pooling."""
    from transformers import AutoModel, CLIPVisionModel, CLIPVisionModelWithProjection

    mt = getattr(config, "model_type", "")
    if spec.pooling == "image-features":
        if mt == "clip":
            vc = config.vision_config
            vc.projection_dim = config.projection_dim
            return CLIPVisionModelWithProjection, {"config": vc}, vc, int(config.projection_dim)
        if mt == "clip_vision_model":
            return CLIPVisionModelWithProjection, {}, config, int(config.projection_dim)
        raise FeatstoreError(f"encoder {spec.name}: pooling 'image-features' needs a CLIP model, not '{mt}'")
    if mt == "clip":
        return CLIPVisionModel, {"config": config.vision_config}, config.vision_config, int(config.vision_config.hidden_size)
    vc = getattr(config, "vision_config", None) or config
    dim = getattr(vc, "hidden_size", None)
    if dim is None:
        raise FeatstoreError(f"encoder {spec.name}: cannot tell the hidden size of a '{mt}' model")
    return AutoModel, {}, vc, int(dim)


def _patch_size(vc: Any) -> int | None:
    p = getattr(vc, "patch_size", None)
    if isinstance(p, (list, tuple)):
        p = p[0]
    return int(p) if p else None


# ---------------------------------------------------------------------------------------------- timm (EVA-02)

def _wants_timm(spec: EncoderSpec, model: str | None) -> bool:
    ref = str(model or spec.model or "")
    return spec.params.get("backend") == "timm" or ref.startswith(("timm/", "hf-hub:timm/"))


def _import_timm(spec: EncoderSpec) -> Any:
    try:
        import timm
        import timm.data
    except Exception:   # ImportError, or torchvision failing to load its CUDA libraries
        raise FeatstoreError(f"encoder {spec.name} {TIMM_HINT}") from None
    return timm


class TimmVisionEncoder(_FrameEncoder):
    """Frames in, float32 [B, 1, D] out through a timm model (`num_classes=0`: its pooled features)."""

    def __init__(self, spec: EncoderSpec, name: str, weights: str | None, model: Any, transform: Any,
                 device: str, dtype: Any) -> None:
        self.spec, self.name, self.weights = spec, name, weights
        self.model, self.transform, self.device, self.dtype = model, transform, device, dtype
        self.face = facemod.face_options(spec.input.get("face"))
        self.frame_batch = max(1, int(spec.params.get("frame_batch", DEFAULT_FRAME_BATCH)))
        self._lock = threading.Lock()

    def _frame_vectors(self, frames: list[np.ndarray]) -> Any:
        import torch
        from PIL import Image

        px = torch.stack([self.transform(Image.fromarray(np.ascontiguousarray(f))) for f in frames]).to(self.device)
        with hc.autocast(self.device, self.dtype):
            return self.model(px).float()[:, None, :]

    def provenance(self) -> dict[str, Any]:
        import timm
        import torch

        return {"family": self.spec.family, "backend": "timm", "model": self.name,
                "weights": ("sha256:" + hc.file_sha256(self.weights)) if self.weights else None,
                "timm": timm.__version__, "torch": torch.__version__, "face": facemod.face_provenance(self.face)}


def _build_timm(spec: EncoderSpec, model: str | None, device: str, dtype: str | None) -> TimmVisionEncoder:
    from pathlib import Path

    timm = _import_timm(spec)
    ref = str(model or spec.model or "")
    name = str(spec.params.get("timm_name") or ref.split("timm/", 1)[-1])
    weights: str | None = None
    local = Path(ref).expanduser()
    if local.is_dir() or local.is_file():
        f = local / "model.safetensors" if local.is_dir() else local
        if not f.is_file():
            raise FeatstoreError(f"encoder {spec.name}: no model.safetensors in {local}")
        weights = str(f)
        if not spec.params.get("timm_name"):
            raise FeatstoreError(f"encoder {spec.name}: a local timm weights file needs params.timm_name")
    try:
        kw: dict[str, Any] = {"pretrained": True, "num_classes": 0}
        if weights:
            kw["pretrained_cfg_overlay"] = {"file": weights}
        net = timm.create_model(name, **kw)
    except Exception as exc:
        raise hc.offline_error(spec, name) if not weights else FeatstoreError(
            f"encoder {spec.name}: cannot load timm model {name} ({hc.first_line(exc)})") from None
    cfg = timm.data.resolve_model_data_config(net)
    transform = timm.data.create_transform(**cfg, is_training=False)
    if getattr(net, "num_features", spec.dim) != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: timm model {name} gives dim {net.num_features} but the catalog "
                             f"says {spec.dim}")
    net.eval().to(device)
    return TimmVisionEncoder(spec, name, weights, net, transform, device, hc.compute_dtype(spec, device, dtype))


# ---------------------------------------------------------------------------------------------- build

def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu", *,
          dtype: str | None = None) -> HFVisionEncoder | TimmVisionEncoder:
    """Load an hf-vision encoder for a catalog entry.

    spec.model (overridden by `model`): a local folder or a hub id in the local HF cache (downloaded
    only when the hub is reachable); `timm/<name>` (or params.backend 'timm') for timm models.
    spec.input: frames/fps (decoding), face (crop faces first). spec.params: frame_batch (frames per
    forward, default 32), dtype (CUDA compute dtype).
    """
    if spec.modality != "visual":
        raise FeatstoreError(f"encoder {spec.name}: family hf-vision needs modality visual, not {spec.modality}")
    if spec.pooling not in POOLINGS:
        raise FeatstoreError(f"encoder {spec.name}: family hf-vision pools with {', '.join(POOLINGS)}, "
                             f"not '{spec.pooling}'")
    if _wants_timm(spec, model):
        return _build_timm(spec, model, device, dtype)
    from transformers import AutoConfig

    if spec.pooling == "image-features" and spec.n_stored_layers != 1:
        raise FeatstoreError(f"encoder {spec.name}: pooling 'image-features' gives one vector per frame (L = 1); "
                             f"use layers: last")
    path_or_id, revision = hc.resolve_model(spec, model)
    config = hc.load_pretrained(AutoConfig, spec, model)
    cls, kw, vc, dim = _vision_parts(spec, config)
    if dim != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: the model in {path_or_id} gives dim {dim} for pooling "
                             f"'{spec.pooling}' but the catalog says dim {spec.dim}")
    net = _load_checked(cls, spec, model, path_or_id, **kw)
    processor = load_image_processor(spec, model)
    net.eval().to(device)
    return HFVisionEncoder(spec, path_or_id, revision, net, processor, device,
                           hc.compute_dtype(spec, device, dtype), _patch_size(vc))
