"""Encoders: one contract (prepared inputs in, [B, L, D] float32 out), one module per catalog family.

Frame-level builds (spec.seq_cap set) also need the family's `encode_frames` and its module-level
`frames_unavailable(spec) -> str | None` (None: this entry can give frames; else why not). A family module
without that function gives no frames; `check_frames` refuses such a build at its start, naming the encoder.
"""

from __future__ import annotations

from featstore.catalog import EncoderSpec
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError
from featstore.plugins import plugin_module


def _family_module(spec: EncoderSpec):  # noqa: ANN202 - a module
    return plugin_module("featstore.encoders", spec.family, f"encoder {spec.name}: family")


def check_frames(spec: EncoderSpec) -> None:
    """For a frame-level spec (seq_cap set), fail in one line naming the encoder when its family or entry has
    no frame/token-level features; a no-op for utterance-level specs. Loads no model."""
    if not spec.seq_cap or spec.family == "import-only":
        return          # import-only entries are refused by load_encoder with their own message
    reason_of = getattr(_family_module(spec), "frames_unavailable", None)
    reason = f"family {spec.family} gives no frame-level features" if reason_of is None else reason_of(spec)
    if reason:
        raise FeatstoreError(f"encoder {spec.name}: {reason}; build it at utterance level (without --level frame)")


def load_encoder(spec: EncoderSpec, *, model: str | None = None, device: str = "cpu",
                 trust_remote_code: bool = False) -> Encoder:
    """Instantiate the encoder for a catalog entry (family -> module featstore.encoders.<family>)."""
    if spec.family == "import-only":
        raise FeatstoreError(f"encoder {spec.name} is import-only: there is no loader here; bring its features "
                             f"with `featstore import mertools DIR` or `featstore import hdf5 FILE`")
    if spec.trust_remote_code and not trust_remote_code:
        raise FeatstoreError(f"encoder {spec.name} runs code from the model hub; pass --trust-remote-code to opt in")
    check_frames(spec)
    enc = _family_module(spec).build(spec, model=model, device=device)
    if spec.seq_cap and not callable(getattr(enc, "encode_frames", None)):
        raise FeatstoreError(f"encoder {spec.name}: its loader has no encode_frames, so it gives no frame-level "
                             f"features; build it at utterance level (without --level frame)")
    return enc
