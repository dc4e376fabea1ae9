"""Dataset adapters: one module per adapter named in catalog.yaml (`adapter: demo` -> featstore.datasets.demo)."""

from __future__ import annotations

import importlib
from pathlib import Path

from featstore.catalog import Catalog, load_catalog
from featstore.datasets.base import DatasetIndex
from featstore.errors import FeatstoreError


def load_index(dataset: str, root: str | Path, catalog: Catalog | None = None) -> DatasetIndex:
    """Read a dataset release at `root` with the adapter its catalog entry names."""
    spec = (catalog or load_catalog()).dataset(dataset)
    module_name = f"featstore.datasets.{spec.adapter.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise FeatstoreError(f"dataset {dataset}: adapter '{spec.adapter}' is not implemented ({module_name})") from None
        raise
    return module.load(Path(root), spec)
