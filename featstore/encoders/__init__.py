"""Encoders: one contract (prepared inputs in, [B, L, D] float32 out), one module per catalog family."""

from __future__ import annotations

import importlib

from featstore.catalog import EncoderSpec
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError


def load_encoder(spec: EncoderSpec, *, model: str | None = None, device: str = "cpu",
                 trust_remote_code: bool = False) -> Encoder:
    """Instantiate the encoder for a catalog entry (family -> module featstore.encoders.<family>)."""
    if spec.family == "import-only":
        raise FeatstoreError(f"encoder {spec.name} is import-only: there is no loader here; bring its features "
                             f"with `featstore import mertools DIR` or `featstore import hdf5 FILE`")
    if spec.trust_remote_code and not trust_remote_code:
        raise FeatstoreError(f"encoder {spec.name} runs code from the model hub; pass --trust-remote-code to opt in")
    module_name = f"featstore.encoders.{spec.family.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise FeatstoreError(f"encoder {spec.name}: family '{spec.family}' has no loader yet ({module_name})") from None
        raise
    return module.build(spec, model=model, device=device)
