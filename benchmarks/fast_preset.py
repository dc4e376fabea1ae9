"""Figure: time-to-accuracy of `--preset fast` against the MERTools protocol (`--preset default`), as a user sees it.

Every point is one `trainer run` command, timed from the moment the process starts to its result (Python
start-up, imports, reading the features from the store, all 5 folds, scoring and recording included), on a
synthetic store with MER2024 shapes (trainer.synthetic.make_store: 5,030 train / 1,000 test rows, six
imbalanced classes with valence, planted signal 0.35, attention fusion). The curve: test WAF (fold-averaged
logits) against wall seconds for a few epoch budgets of each preset (seed 0), and the fast preset trained in
float32 (`--fp32-train`) beside its bf16 training. Then the presets at their own epochs on three settings, each
over seeds 0-4 (mean ± std; one command trains every seed; over 3 seeds the Top-3 comparison moved by a point
with the dropout stream alone): the main one, unimodal (acoustic 1024-d) and Top-3 (three different acoustic
and three different visual encoders, planted signal 0.35 / 0.30 / 0.25 in each modality, one branch each),
with variants of the fast preset beside it (`--variants`: float32 training, and 16 epochs) and the test valence MSE
beside the WAF (the preset weighs the valence loss by 0.5).
Last, an ablation run in-process: the preset against the same recipe with an inner split that selects the
epoch and stops early.

    .venv/bin/python benchmarks/fast_preset.py                 # the figure of RESULTS.md (~50 minutes on a quiet 2-core VM)
    .venv/bin/python benchmarks/fast_preset.py --quick         # smoke run (small store, a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, uptime  # noqa: E402

from trainer.presets import PRESETS  # noqa: E402
from trainer.synthetic import make_store  # noqa: E402

TRAINER = str(Path(sys.executable).with_name("trainer"))
MAIN = {"audio-1024": ("audio", 1024), "text-5120": ("text", 5120), "video-768": ("visual", 768)}
TOP3 = {**{f"audio-{i}": ("audio", 1024) for i in range(3)}, **{f"video-{i}": ("visual", 768) for i in range(3)}}
TOP3_SIGNAL = (0.35, 0.3, 0.25, 0.35, 0.3, 0.25)     # a Top-3: the best encoder of a modality, then weaker ones


def run(store: Path, db: Path, args: list[str]) -> tuple[float, float, float, list[str], float, float]:
    """(wall s, test WAF, CV WAF, warnings, test WAF std over seeds, test valence MSE) of one `trainer run ... --json`
    command."""
    t0 = time.perf_counter()
    out = subprocess.run([TRAINER, "run", "--store", str(store), "--dataset", "synth", "--folds", "cv5",
                          "--threads", "2", "--results", str(db), "--json", *args],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"trainer run {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout[out.stdout.index("{"):])
    test = res["splits"]["test1"]
    return (wall, test["waf"]["mean"], res["splits"]["cv"]["waf"]["mean"], res["warnings"], test["waf"]["std"] or 0.0,
            test["mse"]["mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--default-epochs", default="25,100", help="epoch budgets of the default preset")
    ap.add_argument("--fast-epochs", default="6,12,16", help="epoch budgets of the fast preset (12: its own)")
    ap.add_argument("--no-others", action="store_true", help="only the main setting's time-to-accuracy curve")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the preset comparison on every setting")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--variants", default="--fp32-train;--epochs 16",
                    help="';'-separated extra options of the fast preset, each a row of every setting beside the "
                         "preset itself (the default: float32 training, and a third more epochs)")
    a = ap.parse_args()
    n_train, n_test = (600, 200) if a.quick else (5030, 1000)
    if a.quick:
        a.default_epochs, a.fast_epochs = "5", "4"
    print(f"# fast_preset  {machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "r.sqlite"
        stores = {}
        for name, dims, signal in (("main", MAIN, 0.35), ("top3", TOP3, TOP3_SIGNAL)):
            stores[name] = Path(tmp) / f"{name}.zarr"
            make_store(stores[name], n_train=n_train, n_test=n_test, dims=dims, signal=signal, seed=0)
        main_args = ["--audio", "audio-1024", "--text", "text-5120", "--video", "video-768"]
        print(f"\n## main: A1024 + L5120 + V768, {n_train} train / {n_test} test, attention, 5 folds, 2 threads\n")
        print("| preset | epochs | wall s (whole command) | test WAF | CV WAF | notes |")
        print("|---|---|---|---|---|---|")
        for preset, budgets in (("default", a.default_epochs), ("fast", a.fast_epochs)):
            for e in budgets.split(","):
                wall, test, cv, warns, *_ = run(stores["main"], db, [*main_args, "--preset", preset, "--epochs", e])
                note = "; ".join(w for w in warns if "stopp" in w or "budget" in w or "batch size" in w)
                print(f"| {preset} | {e} | {wall:.1f} | {test:.4f} | {cv:.4f} | {note} |", flush=True)
        # the preset's bf16 training against float32, side by side (the same recipe otherwise)
        wall, test, cv, warns, *_ = run(stores["main"], db, [*main_args, "--preset", "fast", "--fp32-train"])
        print(f"| fast, --fp32-train | {PRESETS['fast']['epochs']} | {wall:.1f} | {test:.4f} | {cv:.4f} | "
              f"{'; '.join(w for w in warns if 'bf16' in w)} |", flush=True)
        if a.no_others:
            return
        settings = {"main A1024 + L5120 + V768": (stores["main"], main_args),
                    "unimodal A1024": (stores["main"], ["--audio", "audio-1024"]),
                    "Top-3 A + Top-3 V": (stores["top3"], ["--audio", "audio-0,audio-1,audio-2",
                                                          "--video", "video-0,video-1,video-2"])}
        print(f"\n## every setting, each preset at its own epochs, seeds {a.seeds} (mean ± std over seeds; one "
              f"command trains every seed)\n")
        print("| setting | preset | wall s (all seeds) | test WAF | Δ vs default | CV WAF | test valence MSE |")
        print("|---|---|---|---|---|---|---|")
        for label, (store, args) in settings.items():
            ref = None
            variants = [("fast", v.split()) for v in a.variants.split(";") if v.strip()]
            for preset, more in (("default", []), ("fast", []), *variants):
                extra = ["--epochs", "5"] if a.quick else []
                wall, test, cv, _, std, mse = run(store, db, [*args, "--preset", preset, "--seeds", a.seeds, *more, *extra])
                ref = test if ref is None else ref
                delta = "—" if preset == "default" else f"{100 * (test - ref):+.2f}"
                name = " ".join([preset, *more])
                print(f"| {label} | {name} | {wall:.1f} | {test:.4f} ± {std:.4f} | {delta} | {cv:.4f} | {mse:.4f} |", flush=True)
        if a.no_ablation:
            return
        ablation(stores, n_train)
    print(f"\n# done {time.strftime('%H:%M UTC', time.gmtime())}; {uptime()}")


def ablation(stores: dict[str, Path], n_train: int) -> None:
    """The preset against itself with an inner split that picks the epoch and stops early (in-process, seeds 0-1)."""
    import torch

    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.presets import apply_preset
    from trainer.protocol import Protocol

    torch.set_num_threads(2)
    sets = {"main": (stores["main"], dict(audio=["audio-1024"], text=["text-5120"], video=["video-768"])),
            "Top-3 A + Top-3 V": (stores["top3"], dict(audio=[f"audio-{i}" for i in range(3)],
                                                       video=[f"video-{i}" for i in range(3)]))}
    fast = apply_preset(Protocol(folds="cv5", threads=2, seeds=(0, 1)), "fast")
    recipes = {"fast (no selection: last epoch)": fast,
               "fast + inner 20% selects, patience 3": fast.replace(inner_fraction=0.2, patience=3)}
    print("\n## ablation: epoch selection (in-process, training only; mean of seeds 0 and 1)\n")
    print("| setting | recipe | train s | test WAF | CV WAF |")
    print("|---|---|---|---|---|")
    for label, (store, enc) in sets.items():
        feats = load_features(store, "synth", **enc)
        for name, proto in recipes.items():
            t0 = time.perf_counter()
            res = run_experiment(feats, "attention", proto)
            wall = time.perf_counter() - t0
            summ = {d["split"]: d for d in res.summary()}
            print(f"| {label} | {name} | {wall:.1f} | {summ['test1']['waf_mean']:.4f} ± {summ['test1']['waf_std']:.4f} "
                  f"| {summ['cv']['waf_mean']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
