"""Family `hf-audio`: HuBERT, wav2vec 2.0, WavLM, data2vec-audio and Whisper through transformers.

Input: float32 mono waveforms at 16 kHz. Output: float32 [B, L, D], the chosen hidden layers
(spec.layers / layer_reduce) averaged over the real frames of each clip.

wav2vec 2.0 / HuBERT / WavLM / data2vec-audio
- The folder's feature extractor (or Wav2Vec2FeatureExtractor defaults when the folder has none)
  normalises each clip on its own (do_normalize: zero mean, unit variance over the clip's own samples;
  never over padding, because clips are normalised one by one before any padding).
- Frame masks come from the model's own conv arithmetic (`_get_feat_extract_output_lengths`), so
  frames made from padding never enter the mean.
- `feat_extract_norm == 'group'` models (base wav2vec2/HuBERT/WavLM, HF's default config) apply a
  GroupNorm over the time axis of the first conv layer, padding included: their outputs depend on how
  much padding a batch adds. data2vec-audio has the same problem for another reason (a stack of
  positional convs carries padding into the last real frames). For them, `encode` runs sub-batches of
  windows of *equal length* (no padding, no attention mask) -- exact, but clips of different lengths
  then run one by one. wav2vec2/HuBERT/WavLM with `feat_extract_norm == 'layer'` (the large,
  stable-layer-norm variants) are padded with an attention mask, which they honour exactly.
- Long clips are cut into windows whose frames are pooled together (sum over frames / frame count
  = the mean of the concatenated frames):
  * recipe `mertools` (MERTools MER2024/MERBench extract_audio_huggingface.py `split_into_batch`):
    a clip longer than window_s (default 10 s) is zero-padded to a multiple of window_s and cut into
    full windows; every frame of every window counts, including those of the zero tail -- exactly
    what MERTools averages. window_s 0 turns windows off (MER2023's extract_transformers_embedding.py).
  * recipe `default`: ceil(len / window_s) balanced windows (default window_s 30 s), real frames only.
  Clips shorter than the conv receptive field (400 samples for the standard front end) are
  zero-padded up to it, so they give one frame instead of an error; empty clips raise ValueError.

Whisper
- recipe `mertools` (MERTools extract_audio_huggingface.py, WHISPER_* branch): the feature extractor
  pads/truncates each clip to 30 s (only the first 30 s count), `WhisperModel(input_features,
  decoder_input_ids=[[start, start]])` with two decoder-start tokens, and the feature is the mean over
  those 2 decoder positions of the decoder's last hidden state (spec.layers picks decoder hidden
  states; 'last' is MERTools').
- recipe `default`: encoder hidden states of each <=30 s window (padded to 30 s as Whisper requires),
  pooled over the frames of real audio only: ceil(samples / hop) mel frames -> the encoder's conv
  output length. Longer clips run in balanced windows of at most 30 s.

Frames (`encode_frames`, frame-level keys): the encoder's output frames that the utterance mean pools --
the same layers and layer sum/mean (their mean when layers are stacked), frames made from padding left
out -- with the windows of a clip concatenated in time order (about 50 frames a second). Recipe
`mertools` keeps only the frames of real audio of its zero-padded last window (its utterance mean counts
the zero tail's frames as MERTools does; a sequence does not). Whisper `default`: its encoder frames of
real audio per window. Whisper `mertools` pools two decoder positions, not frames: it has none.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from featstore.catalog import EncoderSpec
from featstore.encoders import hf_common as hc
from featstore.errors import FeatstoreError

DEFAULT_SAMPLE_RATE = 16000
# Model types whose outputs for real frames do not depend on padding *when* their conv front end uses
# per-frame LayerNorm (feat_extract_norm 'layer') and an attention mask is passed: the encoder zeroes
# masked frames before its single positional conv, so the conv sees the same zeros as unpadded input.
PADDING_SAFE_TYPES = ("wav2vec2", "hubert", "wavlm")
MERTOOLS_WINDOW_S = 10.0
DEFAULT_WINDOW_S = 30.0
WHISPER_WINDOW_S = 30.0

__all__ = ["HFAudioEncoder", "build"]


class HFAudioEncoder:
    """Waveforms in, float32 [B, L, D] out (see the module docstring for the recipes)."""

    def __init__(self, spec: EncoderSpec, path_or_id: str, revision: str | None, model: Any, feature_extractor: Any,
                 device: str, dtype: Any) -> None:
        self.spec, self.path_or_id, self.revision = spec, path_or_id, revision
        self.model, self.fe, self.device, self.dtype = model, feature_extractor, device, dtype
        self.sample_rate = int(spec.input.get("sample_rate", DEFAULT_SAMPLE_RATE))
        self.is_whisper = getattr(model.config, "model_type", "") == "whisper"
        self.equal_length_batches = not self.is_whisper and not padding_safe(model.config)
        window = spec.input.get("window_s")
        if self.is_whisper:
            self.window_s = min(float(window or WHISPER_WINDOW_S), WHISPER_WINDOW_S)
        elif spec.recipe == "mertools":
            self.window_s = MERTOOLS_WINDOW_S if window is None else float(window)
        else:
            self.window_s = DEFAULT_WINDOW_S if window is None else float(window)
        self.min_samples = 1 if self.is_whisper else _receptive_field(model.config)
        self._provenance: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ public

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Encode a batch of waveforms -> float32 [B, L, D] pooled over each clip's real frames."""
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Waveforms -> (float32 [B, L, D] as `encode`, per clip its frames [T_i, D]; see the module docstring)."""
        if self.is_whisper and self.spec.recipe == "mertools":
            raise FeatstoreError(frames_unavailable(self.spec, whisper=True) or "")
        utt, frames = self._encode(batch, frames=True)
        return utt, frames or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        import torch

        if not batch:
            empty = np.zeros((0, self.spec.n_stored_layers, self.spec.dim), dtype=np.float32)
            return empty, [] if frames else None
        waves = [_mono(x, i) for i, x in enumerate(batch)]
        seqs = None
        with torch.inference_mode(), hc.autocast(self.device, self.dtype):
            if self.is_whisper and self.spec.recipe == "mertools":
                out = self._whisper_mertools(waves)
            elif self.is_whisper:
                out, seqs = self._whisper_default(waves, frames)
            else:
                out, seqs = self._ssl(waves, frames)
        return out.float().cpu().numpy().astype(np.float32, copy=False), seqs

    def provenance(self) -> dict[str, Any]:
        """Resolved model (path/id, commit, weights sha256), recipe details, package versions."""
        if self._provenance is None:
            self._provenance = hc.hf_provenance(
                self.spec, self.path_or_id, self.model, self.revision,
                model_type=getattr(self.model.config, "model_type", None),
                window_s=self.window_s, equal_length_batches=self.equal_length_batches,
                feature_extractor=type(self.fe).__name__,
                do_normalize=bool(getattr(self.fe, "do_normalize", False)),
                compute_dtype=str(self.dtype).replace("torch.", ""))
        return dict(self._provenance)

    # ------------------------------------------------------------------------------------------ ssl models

    def _windows(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Windows of one (already normalised) clip, per the recipe, each with its samples of real audio."""
        w = int(round(self.window_s * self.sample_rate)) if self.window_s and self.window_s > 0 else 0
        if len(x) < self.min_samples:
            x = np.pad(x, (0, self.min_samples - len(x)))
        if not w or len(x) <= w:
            return [(x, len(x))]
        if self.spec.recipe == "mertools":           # zero-pad to a multiple of w, full windows, all frames count
            n = math.ceil(len(x) / w)
            real = [min(w, len(x) - k * w) for k in range(n)]
            return list(zip(np.pad(x, (0, n * w - len(x))).reshape(n, w), real))
        return [(p, len(p)) for p in np.array_split(x, math.ceil(len(x) / w)) if len(p)]

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        """The feature extractor on one clip alone (so do_normalize sees the clip's own samples only)."""
        values = self.fe(x, sampling_rate=self.sample_rate, return_tensors="np").input_values
        return np.asarray(values, dtype=np.float32).reshape(-1)

    def _ssl(self, waves: list[np.ndarray], frames: bool = False) -> tuple[Any, list[np.ndarray] | None]:
        import torch

        jobs: list[tuple[int, np.ndarray]] = []
        real: list[int] = []
        for i, x in enumerate(waves):
            for win, n_real in self._windows(self._normalise(x)):
                jobs.append((i, win))
                real.append(n_real)
        sums = torch.zeros(len(waves), self.spec.n_stored_layers, self.spec.dim, dtype=torch.float32)
        counts = torch.zeros(len(waves), dtype=torch.float32)
        job_frames: list[Any] = [None] * len(jobs)
        budget = max(sum(len(x) for x in waves), max(len(j[1]) for j in jobs))
        for group in _sub_batches([len(j[1]) for j in jobs], budget, equal_only=self.equal_length_batches):
            lengths = [len(jobs[k][1]) for k in group]
            t_max = max(lengths)
            values = np.zeros((len(group), t_max), dtype=np.float32) + float(getattr(self.fe, "padding_value", 0.0))
            for r, k in enumerate(group):
                values[r, :lengths[r]] = jobs[k][1]
            inputs = torch.from_numpy(values).to(self.device)
            kwargs: dict[str, Any] = {"output_hidden_states": True}
            if not self.equal_length_batches:
                sample_mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]
                kwargs["attention_mask"] = sample_mask.long().to(self.device)
            hidden = self.model(inputs, **kwargs).hidden_states
            layers = hc.select_layers(hidden, self.spec)                          # [b, L, T, D]
            n_frames = _frame_lengths(self.model, lengths)
            frame_mask = torch.arange(layers.shape[2])[None, :] < torch.tensor(n_frames)[:, None]
            total, count = hc.masked_sum(layers, frame_mask)
            if frames:      # frames of real audio only: a zero tail (recipe mertools) adds none
                kept = _frame_lengths(self.model, [max(real[k], self.min_samples) for k in group])
                for r, k in enumerate(group):
                    job_frames[k] = layers[r, :, :min(n_frames[r], kept[r])].mean(dim=0).float().cpu()
            for r, k in enumerate(group):
                i = jobs[k][0]
                sums[i] += total[r].float().cpu()
                counts[i] += float(count[r])
        return sums / counts.clamp(min=1)[:, None, None], _per_clip(jobs, job_frames, len(waves)) if frames else None

    # ------------------------------------------------------------------------------------------ whisper

    def _features(self, clips: list[np.ndarray]) -> Any:
        """Log-mel features, each clip padded (or truncated) to Whisper's 30 s: [B, n_mels, 3000]."""
        feats = self.fe(clips, sampling_rate=self.sample_rate, return_tensors="pt").input_features
        return feats.to(self.device)

    def _whisper_mertools(self, waves: list[np.ndarray]) -> Any:
        import torch

        start = self.model.config.decoder_start_token_id
        out = []
        for group in _chunks(len(waves), max(1, int(self.spec.params.get("whisper_batch", 16)))):
            feats = self._features([waves[k] for k in group])
            dec = torch.full((len(group), 2), int(start), dtype=torch.long, device=self.device)
            res = self.model(input_features=feats, decoder_input_ids=dec, output_hidden_states=True, use_cache=False)
            layers = hc.select_layers(res.decoder_hidden_states, self.spec)       # [b, L, 2, D]
            out.append(layers.float().mean(dim=2).cpu())
        return torch.cat(out)

    def _whisper_default(self, waves: list[np.ndarray], frames: bool = False) -> tuple[Any, list[np.ndarray] | None]:
        import torch

        w = int(round(self.window_s * self.sample_rate))
        jobs: list[tuple[int, np.ndarray]] = []
        for i, x in enumerate(waves):
            parts = [x] if len(x) <= w else np.array_split(x, math.ceil(len(x) / w))
            jobs.extend((i, p) for p in parts if len(p))
        hop = int(getattr(self.fe, "hop_length", 160))
        max_frames = int(self.model.config.max_source_positions)
        encoder = self.model.get_encoder()
        sums = torch.zeros(len(waves), self.spec.n_stored_layers, self.spec.dim, dtype=torch.float32)
        counts = torch.zeros(len(waves), dtype=torch.float32)
        job_frames: list[Any] = [None] * len(jobs)
        for group in _chunks(len(jobs), max(1, int(self.spec.params.get("whisper_batch", 16)))):
            feats = self._features([jobs[k][1] for k in group])
            hidden = encoder(feats, output_hidden_states=True).hidden_states
            layers = hc.select_layers(hidden, self.spec)                          # [b, L, 1500, D]
            mel = torch.tensor([math.ceil(len(jobs[k][1]) / hop) for k in group])
            n_frames = self.model._get_feat_extract_output_lengths(mel).clamp(min=1, max=max_frames)
            frame_mask = torch.arange(layers.shape[2])[None, :] < n_frames[:, None]
            total, count = hc.masked_sum(layers, frame_mask)
            for r, k in enumerate(group):
                i = jobs[k][0]
                sums[i] += total[r].float().cpu()
                counts[i] += float(count[r])
                if frames:
                    job_frames[k] = layers[r, :, :int(n_frames[r])].mean(dim=0).float().cpu()
        return sums / counts.clamp(min=1)[:, None, None], _per_clip(jobs, job_frames, len(waves)) if frames else None


# ---------------------------------------------------------------------------------------------- helpers

def _mono(x: Any, i: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"hf-audio encoder: item {i}: expected mono audio [T], got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"hf-audio encoder: item {i}: empty audio")
    if not np.isfinite(a).all():
        raise ValueError(f"hf-audio encoder: item {i}: audio holds NaN/Inf")
    return a


def padding_safe(config: Any) -> bool:
    """True when padded batches (with an attention mask) give the same real-frame outputs as single clips.

    False for group-norm front ends (GroupNorm over time, padding included) and for data2vec-audio
    (a stack of positional convs: after the first one the padded frames are no longer zero and leak
    into the real frames near the end); those models run equal-length sub-batches instead.
    """
    return (getattr(config, "model_type", "") in PADDING_SAFE_TYPES
            and getattr(config, "feat_extract_norm", "layer") == "layer")


def _receptive_field(config: Any) -> int:
    """Samples needed for one output frame of the conv front end (400 for the standard 7-layer stack)."""
    kernels = list(getattr(config, "conv_kernel", ()) or ())
    strides = list(getattr(config, "conv_stride", ()) or ())
    n = 1
    for k, s in reversed(list(zip(kernels, strides))):
        n = (n - 1) * s + k
    return max(n, 1)


def _frame_lengths(model: Any, lengths: list[int]) -> list[int]:
    """Frames the conv front end makes from each input length (the encoder's hidden states, no adapter)."""
    import torch

    t = torch.tensor(lengths, dtype=torch.long)
    fn = getattr(model, "_get_feat_extract_output_lengths", None)
    if fn is None:
        out = t
        for k, s in zip(model.config.conv_kernel, model.config.conv_stride):
            out = torch.div(out - k, s, rounding_mode="floor") + 1
    else:
        try:
            out = fn(t, add_adapter=False)
        except TypeError:
            out = fn(t)
    return [int(v) for v in out]


def frames_unavailable(spec: EncoderSpec, *, whisper: bool = False) -> str | None:
    """Why this entry has no frames (None: it has). Whisper under recipe mertools (known once the model loads)."""
    if whisper and spec.recipe == "mertools":
        return ("recipe mertools pools Whisper's two decoder positions, not audio frames, so it has no frame-level "
                "features (an entry with recipe default keeps Whisper's encoder frames)")
    return None


def _per_clip(jobs: list[tuple[int, np.ndarray]], job_frames: list[Any], n: int) -> list[np.ndarray]:
    """Each clip's window frames concatenated in window order: float32 [T_i, D] per clip."""
    import torch

    parts: list[list[Any]] = [[] for _ in range(n)]
    for (i, _), f in zip(jobs, job_frames):
        parts[i].append(f)
    return [torch.cat(p).numpy().astype(np.float32, copy=False) for p in parts]


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def _sub_batches(lengths: list[int], budget: int, *, equal_only: bool) -> list[list[int]]:
    """Indices grouped for one forward pass each: sorted by length, padded size (n x longest) <= budget.

    With equal_only, a group never mixes lengths (no padding at all).
    """
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    groups: list[list[int]] = []
    cur: list[int] = []
    for k in order:
        full = cur and (len(cur) + 1) * lengths[k] > budget
        new_len = cur and equal_only and lengths[k] != lengths[cur[-1]]
        if full or new_len:
            groups.append(cur)
            cur = []
        cur.append(k)
    if cur:
        groups.append(cur)
    return groups


def _feature_extractor(spec: EncoderSpec, model_override: str | None, config: Any, is_whisper: bool) -> Any:
    """The folder's feature extractor; the standard one (HF defaults) when the folder has none."""
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    cls = WhisperFeatureExtractor if is_whisper else Wav2Vec2FeatureExtractor
    path_or_id, revision = hc.resolve_model(spec, model_override)
    folder = hc.local_folder(path_or_id, revision)
    if folder is not None and not (folder / "preprocessor_config.json").is_file():
        fe = None
    else:
        try:
            fe = hc.load_pretrained(AutoFeatureExtractor, spec, model_override)
        except FeatstoreError:
            fe = None
    if fe is None:
        if is_whisper:
            fe = WhisperFeatureExtractor(feature_size=int(getattr(config, "num_mel_bins", 80)))
        else:
            layer_norm = getattr(config, "feat_extract_norm", "layer") == "layer"
            fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=DEFAULT_SAMPLE_RATE, padding_value=0.0,
                                          do_normalize=True, return_attention_mask=layer_norm)
    if not isinstance(fe, cls):
        raise FeatstoreError(f"encoder {spec.name}: expected a {cls.__name__} in {path_or_id}, "
                             f"found {type(fe).__name__}")
    return fe


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu", *,
          dtype: str | None = None) -> HFAudioEncoder:
    """Load an hf-audio encoder for a catalog entry.

    spec.model (overridden by `model`): a local folder or a hub id in the local HF cache (downloaded
    only when the hub is reachable). spec.input: sample_rate (16000), window_s (see the module
    docstring). spec.params: dtype (CUDA compute dtype, default bfloat16; CPU is always float32),
    whisper_batch (windows per Whisper forward, default 16). `dtype` overrides spec.params['dtype'].
    """
    if spec.modality != "audio":
        raise FeatstoreError(f"encoder {spec.name}: family hf-audio needs modality audio, not {spec.modality}")
    if spec.pooling != "mean":
        raise FeatstoreError(f"encoder {spec.name}: family hf-audio pools with 'mean' only, not '{spec.pooling}'")
    import torch
    from transformers import AutoModel

    path_or_id, revision = hc.resolve_model(spec, model)
    net = hc.load_pretrained(AutoModel, spec, model, dtype=torch.float32)
    config = net.config
    is_whisper = getattr(config, "model_type", "") == "whisper"
    if not is_whisper and not hasattr(config, "conv_kernel"):
        raise FeatstoreError(f"encoder {spec.name}: {path_or_id} is a '{getattr(config, 'model_type', '?')}' model, "
                             f"not a wav2vec2-style or Whisper audio model")
    hc.check_dim(spec, config, path_or_id)
    fe = _feature_extractor(spec, model, config, is_whisper)
    rate = int(spec.input.get("sample_rate", DEFAULT_SAMPLE_RATE))
    if int(getattr(fe, "sampling_rate", rate)) != rate:
        raise FeatstoreError(f"encoder {spec.name}: the model expects {fe.sampling_rate} Hz audio but the catalog "
                             f"says sample_rate {rate}")
    if spec.seq_cap and is_whisper and frames_unavailable(spec, whisper=True):
        raise FeatstoreError(f"encoder {spec.name}: {frames_unavailable(spec, whisper=True)}; build it at utterance "
                             f"level (without --level frame)")
    if is_whisper and spec.recipe == "mertools" and getattr(config, "decoder_start_token_id", None) is None:
        raise FeatstoreError(f"encoder {spec.name}: recipe mertools needs config.decoder_start_token_id")
    net.eval().to(device)
    return HFAudioEncoder(spec, path_or_id, revision, net, fe, device, hc.compute_dtype(spec, device, dtype))
