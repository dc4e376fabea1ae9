"""Family `hf-video`: VideoMAE over 16-frame segments (transformers VideoMAEModel).

Input: uint8 RGB frames [F, H, W, 3] per clip (decode with spec.input.frames = 16, the model's
num_frames, as MERTools' `resample_frames_uniform` does). Output: float32 [B, L, D].

Per clip: face crops first when spec.input['face'] is set (featstore.face) -> segments of
num_frames frames: F == num_frames gives one; F < num_frames repeats the last frame (MERTools);
F > num_frames gives ceil(F / num_frames) segments whose starts are spread evenly from frame 0
to frame F - num_frames (MERTools' two-segment 'sunlicai' sampling, generalised) -> the folder's
image processor (PIL backend; VideoMAEImageProcessor: resize, centre crop, ImageNet mean/std)
-> the model, params.segment_batch segments per forward (default 8) -> per segment the mean over
all tokens (MERTools: `last_hidden_state.view(T', patches, D).mean(1)` then the mean over T') ->
the mean over the clip's segments.

Layers: the hidden-state list is hidden_states[:-1] + [last_hidden_state], i.e. 'last' is the
model's output after its final layernorm when it has one (pre-training checkpoints,
use_mean_pooling=False) -- what MERTools averages. Pooling 'mean' only.

Original-format checkpoints (MCG-NJU/VideoMAE, MERTools' VoxCeleb2 / MER2023 VideoMAE) convert
once to an HF folder with featstore.encoders.videomae_convert.convert(ckpt, out_dir).

Batching: the segments of all clips are run together and split back; a segment's vector depends
only on its frames, so a batch equals one clip at a time (up to float rounding).

Frames (`encode_frames`, frame-level keys): token groups, one step per tubelet of each segment (VideoMAE
embeds tubelet_size = 2 consecutive frames per token, so a 16-frame segment gives 8 steps): the mean over
that time step's patch tokens (MERTools' `view(T', patches, D).mean(1)`, before its mean over T'; layers
averaged when stacked). Segments follow each other in time order (when F > num_frames they overlap, so
some frames appear in two steps); steps made only of the repeated last frame of a short clip are dropped.
The mean of a segment's steps is its segment vector.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from featstore import face as facemod
from featstore.catalog import EncoderSpec
from featstore.encoders import hf_common as hc
from featstore.encoders.hf_vision import _FrameEncoder, _load_checked, _processor_size, load_image_processor
from featstore.errors import FeatstoreError

DEFAULT_SEGMENT_BATCH = 8

__all__ = ["HFVideoEncoder", "build", "segment_indices", "frames_unavailable"]


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """Every hf-video entry keeps its tubelet time steps (None)."""
    return None


def segment_indices(n_frames: int, clip_len: int) -> list[list[int]]:
    """Frame indices of each clip_len-frame segment of a clip of n_frames frames (see the module docstring)."""
    if n_frames < 1:
        raise ValueError("segment_indices: a clip needs at least one frame")
    if n_frames <= clip_len:
        idx = list(range(n_frames)) + [n_frames - 1] * (clip_len - n_frames)
        return [idx]
    n_seg = math.ceil(n_frames / clip_len)
    step = (n_frames - clip_len) / (n_seg - 1)
    return [list(range(int(k * step), int(k * step) + clip_len)) for k in range(n_seg)]


class HFVideoEncoder(_FrameEncoder):
    """Frames in, float32 [B, L, D] out through VideoMAE (see the module docstring)."""

    def __init__(self, spec: EncoderSpec, path_or_id: str, revision: str | None, model: Any, processor: Any,
                 device: str, dtype: Any) -> None:
        self.spec, self.path_or_id, self.revision = spec, path_or_id, revision
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.clip_len = int(model.config.num_frames)
        self.tubelet = int(getattr(model.config, "tubelet_size", 1) or 1)
        self.face = facemod.face_options(spec.input.get("face"), default_size=_processor_size(processor))
        self.segment_batch = max(1, int(spec.params.get("segment_batch", DEFAULT_SEGMENT_BATCH)))
        self._lock = threading.Lock()
        self._provenance: dict[str, Any] | None = None

    def _segment_vectors(self, segments: list[np.ndarray], steps: bool = False) -> tuple[Any, Any]:
        """[n segments of clip_len frames] -> ([n, L, D]: the mean over all tokens of the chosen layers,
        and with `steps` [n, T', D]: per tubelet time step the mean over its patch tokens and over L)."""
        from PIL import Image

        videos = [[Image.fromarray(np.ascontiguousarray(f)) for f in seg] for seg in segments]
        px = self.processor(videos, return_tensors="pt")["pixel_values"].to(self.device)   # [n, T, 3, H, W]
        with hc.autocast(self.device, self.dtype):
            out = self.model(pixel_values=px, output_hidden_states=True)
        hidden = tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)
        layers = hc.select_layers(hidden, self.spec)                           # [n, L, tokens, D]
        per_step = None
        if steps:
            n, n_layers, tokens, dim = layers.shape
            t_steps = max(1, self.clip_len // self.tubelet)
            if tokens % t_steps:
                raise FeatstoreError(f"encoder {self.spec.name}: {tokens} tokens per segment do not split into "
                                     f"{t_steps} time steps of tubelet {self.tubelet}")
            per_step = layers.reshape(n, n_layers, t_steps, tokens // t_steps, dim).mean(dim=3).mean(dim=1)
        return layers.mean(dim=2), per_step

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Clips in, float32 [B, L, D] out: the mean over each clip's segments (and per clip its steps [T_i, D])."""
        import torch

        if not batch:
            return np.zeros((0, self.spec.n_stored_layers, self.spec.dim), np.float32), [] if frames else None
        clips = [self._clip(x, i) for i, x in enumerate(batch)]
        segments: list[np.ndarray] = []
        owner: list[int] = []
        real_steps: list[int] = []
        for i, c in enumerate(clips):
            for idx in segment_indices(len(c), self.clip_len):
                segments.append(c[idx])
                owner.append(i)
                real_steps.append(math.ceil(min(len(c), self.clip_len) / self.tubelet))
        vec_parts, step_parts = [], []
        with self._lock, torch.inference_mode():
            for s in range(0, len(segments), self.segment_batch):
                vecs_s, steps_s = self._segment_vectors(segments[s:s + self.segment_batch], steps=frames)
                vec_parts.append(vecs_s.float().cpu())
                if frames:
                    step_parts.append(steps_s.float().cpu())
        vecs = torch.cat(vec_parts)
        out = np.zeros((len(clips), vecs.shape[1], vecs.shape[2]), np.float32)
        counts = np.zeros(len(clips))
        for k, i in enumerate(owner):
            out[i] += vecs[k].numpy()
            counts[i] += 1
        seqs = None
        if frames:
            steps = torch.cat(step_parts)
            parts: list[list[np.ndarray]] = [[] for _ in clips]
            for k, i in enumerate(owner):
                parts[i].append(steps[k, :real_steps[k]].numpy())
            seqs = [np.concatenate(p).astype(np.float32, copy=False) for p in parts]
        return (out / counts[:, None, None]).astype(np.float32), seqs

    def provenance(self) -> dict[str, Any]:
        """Resolved model (path/id, commit, weights sha256), segmenting, processor, face pipeline, versions."""
        if self._provenance is None:
            cfg = self.model.config
            self._provenance = hc.hf_provenance(
                self.spec, self.path_or_id, self.model, self.revision,
                model_type=getattr(cfg, "model_type", None), clip_len=self.clip_len,
                tubelet_size=getattr(cfg, "tubelet_size", None), image_size=getattr(cfg, "image_size", None),
                final_layernorm=not getattr(cfg, "use_mean_pooling", False),
                image_processor=type(self.processor).__name__, face=facemod.face_provenance(self.face),
                compute_dtype=str(self.dtype).replace("torch.", ""))
        return dict(self._provenance)


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu", *, dtype: str | None = None) -> HFVideoEncoder:
    """Load an hf-video (VideoMAE) encoder for a catalog entry.

    spec.model (overridden by `model`): a local folder (e.g. made by videomae_convert) or a hub id in
    the local HF cache. spec.input: frames (decode; 16 = one segment), face. spec.params:
    segment_batch (segments per forward, default 8), dtype (CUDA compute dtype).
    """
    if spec.modality != "visual":
        raise FeatstoreError(f"encoder {spec.name}: family hf-video needs modality visual, not {spec.modality}")
    if spec.pooling != "mean":
        raise FeatstoreError(f"encoder {spec.name}: family hf-video pools with 'mean' only, not '{spec.pooling}'")
    from transformers import AutoConfig, VideoMAEModel

    path_or_id, revision = hc.resolve_model(spec, model)
    config = hc.load_pretrained(AutoConfig, spec, model)
    if getattr(config, "model_type", "") != "videomae":
        raise FeatstoreError(f"encoder {spec.name}: {path_or_id} is a '{getattr(config, 'model_type', '?')}' model, "
                             f"not VideoMAE")
    hc.check_dim(spec, config, path_or_id)
    frames = spec.input.get("frames")
    if frames is not None and int(frames) < int(config.num_frames):
        raise FeatstoreError(f"encoder {spec.name}: input.frames {frames} is fewer than the model's "
                             f"{config.num_frames}-frame clips")
    net = _load_checked(VideoMAEModel, spec, model, path_or_id)
    processor = load_image_processor(spec, model)
    net.eval().to(device)
    return HFVideoEncoder(spec, path_or_id, revision, net, processor, device, hc.compute_dtype(spec, device, dtype))
