"""Turn an ExperimentResult into results-database rows (one per config, fold, seed and split)."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.fit import ExperimentResult
from trainer.metrics import confusion_matrix
from trainer.protocol import Protocol
from trainer.results import ResultsDB, config_hash

# Protocol fields that do not change a trial's outcome (where or how fast it runs), left out of its hash.
NOT_DEFINING = ("seeds", "threads", "device")
# Protocol fields added later: left out of the hash while unset, so trials recorded before them keep their hashes.
UNSET_OMITTED = ("steps", "aligned", "schedule", "warmup", "patience", "time_budget", "min_steps", "train_bf16")


def trial_config(result: ExperimentResult, config: int, preset: str = "default",
                 test_corruption: str | None = None) -> dict[str, Any]:
    """Everything that defines one trial of `result` (see trial_definition)."""
    custom = any(":" in b or "#" in b for b in result.branches)   # concatenated or replicated branches
    return trial_definition(result.dataset, result.features, result.feature_hashes, result.fusion, result.protocol,
                            result.configs[config], preset, test_corruption, result.branches if custom else None)


def trial_definition(dataset: str, features: dict[str, list[str]], feature_hashes: dict[str, str], fusion: str,
                     protocol: Protocol, hyper: dict[str, Any], preset: str = "default",
                     test_corruption: str | None = None, branches: list[str] | None = None) -> dict[str, Any]:
    """Everything that defines one trial: dataset, features and their store spec hashes, fusion, protocol, hyper.

    Computable before training (features: FeatureSet.describe(), feature_hashes: FeatureSet.spec_hashes(), hyper:
    trainer.fit.normalise_configs), so a grid can skip the trials already in the database. branches: the branch
    names when they are not one per feature (concat, replicate).
    """
    proto = {k: v for k, v in protocol.as_dict().items() if k not in NOT_DEFINING
             and not (k in UNSET_OMITTED and v is None)}
    out = {"dataset": dataset, "features": features, "feature_hashes": feature_hashes,
           "test_corruption": test_corruption, "fusion": fusion, "protocol": proto,
           "hyper": hyper, "preset": preset}
    if branches is not None:  # a model over concatenated (or replicated) branches is another trial
        out["branches"] = list(branches)
    return out


def trial_hashes(result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> list[str]:
    """The config hash of each of `result`'s configs."""
    return [config_hash(trial_config(result, ci, preset, test_corruption)) for ci in range(len(result.configs))]


def result_rows(result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> list[dict[str, Any]]:
    """Tidy database rows of every (config, fold, seed, split) of `result`."""
    hashes = trial_hashes(result, preset, test_corruption)
    out = []
    for r in result.rows:
        hyper = result.configs[r["config"]]
        out.append({
            "config_hash": hashes[r["config"]], "dataset": result.dataset, "mode": result.protocol.mode,
            "preset": preset, "fusion": result.fusion, "features": result.features,
            "feature_hashes": result.feature_hashes, "test_corruption": test_corruption, "hyper": hyper,
            "hidden": hyper.get("hidden"), "lr": hyper.get("lr"), "dropout": hyper.get("dropout"),
            "weight_decay": hyper.get("weight_decay"), "epochs": result.protocol.epochs,
            "batch_size": result.protocol.batch_size, "fold": r["fold"], "seed": r["seed"], "split": r["split"],
            "acc": r.get("acc"), "waf": r.get("waf"), "mse": r.get("mse"), "score": r.get("score"), "n": r.get("n"),
            "best_epoch": r.get("best_epoch"), "seconds": r.get("seconds"),
        })
    return out


def output_rows(result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> list[dict[str, Any]]:
    """Per (config, seed, split) of the fold-averaged prediction: the confusion matrix (labelled rows only) and the
    mean attention weight per branch (fusions that have them); 'cv' uses the out-of-fold predictions."""
    hashes = trial_hashes(result, preset, test_corruption)
    C = len(result.classes)
    out = []

    def one(ci: int, seed: int, split: str, logits: np.ndarray | None, true: np.ndarray | None,
            attention: np.ndarray | None) -> None:
        row: dict[str, Any] = {"config_hash": hashes[ci], "seed": seed, "split": split}
        if logits is not None and true is not None and C:
            lab = true >= 0
            if lab.any():
                row["classes"] = list(result.classes)
                row["confusion"] = confusion_matrix(true[lab], logits[lab].argmax(axis=1), C).tolist()
        if attention is not None:
            row["branches"] = list(result.branches)
            row["attention"] = [float(v) for v in attention.reshape(-1, attention.shape[-1]).mean(axis=0)]
        if len(row) > 3:
            out.append(row)

    for (ci, seed), oof in result.heldout_outputs.items():
        one(ci, seed, "cv", oof.get("emotion"), oof.get("true"), oof.get("attention"))
    for (ci, seed, split), t in result.test_outputs.items():
        logits = t.emotion.mean(axis=0) if t.emotion is not None else None
        one(ci, seed, split, logits, result.test_labels[split]["emotion"], t.attention)
    return out


def recorded_rows(result: ExperimentResult, preset: str = "default", test_corruption: str | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, output rows) of `result`: what ResultsDB.add takes (plain dicts, so a Dask worker can ship
    them to the one writer)."""
    return result_rows(result, preset, test_corruption), output_rows(result, preset, test_corruption)


def record(db: ResultsDB, result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> int:
    """Write `result` to the database (rows already there are kept, never duplicated); returns rows added."""
    return db.add(*recorded_rows(result, preset, test_corruption))
