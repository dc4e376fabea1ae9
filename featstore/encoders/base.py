"""The encoder contract shared by every family."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from featstore.catalog import EncoderSpec


class Encoder(Protocol):
    """A loaded encoder.

    `encode` takes a batch of prepared inputs of the encoder's modality -- audio: float32 [T] at
    spec.input['sample_rate']; text: str; visual: uint8 frames [F, H, W, 3] -- and returns float32
    [B, L, D] with L = spec.n_stored_layers and D = spec.dim, pooled over time with padding masked.

    Families that can keep frame/token-level features (for frame-level keys, spec.seq_cap set) also have
    `encode_frames(batch) -> (utt, frames)`: `utt` exactly as `encode` returns it, and `frames` one float32
    [T_i, D] array per batch item: the same per-frame values the utterance vector pools (same layers, the same
    sum/average over them; when L > 1 layers are kept separately, their mean), real frames/tokens only (no
    padding, no added special tokens), in time order. An item with nothing to keep gets a [0, D] array
    (the build records it as a per-sample failure). Batched frames equal one-at-a-time frames within the
    family's utterance tolerance. Such a family's module also defines `frames_unavailable(spec) -> str | None`
    (see featstore.encoders.check_frames); the build pools long sequences to the cap (featstore.sequence).
    """

    spec: EncoderSpec

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Encode a batch; raise featstore.errors.SampleError naming the culprit for per-sample failures."""
        ...

    # Optional: `prepare(x, sample_id) -> x` runs per sample in the decode threads before batching
    # (e.g. face cropping); it raises SampleError naming the sample, so failures are recorded per sample.
    # Optional: `encode_frames(batch) -> (np.ndarray [B, L, D], list[np.ndarray [T_i, D]])`, see above.

    def provenance(self) -> dict[str, Any]:
        """Resolved model identity (path, revision/commit or weights hash) and package versions."""
        ...
