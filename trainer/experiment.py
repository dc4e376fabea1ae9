"""What one experiment returns: tidy rows per (config, fold, seed, split), per-fold test outputs, predictions.

`assemble` turns the per-model outcomes of trainer.fit into an ExperimentResult: fold rows (each fold model on
its held-out rows and on every test split), fold-averaged rows (fold -1: the mean of the folds' CV figures, as
MERTools' gain_cv_results; the test figures of the fold-averaged logits, as its average_folder_for_emos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainer.data import FeatureSet
from trainer.metrics import Scores, score
from trainer.protocol import HYPER, Fold, Plan, Protocol


@dataclass
class TestOutput:
    """One (config, seed, split): the fold models' outputs, stacked over folds."""

    emotion: np.ndarray | None      # [F, n, C] logits (MERTools stores these as 'emo_probs')
    valence: np.ndarray | None      # [F, n]
    attention: np.ndarray | None    # [F, n, M] branch weights (attention fusion)


@dataclass
class ExperimentResult:
    """Tidy rows per (config, fold, seed, split) plus the outputs behind them.

    rows: dicts with config (index into `configs`), the hyper-parameters, fold (-1 = the fold-averaged
    figure), seed, split ('cv' = each fold model on its held-out rows -- the val split for official folds;
    'inner' = the strict mode's selection rows; a test split name), acc, waf, mse, score (the selection
    score), n (rows scored), best_epoch (1-based), seconds. Test rows with fold -1 score the fold-averaged
    logits; cv rows with fold -1 are the mean over folds (MERTools' CV figure).
    """

    dataset: str
    fusion: str
    protocol: Protocol
    configs: list[dict[str, Any]]
    features: dict[str, list[str]]
    feature_hashes: dict[str, str]
    branches: list[str]
    classes: list[str]
    selection: str
    folds: str
    rows: list[dict[str, Any]]
    selected_epochs: dict[tuple[int, int, int], int]           # (config, fold, seed) -> best epoch (1-based)
    curves: dict[tuple[int, int, int], np.ndarray]              # (config, fold, seed) -> selection score per epoch
    test_outputs: dict[tuple[int, int, str], TestOutput]         # (config, seed, split)
    heldout_outputs: dict[tuple[int, int], dict[str, np.ndarray]]  # (config, seed) -> rows, ids, fold, true codes, out-of-fold outputs
    test_ids: dict[str, np.ndarray]
    test_labels: dict[str, dict[str, np.ndarray | None]]         # split -> {'emotion': codes, 'valence': values}
    timings: dict[str, float]
    counts: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    models: list[tuple[list[tuple[int, int, int]], Any]] = field(default_factory=list)  # keep_models=True:
    # ([(config, seed, fold) of each of the K models], its batched trainer with forward_inputs())

    def summary(self, fold: int = -1) -> list[dict[str, Any]]:
        """Mean and std (over seeds, numpy std) of acc/waf/mse/score per (config, split), fold -1 rows."""
        out: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            if r["fold"] == fold:
                out.setdefault((r["config"], r["split"]), []).append(r)
        table = []
        for (c, split), rs in out.items():
            d: dict[str, Any] = {"config": c, "split": split, "seeds": len(rs), **self.configs[c]}
            for m in ("acc", "waf", "mse", "score"):
                vals = np.array([r[m] for r in rs], np.float64)
                ok = vals[np.isfinite(vals)]
                d[f"{m}_mean"] = float(ok.mean()) if len(ok) else math.nan
                d[f"{m}_std"] = float(ok.std()) if len(ok) else math.nan
            d["n"] = rs[0]["n"]
            table.append(d)
        return table

    def best_config(self, split: str = "cv", metric: str = "score") -> int:
        """Index of the config with the best mean `metric` on `split` (cv by default: never a test split)."""
        best, arg = -math.inf, 0
        for d in self.summary():
            v = d[f"{metric}_mean"]
            if d["split"] == split and math.isfinite(v) and (v > best if metric != "mse" else -v > best):
                best, arg = (v if metric != "mse" else -v), d["config"]
        return arg

    def predictions(self, split: str, config: int = 0, seed: int | None = None) -> dict[str, Any]:
        """The prediction of a test split: logits averaged over fold models (and over seeds when seed is None),
        softmax confidences, predicted and true class names, valence."""
        seeds = [seed] if seed is not None else sorted({s for (c, s, sp) in self.test_outputs if c == config and sp == split})
        outs = [self.test_outputs[(config, s, split)] for s in seeds]
        res: dict[str, Any] = {"ids": self.test_ids[split]}
        if outs and outs[0].emotion is not None:
            logits = np.mean([o.emotion.mean(axis=0) for o in outs], axis=0)
            probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
            pred = logits.argmax(axis=1)
            true = self.test_labels[split]["emotion"]
            res.update(logits=logits, probs=probs, pred=pred,
                       predicted=[self.classes[i] if i < len(self.classes) else str(i) for i in pred],
                       true=[(self.classes[t] if 0 <= t < len(self.classes) else "") for t in true]
                       if true is not None else [""] * len(pred))
        if outs and outs[0].valence is not None:
            res["valence"] = np.mean([o.valence.mean(axis=0) for o in outs], axis=0)
        return res

    def prediction_rows(self, split: str, config: int = 0, seed: int | None = None) -> list[dict[str, Any]]:
        """One dict per sample (sample, true, predicted, prob_<class>..., valence): ready for csv.DictWriter."""
        p = self.predictions(split, config, seed)
        rows = []
        for i, sid in enumerate(p["ids"]):
            r: dict[str, Any] = {"sample": str(sid)}
            if "pred" in p:
                r["true"], r["predicted"] = p["true"][i], p["predicted"][i]
                for j, c in enumerate(self.classes):
                    r[f"prob_{c}"] = float(p["probs"][i, j])
            if "valence" in p:
                r["valence"] = float(p["valence"][i])
                if self.test_labels[split].get("valence") is not None:
                    r["true_valence"] = float(self.test_labels[split]["valence"][i])
            rows.append(r)
        return rows



@dataclass(eq=False)
class Job:
    config: int
    seed: int
    fold: Fold
    hyper: dict[str, Any]
    model_seed: int

    @property
    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.hyper.items() if k not in HYPER}


@dataclass
class Outcome:
    best_epoch: int
    curve: np.ndarray
    select: Scores
    heldout: Scores
    heldout_out: dict[str, np.ndarray]
    tests: dict[str, dict[str, np.ndarray | None]]
    seconds: float



def assemble(fs: FeatureSet, fusion: str, protocol: Protocol, cfgs: list[dict[str, Any]], selection: str,
              plans: dict[int, Plan], jobs: list[Job], outcomes: dict[int, Outcome], timings: dict[str, float],
              warnings: list[str], n_classes: int, has_valence: bool) -> ExperimentResult:
    rows: list[dict[str, Any]] = []
    selected: dict[tuple[int, int, int], int] = {}
    curves: dict[tuple[int, int, int], np.ndarray] = {}
    test_outputs: dict[tuple[int, int, str], TestOutput] = {}
    heldout_outputs: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    common = {"mode": protocol.mode, "fusion": fusion, "epochs": protocol.epochs, "batch_size": protocol.batch_size,
              "selection": selection}
    y_emo = fs.emotion.numpy() if fs.emotion is not None else None
    y_val = fs.valence.numpy() if fs.valence is not None and has_valence else None
    plan_kind = plans[protocol.seeds[0]].kind

    def row(ci: int, fold: int, seed: int, split: str, sc: Scores, best: int | None, seconds: float) -> dict[str, Any]:
        return {"config": ci, **cfgs[ci], **common, "fold": fold, "seed": seed, "split": split, **sc.as_dict(),
                "best_epoch": best, "seconds": seconds}

    by_cs: dict[tuple[int, int], list[tuple[Job, Outcome]]] = {}
    for j in jobs:
        by_cs.setdefault((j.config, j.seed), []).append((j, outcomes[id(j)]))
    for (ci, seed), items in by_cs.items():
        items.sort(key=lambda jo: jo[0].fold.index)
        inner = protocol.mode == "strict" and any(len(j.fold.select) for j, _ in items)  # inner_fraction 0: none
        total = sum(o.seconds for _, o in items)
        for j, o in items:
            selected[(ci, j.fold.index, seed)] = o.best_epoch
            curves[(ci, j.fold.index, seed)] = o.curve
            rows.append(row(ci, j.fold.index, seed, "cv", o.heldout, o.best_epoch, o.seconds))
            if inner:
                rows.append(row(ci, j.fold.index, seed, "inner", o.select, o.best_epoch, o.seconds))
        for split in (["cv", "inner"] if inner else ["cv"]):
            scs = [o.heldout if split == "cv" else o.select for _, o in items]
            rows.append(row(ci, -1, seed, split, _mean_scores(scs), None, total))
        # out-of-fold outputs on the held-out rows
        held_rows = np.concatenate([j.fold.heldout for j, _ in items])
        oof: dict[str, np.ndarray] = {"rows": held_rows, "ids": fs.ids[held_rows],
                                      "fold": np.concatenate([np.full(len(j.fold.heldout), j.fold.index) for j, _ in items])}
        if y_emo is not None:
            oof["true"] = y_emo[held_rows]
        for key in ("emotion", "valence", "attention"):
            if key in items[0][1].heldout_out:
                oof[key] = np.concatenate([o.heldout_out[key] for _, o in items])
        heldout_outputs[(ci, seed)] = oof
        # tests: each fold model, then the fold-averaged logits
        for split, trows in plans[seed].tests.items():
            per = [o.tests[split] for _, o in items]
            stacked = {key: (np.stack([t[key] for t in per]) if per[0][key] is not None else None)
                       for key in ("emotion", "valence", "attention")}
            test_outputs[(ci, seed, split)] = TestOutput(**stacked)
            lab_e = y_emo[trows] if y_emo is not None else None
            lab_v = y_val[trows] if y_val is not None else None
            for (j, o), t in zip(items, per):
                rows.append(row(ci, j.fold.index, seed, split,
                                score(selection, emotion=lab_e, logits=t["emotion"], valence=lab_v,
                                      valence_pred=t["valence"]), o.best_epoch, o.seconds))
            avg_e = stacked["emotion"].mean(axis=0) if stacked["emotion"] is not None else None
            avg_v = stacked["valence"].mean(axis=0) if stacked["valence"] is not None else None
            rows.append(row(ci, -1, seed, split, score(selection, emotion=lab_e, logits=avg_e, valence=lab_v,
                                                       valence_pred=avg_v), None, total))
    first = plans[protocol.seeds[0]]
    test_ids = {s: fs.ids[r] for s, r in first.tests.items()}
    test_labels = {s: {"emotion": y_emo[r] if y_emo is not None else None,
                       "valence": y_val[r] if y_val is not None else None} for s, r in first.tests.items()}
    counts = {"rows": fs.n, "train_rows": int(len(first.training_rows)), "excluded": dict(first.excluded),
              "models": len(jobs), "folds": len(first.folds),
              "test_rows": {s: int(len(r)) for s, r in first.tests.items()},
              "test_missing": {s: int((~fs.complete(test=True).numpy()[r]).sum()) for s, r in first.tests.items()},
              "test_unlabelled": {s: int(((y_emo[r] < 0) if y_emo is not None and n_classes else
                                          ~np.isfinite(fs.valence.numpy()[r])).sum()) for s, r in first.tests.items()}}
    for why, n in first.excluded.items():
        warnings.append(f"{n} training row(s) not trained on: {why}")
    return ExperimentResult(dataset=fs.dataset, fusion=fusion, protocol=protocol, configs=cfgs,
                            features=fs.describe(), feature_hashes=fs.spec_hashes(),
                            branches=[b.name for b in fs.branches], classes=list(fs.classes), selection=selection,
                            folds=plan_kind, rows=rows, selected_epochs=selected, curves=curves,
                            test_outputs=test_outputs, heldout_outputs=heldout_outputs, test_ids=test_ids,
                            test_labels=test_labels, timings=timings, counts=counts, warnings=warnings)


def _mean_scores(scs: list[Scores]) -> Scores:
    def m(vals: list[float]) -> float:
        a = np.array(vals, np.float64)
        a = a[np.isfinite(a)]
        return float(a.mean()) if len(a) else math.nan
    return Scores(acc=m([s.acc for s in scs]), waf=m([s.waf for s in scs]), mse=m([s.mse for s in scs]),
                  score=m([s.score for s in scs]), n=int(sum(s.n for s in scs)))
