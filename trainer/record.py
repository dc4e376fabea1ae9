"""Turn an ExperimentResult into results-database rows (one per config, fold, seed and split)."""

from __future__ import annotations

from typing import Any

from trainer.fit import ExperimentResult
from trainer.results import ResultsDB, config_hash

# Protocol fields that do not change a trial's outcome (where or how fast it runs), left out of its hash.
NOT_DEFINING = ("seeds", "threads", "device")


def trial_config(result: ExperimentResult, config: int, preset: str = "default",
                 test_corruption: str | None = None) -> dict[str, Any]:
    """Everything that defines one trial: dataset, features and their store spec hashes, fusion, protocol, hyper."""
    protocol = {k: v for k, v in result.protocol.as_dict().items() if k not in NOT_DEFINING}
    return {"dataset": result.dataset, "features": result.features, "feature_hashes": result.feature_hashes,
            "test_corruption": test_corruption, "fusion": result.fusion, "protocol": protocol,
            "hyper": result.configs[config], "preset": preset}


def result_rows(result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> list[dict[str, Any]]:
    """Tidy database rows of every (config, fold, seed, split) of `result`."""
    hashes = {ci: config_hash(trial_config(result, ci, preset, test_corruption)) for ci in range(len(result.configs))}
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


def record(db: ResultsDB, result: ExperimentResult, preset: str = "default", test_corruption: str | None = None) -> int:
    """Write `result` to the database (rows already there are kept, never duplicated); returns rows added."""
    return db.add(result_rows(result, preset, test_corruption))
