"""Encoders: one contract (prepared inputs in, [B, L, D] float32 out), one module per catalog family."""

from __future__ import annotations

from featstore.catalog import EncoderSpec
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError
from featstore.plugins import plugin_module


def load_encoder(spec: EncoderSpec, *, model: str | None = None, device: str = "cpu",
                 trust_remote_code: bool = False) -> Encoder:
    """Instantiate the encoder for a catalog entry (family -> module featstore.encoders.<family>)."""
    if spec.family == "import-only":
        raise FeatstoreError(f"encoder {spec.name} is import-only: there is no loader here; bring its features "
                             f"with `featstore import mertools DIR` or `featstore import hdf5 FILE`")
    if spec.trust_remote_code and not trust_remote_code:
        raise FeatstoreError(f"encoder {spec.name} runs code from the model hub; pass --trust-remote-code to opt in")
    module = plugin_module("featstore.encoders", spec.family, f"encoder {spec.name}: family")
    return module.build(spec, model=model, device=device)
