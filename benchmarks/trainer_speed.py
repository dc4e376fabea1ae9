"""Figures: featstore's trainer vs a MERTools-style training loop, side by side in one run (issue #4, item 4).

Data: identical synthetic MER2024-shaped features (trainer.synthetic.make_store): 5,030 train / 1,000 test
rows; acoustic 1024-d, lexical 5120-d, visual 768-d; six imbalanced classes and valence. Both sides read the
same in-memory float32 arrays; loading is not timed. MERTools defaults: attention fusion, hidden 128,
dropout 0.5, lr 1e-4, weight decay 1e-5, batch 32, 5-fold CV.

The MERTools-style side is written here after MERTools' MER2024 `main-release.py`: a per-sample torch
Dataset, a DataLoader (batch 32, shuffled for training), an nn.Module attention model (per-modality
MLPEncoder: dropout then three Linear+ReLU; attention MLP over the concatenated hidden vectors; fc_att
without softmax; weighted sum; emotion and valence heads), Adam, and per epoch: one training pass, an
evaluation pass over the held-out fold and one over the test set (as MERTools stores every epoch's test
outputs); the folds run one after another; the best epoch is chosen by held-out WAF.

Figures:
  a) speed: wall time of one 5-fold experiment, at the same thread count, MERTools-style vs featstore
     (`run_experiment`); passes interleaved A B A B and the median of each side taken. Where trainer.native's
     kernel is loaded, featstore also runs on the PyTorch path alone (FEATSTORE_NATIVE=0) as a third side.
  b) parity: held-out CV WAF and test WAF of both at --parity-epochs (100 by default).
  c) FLOP rate of a 50-config grid through run_experiment: FLOPs of one training step per model counted with
     torch.utils.flop_counter (forward + backward, batch 32) times the steps taken, plus the forward FLOPs
     of the per-epoch selection passes and the final test passes, over wall time; compared with the rate
     of a 4096 x 4096 fp32 matmul at the same thread count, measured in the same run. The same run says where
     the grid's wall time went (the data layers' native passes, the attention trunk, the rest of the training
     steps, the selection and test passes, the models' set-up) and gives three upper bounds on the share: with
     everything but the data-layer passes, the trunk and the evaluation passes free; and with the data-layer
     passes at their roofline (a float32 Adam step moves 24 bytes of w, m and v a parameter for 4 x 32 FLOPs:
     min(matmul rate, 5.33 FLOP/byte x the in-place stream bandwidth measured beside it)) and the rest at the
     matmul rate; a third bound puts every training product at torch.bmm's own rate for its shape at batch 32
     (measured beside it) and everything else (Adam, dropout, losses, Python, set-up) free.

    .venv/bin/python benchmarks/trainer_speed.py --quick          # smoke run (a minute)
    .venv/bin/python benchmarks/trainer_speed.py                  # the figures of RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from trainer import native  # noqa: E402
from trainer.data import FeatureSet, load_features  # noqa: E402
from trainer.fit import native_bf16, run_experiment  # noqa: E402
from trainer.metrics import score  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.models.base import ModelSpec  # noqa: E402
from trainer.protocol import Protocol  # noqa: E402
from trainer.search import SPACE, trials  # noqa: E402
from trainer.synthetic import MER2024_DIMS, make_store  # noqa: E402

import _common as common  # noqa: E402

MODALITIES = list(MER2024_DIMS)   # audio-1024, text-5120, video-768


# ---------------------------------------------------------------------------------------------- MERTools-style side
class SampleDataset(torch.utils.data.Dataset):
    """One sample at a time, as MERTools' Data_Feat: a dict of per-modality vectors and the labels."""

    def __init__(self, xs: list[np.ndarray], emo: np.ndarray, val: np.ndarray, rows: np.ndarray) -> None:
        self.xs, self.emo, self.val, self.rows = xs, emo, val, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        r = self.rows[i]
        return (*(torch.from_numpy(x[r]) for x in self.xs), torch.tensor(self.emo[r]), torch.tensor(self.val[r]))


class MLPEncoder(nn.Module):
    def __init__(self, d: int, h: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                 nn.Linear(h, h), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionModel(nn.Module):
    def __init__(self, dims: list[int], h: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(MLPEncoder(d, h, dropout) for d in dims)
        self.attention_mlp = MLPEncoder(h * len(dims), h, dropout)
        self.fc_att = nn.Linear(h, len(dims))
        self.fc_out_1 = nn.Linear(h, n_classes)
        self.fc_out_2 = nn.Linear(h, 1)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hs = [enc(x) for enc, x in zip(self.encoders, xs)]
        att = self.fc_att(self.attention_mlp(torch.cat(hs, dim=1))).unsqueeze(2)      # [B, M, 1]
        fused = torch.matmul(torch.stack(hs, dim=2), att).squeeze(2)                   # [B, H]
        return self.fc_out_1(fused), self.fc_out_2(fused).squeeze(1)


def mertools_loop(fs: FeatureSet, plan: Any, epochs: int, seed: int = 0) -> dict[str, float]:
    """One experiment the MERTools way; returns CV WAF (mean of the folds' best held-out WAF) and test WAF
    (the fold-averaged logits of each fold's best epoch)."""
    xs = [fs.features[m].x.numpy() for m in MODALITIES]
    emo = fs.emotion.numpy()
    val = np.nan_to_num(fs.valence.numpy())
    test_rows = next(iter(plan.tests.values()))
    test_loader = torch.utils.data.DataLoader(SampleDataset(xs, emo, val, test_rows), batch_size=32, shuffle=False)
    cv, test_logits = [], []
    torch.manual_seed(seed)

    def run(model: nn.Module, loader: Any, opt: Any | None) -> tuple[np.ndarray, np.ndarray]:
        model.train(opt is not None)
        outs, labels = [], []
        with torch.set_grad_enabled(opt is not None):
            for *x, e, v in loader:
                logits, vout = model(x)
                if opt is not None:
                    loss = nn.functional.cross_entropy(logits, e) + nn.functional.mse_loss(vout, v)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                outs.append(logits.detach().numpy())
                labels.append(e.numpy())
        return np.concatenate(outs), np.concatenate(labels)

    for fold in plan.folds:
        model = AttentionModel([fs.features[m].dim for m in MODALITIES], 128, len(fs.classes), 0.5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
        train_loader = torch.utils.data.DataLoader(SampleDataset(xs, emo, val, fold.train), batch_size=32, shuffle=True)
        eval_loader = torch.utils.data.DataLoader(SampleDataset(xs, emo, val, fold.heldout), batch_size=32, shuffle=False)
        best, best_test = -1.0, None
        for _ in range(epochs):
            run(model, train_loader, opt)
            lo, y = run(model, eval_loader, None)
            tl, _ = run(model, test_loader, None)
            waf = score("waf", emotion=y, logits=lo).waf
            if waf > best:
                best, best_test = waf, tl
        cv.append(best)
        test_logits.append(best_test)
    test = score("waf", emotion=emo[test_rows], logits=np.mean(test_logits, axis=0)).waf
    return {"cv_waf": float(np.mean(cv)), "test_waf": float(test)}


# ---------------------------------------------------------------------------------------------- featstore side
def featstore_run(fs: FeatureSet, epochs: int, threads: int, configs: list[dict[str, Any]] | None = None,
                  bf16: bool = False, seed: int = 0) -> tuple[dict[str, float], Any]:
    proto = Protocol(folds="cv5", epochs=epochs, threads=threads, bf16=bf16, seeds=(seed,))
    res = run_experiment(fs, "attention", proto, configs)
    d = {r["split"]: r for r in res.summary()}
    test = next(s for s in d if s not in ("cv", "inner"))
    return {"cv_waf": d["cv"]["waf_mean"], "test_waf": d[test]["waf_mean"]}, res


@contextlib.contextmanager
def torch_path_only() -> Any:
    """featstore without trainer.native's kernel (its PyTorch path), inside this process."""
    before = os.environ.get("FEATSTORE_NATIVE")
    os.environ["FEATSTORE_NATIVE"] = "0"
    native.reset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FEATSTORE_NATIVE")
        else:
            os.environ["FEATSTORE_NATIVE"] = before
        native.reset()


# ---------------------------------------------------------------------------------------------- FLOPs
def step_flops(fs: FeatureSet, hidden: int, batch: int = 32) -> tuple[int, int]:
    """(forward+backward FLOPs of one training step, forward FLOPs per row) of ONE attention model."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = ModelSpec(branches={m: (m,) for m in MODALITIES}, dims={m: fs.features[m].dim for m in MODALITIES},
                     n_classes=len(fs.classes), n_valence=1, hidden=hidden, dropout=[0.5],
                     init_generators=[torch.Generator().manual_seed(0)],
                     drop_generators=[torch.Generator().manual_seed(1)], device=torch.device("cpu"))
    model = build_model("attention", spec)
    x = {m: torch.randn(1, batch, fs.features[m].dim) for m in MODALITIES}
    with FlopCounterMode(display=False) as fc:
        out = model(x)
        (out["emotion"].sum() + out["valence"].sum()).backward()
    train = fc.get_total_flops()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc2:
        model(x)
    return train, fc2.get_total_flops() // batch


@contextlib.contextmanager
def step_parts() -> Iterator[dict[str, float]]:
    """Seconds spent inside the training epochs (not the selection or test passes) in the data layers' native
    passes (the fused Adam pass with its next-step product, and data_forward) and in the attention trunk's native
    forward and backward; yields the dict that fills up."""
    from trainer import fit, native_trunk

    spent = {"data": 0.0, "trunk": 0.0}
    training = [False]

    def timed(fn: Any, part: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if not training[0]:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t
        return run

    epoch = fit._GroupTrainer._train_epoch

    def train_epoch(self: Any) -> None:
        training[0] = True
        try:
            epoch(self)
        finally:
            training[0] = False

    trunk = native_trunk.AttentionTrunk
    with contextlib.ExitStack() as stack:
        for owner, name, part in ((native, "wgrad_adam_", "data"), (native, "data_forward", "data"),
                                  (trunk, "forward", "trunk"), (trunk, "backward", "trunk")):
            fn = timed(getattr(owner, name), part)
            stack.enter_context(mock.patch.object(owner, name, staticmethod(fn) if owner is trunk else fn))
        stack.enter_context(mock.patch.object(fit._GroupTrainer, "_train_epoch", train_epoch))
        yield spent


def grid_flop_rate(fs: FeatureSet, epochs: int, threads: int, n_configs: int, bf16: bool = False) -> dict[str, Any]:
    """The 50-config grid's FLOP rates, and where its wall time went: the data layers' native passes, the trunk,
    the rest of the training steps, the selection and test passes, the models' set-up."""
    space = {**SPACE, "weight_decay": (0.0, 1e-5, 1e-4)}
    cfgs = trials(n_configs, seed=0, space=space)
    plan = Protocol(folds="cv5").plan(fs, 0)
    n_train = [len(f.train) for f in plan.folds]
    n_sel = sum(len(f.select) for f in plan.folds)
    n_test = sum(len(r) for r in plan.tests.values())
    per = {h: step_flops(fs, h) for h in SPACE["hidden"]}
    d_in = sum(fs.features[m].dim for m in MODALITIES)
    train_flops = eval_flops = data_flops = data_bytes = 0
    shapes: dict[str, dict[str, int]] = {"data": {}, "trunk": {}}   # FLOPs by product shape (the vendor bound)
    for c in cfgs:
        tr, fwd_row = per[c["hidden"]]
        steps = sum(-(-n // 32) for n in n_train) * epochs
        train_flops += steps * tr
        data_flops += steps * 4 * 32 * d_in * c["hidden"]    # forward product + weight gradient of the data layers
        for m in MODALITIES:
            key = f"{fs.features[m].dim}x{c['hidden']}"
            shapes["data"][key] = shapes["data"].get(key, 0) + steps * 4 * 32 * fs.features[m].dim * c["hidden"]
        key = str(c["hidden"])
        shapes["trunk"][key] = shapes["trunk"].get(key, 0) + steps * (tr - 4 * 32 * d_in * c["hidden"])
        data_bytes += steps * 24 * d_in * c["hidden"]        # the Adam pass reads and writes w, m, v (float32)
        eval_flops += fwd_row * (n_sel * epochs + n_test * len(plan.folds))
    with step_parts() as spent:
        t = time.perf_counter()
        _, res = featstore_run(fs, epochs, threads, cfgs, bf16)
        wall = time.perf_counter() - t
    tm = res.timings
    parts = {"data_s": spent["data"], "trunk_s": spent["trunk"],
             "steps_rest_s": tm["train"] - spent["data"] - spent["trunk"], "eval_s": tm["select"] + tm["final"],
             "setup_s": tm["setup"], "other_s": wall - tm["train"] - tm["select"] - tm["final"] - tm["setup"]}
    return {"configs": len(cfgs), "models": len(cfgs) * len(plan.folds), "epochs": epochs, "wall_s": wall,
            "train_flops": train_flops, "eval_flops": eval_flops, "data_flops": data_flops,
            "data_bytes": data_bytes, "shape_flops": shapes, "parts": parts,
            "rate_train": train_flops / wall, "rate_all": (train_flops + eval_flops) / wall}


def bmm_rates(shape_flops: dict[str, dict[str, int]], threads: int, models: tuple[int, ...] = (20, 60),
              batch: int = 32, repeats: int = 10) -> dict[str, dict[str, float]]:
    """FLOP/s of torch.bmm (the vendor's GEMM: MKL or oneDNN) on the grid's own products at batch 32, the best of
    `models` models at once: per data-layer shape "DxH" the forward product [32, D] @ [D, H] (the vendor's best of
    a data layer's two products: its weight gradient [D, 32] @ [32, H] runs at a fraction of that), per hidden
    size "H" a trunk layer [32, H] @ [H, H]."""
    torch.set_num_threads(threads)
    out: dict[str, dict[str, float]] = {"data": {}, "trunk": {}}
    for part, keys in shape_flops.items():
        for key in sorted(keys, key=lambda k: [int(v) for v in k.split("x")]):
            d, h = (int(v) for v in key.split("x")) if part == "data" else (int(key), int(key))
            for k in models:
                x, w = torch.randn(k, batch, d), torch.randn(k, d, h)
                rate = 2 * k * batch * d * h / common.median_seconds(lambda x=x, w=w: torch.bmm(x, w), repeats)
                out[part][key] = max(out[part].get(key, 0.0), rate)
    return out


def grid_bounds(g: dict[str, Any], matmul: float, bandwidth: float,
                vendor: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Upper bounds on the grid's training FLOP share (of the matmul rate), from its measured parts:
    `kernels`: the data-layer passes, the trunk and the evaluation passes at their measured rates, all else free;
    `roofline`: the data-layer passes at their roofline (min(matmul, 128 FLOP / 24 bytes x the in-place stream
    bandwidth): a float32 Adam step streams w, m and v in and out for 4 x 32 FLOPs a parameter), trunk and
    evaluation at the matmul rate, all else free;
    `vendor` (given `bmm_rates`): every training product at torch.bmm's rate for its shape at batch 32 (the data
    layers' weight gradients at their forward product's rate), evaluation at the matmul rate, all else free
    (Adam, dropout, losses, the attention, Python, set-up)."""
    p = g["parts"]
    trunk_flops = g["train_flops"] - g["data_flops"]
    kernels = g["train_flops"] / (p["data_s"] + p["trunk_s"] + p["eval_s"]) / matmul
    data_roof = min(matmul, g["data_flops"] / g["data_bytes"] * bandwidth)
    ideal_s = g["data_flops"] / data_roof + (trunk_flops + g["eval_flops"]) / matmul
    out = {"kernels": kernels, "roofline": g["train_flops"] / ideal_s / matmul, "data_roofline_rate": data_roof}
    if vendor:
        vendor_s = g["eval_flops"] / matmul + sum(f / vendor[part][key] for part, by in g["shape_flops"].items()
                                                  for key, f in by.items())
        out["vendor"] = g["train_flops"] / vendor_s / matmul
    return out


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the timed passes (both sides)")
    ap.add_argument("--threads", default="1,2", help="thread counts of the speed figure")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per side and thread count (0: skip)")
    ap.add_argument("--parity-epochs", type=int, default=100, help="epochs of the parity figure (0: skip)")
    ap.add_argument("--parity-seeds", default="0", help="seeds of the parity figure (each: its own folds, "
                    "initialisation and shuffles on both sides)")
    ap.add_argument("--grid-configs", type=int, default=50, help="configs of the FLOP-rate grid (0: skip)")
    ap.add_argument("--grid-epochs", type=int, default=2)
    ap.add_argument("--grid-precision", default=None,
                    help="compute precisions of the grid figure (bf16: autocast, the trainer's --bf16; fp32 master "
                         "weights); default fp32,bf16 where the CPU multiplies bf16 natively, else fp32 (emulated "
                         "bf16 runs many times slower)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, 1 repeat, 1 thread, small grid")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="FRACTION",
                    help="before each pass wait until the CPUs are this idle (shared machines)")
    ap.add_argument("--max-wait", type=float, default=120.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats, args.threads, args.parity_epochs = 2, 1, "1", 3
        args.grid_configs, args.grid_epochs = 6, 1
    if args.grid_precision is None:
        args.grid_precision = "fp32,bf16" if native_bf16(torch.device("cpu")) else "fp32"
    threads = [int(t) for t in args.threads.split(",")]
    print(f"machine: {common.machine()}; torch {torch.__version__}; data-layer step: {native.status()}")
    print(f"before: {common.uptime()}", flush=True)
    out: dict[str, Any] = {"machine": common.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "args": {k: str(v) for k, v in vars(args).items()}, "native": native.status()}
    sides = ("mertools", "featstore") + (("featstore-torch",) if native.status() == "native" else ())
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp) / "s.zarr", n_train=5030, n_test=1000, dims=MER2024_DIMS, signal=0.35, seed=0)
        fs = load_features(Path(tmp) / "s.zarr", "synth", audio=["audio-1024"], text=["text-5120"], video=["video-768"])
    plan = Protocol(folds="cv5").plan(fs, 0)

    # a) speed, interleaved
    speed: dict[int, dict[str, list[float]]] = {}
    for t in threads if args.repeats else []:
        torch.set_num_threads(t)
        speed[t] = {side: [] for side in sides}
        for r in range(args.repeats):
            for side in sides:
                load = common.wait_idle(args.wait_idle, args.max_wait)
                t0 = time.perf_counter()
                if side == "mertools":
                    mertools_loop(fs, plan, args.epochs)
                elif side == "featstore":
                    featstore_run(fs, args.epochs, t)
                else:
                    with torch_path_only():
                        featstore_run(fs, args.epochs, t)
                dt = time.perf_counter() - t0
                speed[t][side].append(dt)
                print(f"speed threads={t} pass {r} {side}: {dt:.2f} s ({load})", flush=True)
        m, f = statistics.median(speed[t]["mertools"]), statistics.median(speed[t]["featstore"])
        print(f"speed threads={t}: MERTools-style {m:.2f} s, featstore {f:.2f} s -> {m / f:.2f}x", flush=True)
        if "featstore-torch" in speed[t]:
            ft = statistics.median(speed[t]["featstore-torch"])
            print(f"speed threads={t}: featstore on the PyTorch path alone {ft:.2f} s -> {m / ft:.2f}x "
                  f"(the native data-layer step: {ft / f:.2f}x faster)", flush=True)
    out["speed"] = {t: {**v, "ratio": statistics.median(v["mertools"]) / statistics.median(v["featstore"])}
                    for t, v in speed.items()}

    # b) parity: per seed, both sides on the folds that seed draws
    if args.parity_epochs:
        torch.set_num_threads(max(threads))
        runs = []
        for seed in (int(v) for v in args.parity_seeds.split(",")):
            t0 = time.perf_counter()
            mt = mertools_loop(fs, Protocol(folds="cv5").plan(fs, seed), args.parity_epochs, seed=seed)
            t1 = time.perf_counter()
            fe, _ = featstore_run(fs, args.parity_epochs, max(threads), seed=seed)
            t2 = time.perf_counter()
            runs.append({"seed": seed, "mertools": mt, "featstore": fe, "mertools_s": t1 - t0,
                         "featstore_s": t2 - t1})
            print(f"parity @ {args.parity_epochs} epochs, seed {seed}: MERTools-style CV {mt['cv_waf']:.4f} test "
                  f"{mt['test_waf']:.4f} ({t1 - t0:.0f} s); featstore CV {fe['cv_waf']:.4f} test {fe['test_waf']:.4f} "
                  f"({t2 - t1:.0f} s)", flush=True)
        diff = {k: [100 * (r["featstore"][k] - r["mertools"][k]) for r in runs] for k in ("cv_waf", "test_waf")}
        out["parity"] = {"epochs": args.parity_epochs, "runs": runs,
                         "diff_cv_points": statistics.mean(diff["cv_waf"]),
                         "diff_test_points": statistics.mean(diff["test_waf"])}
        print(f"parity: featstore - MERTools-style, mean over {len(runs)} seed(s): CV "
              f"{out['parity']['diff_cv_points']:+.2f} points, test {out['parity']['diff_test_points']:+.2f} points",
              flush=True)

    # c) FLOP rate of a 50-config grid vs a 4096^2 matmul, same threads
    flops = {}
    for t in threads if args.grid_configs else []:
        for precision in args.grid_precision.split(","):
            common.wait_idle(args.wait_idle, args.max_wait)
            mm, bw = common.matmul_rate(t), common.stream_bandwidth(t)
            g = grid_flop_rate(fs, args.grid_epochs, t, args.grid_configs, bf16=precision == "bf16")
            mmr, bw = (mm + common.matmul_rate(t)) / 2, (bw + common.stream_bandwidth(t)) / 2
            vendor = bmm_rates(g["shape_flops"], t) if precision == "fp32" else None
            bounds = grid_bounds(g, mmr, bw, vendor)
            flops[f"{t}/{precision}"] = {**g, "matmul_rate": mmr, "stream_bandwidth": bw, "bounds": bounds,
                                         "bmm_rates": vendor,
                                         "share_train": g["rate_train"] / mmr, "share_all": g["rate_all"] / mmr}
            print(f"grid threads={t} {precision}: {g['configs']} configs x 5 folds, {g['epochs']} epochs in "
                  f"{g['wall_s']:.1f} s: {g['rate_train'] / 1e9:.1f} GFLOP/s training ({g['rate_all'] / 1e9:.1f} with "
                  f"evaluation); fp32 matmul 4096^2 {mmr / 1e9:.1f} GFLOP/s -> {g['rate_train'] / mmr:.0%} "
                  f"({g['rate_all'] / mmr:.0%})", flush=True)
            p, trunk_flops = g["parts"], g["train_flops"] - g["data_flops"]
            if not p["data_s"]:     # the PyTorch path (no native kernels): nothing to split the steps by
                print(f"grid threads={t} {precision} parts: training steps {p['steps_rest_s']:.1f} s on the PyTorch "
                      f"path, selection + test passes {p['eval_s']:.1f} s, set-up {p['setup_s']:.1f} s", flush=True)
                continue
            print(f"grid threads={t} {precision} parts: data-layer passes {p['data_s']:.1f} s "
                  f"({g['data_flops'] / p['data_s'] / 1e9:.0f} GFLOP/s, {g['data_bytes'] / p['data_s'] / 1e9:.1f} GB/s "
                  f"of w, m, v; in-place stream {bw / 1e9:.1f} GB/s), trunk {p['trunk_s']:.1f} s "
                  f"({trunk_flops / p['trunk_s'] / 1e9:.0f} GFLOP/s), the rest of the steps {p['steps_rest_s']:.1f} s, "
                  f"selection + test passes {p['eval_s']:.1f} s ({g['eval_flops'] / p['eval_s'] / 1e9:.0f} GFLOP/s), "
                  f"set-up {p['setup_s']:.1f} s, other {p['other_s']:.1f} s", flush=True)
            print(f"grid threads={t} {precision} bounds: with all but those three kernels free "
                  f"{bounds['kernels']:.0%}; with the data-layer passes at their roofline "
                  f"({bounds['data_roofline_rate'] / 1e9:.0f} GFLOP/s) and trunk and evaluation at the matmul rate "
                  f"{bounds['roofline']:.0%}", flush=True)
            if vendor:
                rates = ", ".join(f"{'data ' if part == 'data' else 'trunk H='}{key} {r / 1e9:.0f}"
                                  for part, by in vendor.items() for key, r in by.items())
                print(f"grid threads={t} fp32 bound with every training product at torch.bmm's rate for its shape "
                      f"(GFLOP/s: {rates}), evaluation at the matmul rate, all else free: {bounds['vendor']:.0%}",
                      flush=True)
    out["flops"] = flops
    print(f"after: {common.uptime()}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
