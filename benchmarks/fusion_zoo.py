"""Figure: wall time per experiment and WAF of every registered fusion on a synthetic MER-shaped store (issue #7).

One store (trainer.synthetic.make_store) holds utterance vectors and frame-level sequences of three encoders
with MER2024's dimensions by default (acoustic 1024, lexical 5120, visual 768; six imbalanced classes with
valence; the utterance vector is the mean of the frames). Each fusion runs one 5-fold experiment under the
strict protocol (inner validation split selects the epoch; test1 scored by the fold models' averaged logits)
with the same epochs, batch size and learning rate: utterance-level models on the utterance vectors,
sequence models on the frames (aligned to the text axis where the model needs it, unaligned for MulT), the
models' own options at their defaults. Timed: `run_experiment` from call to return (data already in memory).

    .venv/bin/python benchmarks/fusion_zoo.py --quick     # smoke run (tiny dims, a minute)
    .venv/bin/python benchmarks/fusion_zoo.py             # the figure of RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, uptime, wait_idle  # noqa: E402

from trainer.data import load_features  # noqa: E402
from trainer.fit import run_experiment  # noqa: E402
from trainer.models import available_models, input_options, model_level  # noqa: E402
from trainer.protocol import Protocol  # noqa: E402
from trainer.synthetic import make_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--dims", default="1024,5120,768", help="acoustic, lexical, visual dims")
    ap.add_argument("--steps", type=int, default=12, help="frame cap of the stored sequences (MERTools: 6-12)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--signal", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusions", default="all", help="comma-separated names, or all (every registered but mlp)")
    ap.add_argument("--wait-idle", type=float, default=None, help="wait for this idle CPU share before each run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 300/100 rows, dims 64,96,48, 4 epochs")
    a = ap.parse_args()
    if a.quick:
        a.n_train, a.n_test, a.dims, a.epochs, a.hidden, a.steps = 300, 100, "64,96,48", 4, 32, 6
    da, dt, dv = (int(v) for v in a.dims.split(","))
    fusions = [f for f in available_models() if f != "mlp"] if a.fusions == "all" else a.fusions.split(",")
    print(f"# fusion_zoo  {machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {uptime()}")
    print(f"# store: {a.n_train} train / {a.n_test} test, dims A{da} L{dt} V{dv}, frames <= {a.steps}; "
          f"strict protocol, 5 folds, {a.epochs} epochs, batch 32, lr {a.lr}, hidden {a.hidden}, dropout {a.dropout}, "
          f"torch threads {a.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        fs = make_store(Path(tmp) / "zoo.zarr", n_train=a.n_train, n_test=a.n_test, signal=a.signal,
                        dims={"audio": ("audio", da), "text": ("text", dt), "video": ("visual", dv)},
                        seq_steps=a.steps)
        proto = Protocol(folds="cv5", mode="strict", epochs=a.epochs, lr=a.lr, hidden=a.hidden, dropout=a.dropout,
                         threads=a.threads)
        cache: dict[str, object] = {}
        print("\n| fusion | level | input | wall s (5 folds) | s / fold-epoch | CV WAF | test WAF | test ACC |")
        print("|---|---|---|---|---|---|---|---|")
        for fusion in fusions:
            opts = input_options(fusion, proto)
            key = repr(sorted(opts.items()))
            if key not in cache:
                cache[key] = load_features(fs, "synth", audio="audio", text="text", video="video", **opts)
            feats = cache[key]
            if a.wait_idle:
                wait_idle(a.wait_idle, 120)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            r = run_experiment(feats, fusion, proto)
            wall = time.perf_counter() - t0
            summ = {d["split"]: d for d in r.summary()}
            level = model_level(fusion)
            inp = ("aligned" if opts.get("aligned") else "unaligned") + f" <= {a.steps} steps" if level == "seq" else "utterance vectors"
            print(f"| {fusion} | {level} | {inp} | {wall:.1f} | {wall / (5 * a.epochs):.3f} | "
                  f"{summ['cv']['waf_mean']:.4f} | {summ['test1']['waf_mean']:.4f} | {summ['test1']['acc_mean']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
