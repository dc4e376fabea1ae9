"""Find the module that implements a catalog name: `hf-audio` -> featstore.encoders.hf_audio, `demo` -> featstore.datasets.demo."""

from __future__ import annotations

import importlib
from types import ModuleType

from featstore.errors import FeatstoreError


def plugin_module(package: str, name: str, what: str) -> ModuleType:
    """Import `<package>.<name with - as _>`; a missing module fails naming `what` (no hand-kept registry)."""
    module_name = f"{package}.{name.replace('-', '_')}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise FeatstoreError(f"{what} '{name}' is not implemented ({module_name})") from None
        raise
