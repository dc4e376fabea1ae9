"""benchmarks/trainer_speed.py's upper bounds on the grid's FLOP share (RESULTS.md and #4's note rest on them):
the arithmetic of `grid_bounds` on hand-made parts, and `bmm_rates` measuring every shape it is given."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("trainer_speed", ROOT / "benchmarks" / "trainer_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid(parts: dict[str, float]) -> dict:
    return {"train_flops": 6e12, "eval_flops": 1e12, "data_flops": 4e12, "data_bytes": 0.75e12, "parts": parts,
            "shape_flops": {"data": {"1024x64": 1e12, "5120x256": 3e12}, "trunk": {"64": 0.5e12, "256": 1.5e12}}}


def test_the_bounds_follow_their_definitions(speed) -> None:
    g = grid({"data_s": 40.0, "trunk_s": 20.0, "eval_s": 10.0})
    matmul = 100e9
    vendor = {"data": {"1024x64": 50e9, "5120x256": 75e9}, "trunk": {"64": 50e9, "256": 75e9}}
    b = speed.grid_bounds(g, matmul, bandwidth=15e9, vendor=vendor)
    assert b["kernels"] == pytest.approx(6e12 / 70.0 / matmul)
    # the data layers: 4e12 FLOP / 0.75e12 bytes x 15 GB/s = 80 GFLOP/s (under the matmul rate); the rest at 100
    assert b["data_roofline_rate"] == pytest.approx(80e9)
    assert b["roofline"] == pytest.approx(6e12 / (4e12 / 80e9 + 3e12 / matmul) / matmul)
    # every product at its shape's rate: 20 + 40 + 10 + 20 s, evaluation 10 s at the matmul rate
    assert b["vendor"] == pytest.approx(6e12 / 100.0 / matmul)
    fast = speed.grid_bounds(g, matmul, bandwidth=1e15, vendor=None)
    assert fast["data_roofline_rate"] == matmul and "vendor" not in fast      # the roofline caps at the matmul
    faster = {part: {k: 2 * r for k, r in by.items()} for part, by in vendor.items()}
    assert speed.grid_bounds(g, matmul, 15e9, faster)["vendor"] > b["vendor"]


def test_bmm_rates_measures_every_shape_of_the_grid(speed) -> None:
    shapes = {"data": {"48x16": 1, "32x32": 1}, "trunk": {"16": 1}}
    rates = speed.bmm_rates(shapes, threads=1, models=(2, 3), repeats=2)
    assert {part: set(by) for part, by in rates.items()} == {"data": {"48x16", "32x32"}, "trunk": {"16"}}
    assert all(r > 0 for by in rates.values() for r in by.values())
