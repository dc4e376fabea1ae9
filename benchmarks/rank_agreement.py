"""Figure: how far `trainer rank --fast` (the linear baseline) agrees with the full neural ranking, and its cost.

A synthetic store with 12 encoders (4 per modality) of graded quality: each encoder's planted signal is a
different strength (seeded shuffle of a linear ramp), widths 256-1024. Both rankings run through
`trainer.grid.run_rank` on the same store and folds (5-fold CV, mertools mode, selection by the held-out
fold, as `trainer rank` does): the full one with the unimodal `mlp` search (`--trials` configs of the 24-point
space, `--epochs` epochs), the fast one with `--fusion linear` and its ridge-classifier solver (one config;
the strength chosen inside each fold, every strength from one factorisation).
Agreement: Spearman's rho and Kendall's tau between the two CV-WAF orders of all 12 encoders and within
each modality, and whether they pick the same best encoder per modality.

    .venv/bin/python benchmarks/rank_agreement.py              # the figure of RESULTS.md (~5-10 minutes)
    .venv/bin/python benchmarks/rank_agreement.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, uptime  # noqa: E402

from trainer.grid import run_rank  # noqa: E402
from trainer.protocol import Protocol  # noqa: E402
from trainer.results import ResultsDB  # noqa: E402
from trainer.synthetic import make_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.quick:
        a.n_train, a.n_test, a.trials, a.epochs = 400, 100, 1, 5
    from scipy.stats import kendalltau, spearmanr

    rng = np.random.default_rng(0)
    strengths = rng.permutation(np.linspace(0.05, 0.6, 12))
    widths = (256, 512, 768, 1024)
    dims, signal = {}, []
    for i, (m, prefix) in enumerate([(m, p) for m, p in (("audio", "a"), ("text", "t"), ("visual", "v"))
                                     for _ in range(4)]):
        dims[f"{prefix}{i % 4}-{widths[i % 4]}"] = (m, widths[i % 4])
        signal.append(float(strengths[i]))
    print(f"# rank_agreement  {machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {uptime()}")
    print(f"# 12 encoders, {a.n_train} train / {a.n_test} test, signal {min(signal):.2f}..{max(signal):.2f}; full: mlp, "
          f"{a.trials} config(s) x {a.epochs} epochs; fast: linear; 5-fold CV, torch threads {a.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        fs = make_store(Path(tmp) / "s.zarr", n_train=a.n_train, n_test=a.n_test, dims=dims, signal=signal, seed=0)
        db = ResultsDB(Path(tmp) / "r.sqlite")
        proto = Protocol(folds="cv5", epochs=a.epochs, threads=a.threads)
        t0 = time.perf_counter()
        _, fast = run_rank(fs, db, "synth", proto, fast=True)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, full = run_rank(fs, db, "synth", proto, n_trials=a.trials)
        t_full = time.perf_counter() - t0

    def cv(order: dict) -> dict[str, float]:  # noqa: ANN001
        return {r.encoder: r.cv_waf for lst in order.values() for r in lst}

    cf, cu = cv(fast), cv(full)
    names = sorted(cu)
    rho = spearmanr([cf[n] for n in names], [cu[n] for n in names]).statistic
    tau = kendalltau([cf[n] for n in names], [cu[n] for n in names]).statistic
    print(f"\n| ranking | wall s (12 encoders) | s / encoder |\n|---|---|---|\n| fast (linear) | {t_fast:.1f} | "
          f"{t_fast / 12:.2f} |\n| full (mlp, {a.trials} x {a.epochs} ep) | {t_full:.1f} | {t_full / 12:.2f} |")
    print(f"\nAll 12 encoders: Spearman rho {rho:.3f}, Kendall tau {tau:.3f}\n")
    print("| modality | full order (CV WAF) | fast order (CV WAF) | same best | Spearman rho |")
    print("|---|---|---|---|---|")
    for m in full:
        fo = [r.encoder for r in full[m]]
        so = [r.encoder for r in fast.get(m, [])]
        r_m = spearmanr([cf[n] for n in fo], [cu[n] for n in fo]).statistic
        print(f"| {m} | {', '.join(f'{n} {cu[n]:.3f}' for n in fo)} | {', '.join(f'{n} {cf[n]:.3f}' for n in so)} | "
              f"{'yes' if fo[:1] == so[:1] else 'no'} | {r_m:.2f} |")
    print(f"\nplanted signal per encoder: {', '.join(f'{n} {s:.2f}' for n, s in zip(dims, signal))}")


if __name__ == "__main__":
    main()
