"""Dataset adapters: one module per adapter named in catalog.yaml (`adapter: demo` -> featstore.datasets.demo)."""

from __future__ import annotations

from pathlib import Path

from featstore.catalog import Catalog, load_catalog
from featstore.datasets.base import DatasetIndex, report_counts
from featstore.plugins import plugin_module


def load_index(dataset: str, root: str | Path, catalog: Catalog | None = None) -> DatasetIndex:
    """Read a dataset release at `root` with the adapter its catalog entry names, and log its counts."""
    spec = (catalog or load_catalog()).dataset(dataset)
    module = plugin_module("featstore.datasets", spec.adapter, f"dataset {dataset}: adapter")
    index = module.load(Path(root), spec)
    report_counts(index, spec)
    return index
