"""PNG plots from the results database alone: confusion matrices, Top-N curves, attention weights (matplotlib, Agg)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.report import Trial, best_by, test_splits
from trainer.results import ResultsDB


def _plt():  # noqa: ANN202 - matplotlib imported lazily, headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def _save(fig: object, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=120)  # type: ignore[attr-defined]
    plt.close(fig)
    return path


def plot_all(db: ResultsDB, trials_: Sequence[Trial], out_dir: str | Path) -> list[Path]:
    """Write every plot the database supports into `out_dir`; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for dataset in sorted({t.dataset for t in trials_}):
        ts = [t for t in trials_ if t.dataset == dataset]
        files += confusion_plots(db, ts, out)
        files += topn_plots(ts, out)
        files += attention_plots(db, ts, out)
    return files


def _best(ts: Sequence[Trial]) -> Trial | None:
    multi = [t for t in ts if t.n_features > 1]
    pool = multi or list(ts)
    return max(pool, key=lambda t: t.cv_score) if pool else None


def confusion_plots(db: ResultsDB, ts: Sequence[Trial], out: Path) -> list[Path]:
    """The best multimodal trial's (else the best unimodal's) confusion matrix per split, summed over seeds."""
    best = _best(ts)
    if best is None:
        return []
    plt = _plt()
    by_split: dict[str, tuple[list[str], np.ndarray]] = {}
    for o in db.outputs(best.config_hash):
        if o["confusion"] is None:
            continue
        m = np.asarray(o["confusion"], np.int64)
        prev = by_split.get(o["split"])
        by_split[o["split"]] = (o["classes"], m if prev is None else prev[1] + m)
    files = []
    for split, (classes, m) in sorted(by_split.items()):
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.7 * len(classes)))
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{best.dataset} {split}: {best.fusion} {best.combo} top-{best.topn}", fontsize=9)
        files.append(_save(fig, out / f"confusion-{_safe(best.dataset)}-{_safe(split)}.png"))
    return files


def topn_plots(ts: Sequence[Trial], out: Path) -> list[Path]:
    """WAF against Top-N, one line per (fusion, modality combination); CV solid, test splits dashed."""
    multi = [t for t in ts if t.n_features > 1 or len(t.features) > 1]
    if not multi:
        return []
    plt = _plt()
    best = best_by([t for t in multi if t.corruptions == "clean"] or multi, lambda t: (t.mode, t.fusion, t.combo, t.topn))
    splits = test_splits(list(best.values()))
    files = []
    for mode in sorted({k[0] for k in best}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for fusion, combo in sorted({(k[1], k[2]) for k in best if k[0] == mode}):
            pts = sorted((k[3], t) for k, t in best.items() if k[:3] == (mode, fusion, combo))
            ns = [n for n, _ in pts]
            line, = ax.plot(ns, [100 * t.get("cv", "waf")[0] for _, t in pts], marker="o", label=f"{fusion} {combo} CV")
            for s in splits[:1]:
                ax.plot(ns, [100 * t.get(s, "waf")[0] for _, t in pts], marker="x", linestyle="--",
                        color=line.get_color(), label=f"{fusion} {combo} {s}")
        ax.set_xticks(sorted({k[3] for k in best if k[0] == mode}))
        ax.set_xlabel("Top-N features per modality")
        ax.set_ylabel("WAF (%)")
        ax.set_title(f"{ts[0].dataset}: Top-N ({mode})", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        files.append(_save(fig, out / f"topn-{_safe(ts[0].dataset)}-{_safe(mode)}.png"))
    return files


def attention_plots(db: ResultsDB, ts: Sequence[Trial], out: Path) -> list[Path]:
    """The mean attention weight per branch of the best trial whose fusion reports weights, per split."""
    plt = _plt()
    for t in sorted(ts, key=lambda t: -t.cv_score):
        rows = [o for o in db.outputs(t.config_hash) if o["attention"]]
        if not rows:
            continue
        splits = sorted({o["split"] for o in rows})
        branches = rows[0]["branches"]
        fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(branches), 3.5))
        width = 0.8 / len(splits)
        for i, s in enumerate(splits):
            w = np.mean([o["attention"] for o in rows if o["split"] == s], axis=0)
            ax.bar(np.arange(len(branches)) + i * width, w, width, label=s)
        ax.set_xticks(np.arange(len(branches)) + width * (len(splits) - 1) / 2, branches, rotation=30, ha="right")
        ax.set_ylabel("mean modality weight")
        ax.set_title(f"{t.dataset}: {t.fusion} {t.combo} top-{t.topn}", fontsize=9)
        ax.legend(fontsize=7)
        return [_save(fig, out / f"attention-{_safe(t.dataset)}.png")]
    return []


__all__ = ["plot_all", "confusion_plots", "topn_plots", "attention_plots"]
