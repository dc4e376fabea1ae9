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
    """

    spec: EncoderSpec

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Encode a batch; raise featstore.errors.SampleError naming the culprit for per-sample failures."""
        ...

    # Optional: `prepare(x, sample_id) -> x` runs per sample in the decode threads before batching
    # (e.g. face cropping); it raises SampleError naming the sample, so failures are recorded per sample.

    def provenance(self) -> dict[str, Any]:
        """Resolved model identity (path, revision/commit or weights hash) and package versions."""
        ...
