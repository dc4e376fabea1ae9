"""Predictions for every sample of a split, streamed from the store in chunks (challenge submissions).

The models are an ExperimentResult's kept modules (`run_experiment(..., keep_models=True)`), trained on the
training rows only; the split's rows are read from the store `chunk` at a time, scored by every fold model,
and the fold-averaged logits (then seeds) give the prediction. Memory holds one chunk of features, whatever
the split's size (MER2024's 115,595 unlabelled clips included).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featstore.errors import FeatstoreError, UnknownNameError
from featstore.store import FeatureStore, KeyName
from trainer.data import FeatureSet, read_key_rows
from trainer.experiment import ExperimentResult


def predict_split(result: ExperimentResult, features: FeatureSet, store: FeatureStore, split: str,
                  config: int = 0, chunk: int = 4096) -> Iterator[dict[str, Any]]:
    """Yield per chunk {'ids', 'logits' [n, C] (fold- then seed-averaged), 'probs', 'pred', 'valence'}."""
    if not result.models:
        raise FeatstoreError("the result kept no models; run it with keep_models=True")
    subsets = store.subsets(features.dataset)
    if split not in subsets:
        raise UnknownNameError(f"subset of {features.dataset}", split, subsets)
    ids_all = store.ids(features.dataset)
    rows = np.flatnonzero(subsets[split])
    branches = {b.name: b.parts for b in features.branches}
    for c0 in range(0, len(rows), chunk):
        r = rows[c0:c0 + chunk]
        inputs, avail = {}, {}
        for name, f in features.features.items():
            layers = None if f.layers == "all" else [int(v) for v in f.layers.split(",")]
            x, ok, _, _ = read_key_rows(store, KeyName(features.dataset, f.encoder, f.test_corruption), r,
                                np.ones(len(r), bool), layers, ids_all)
            inputs[name], avail[name] = x, ok
        masks = {b: torch.stack([avail[p] for p in parts]).all(0) for b, parts in branches.items()}
        masks = {b: m for b, m in masks.items() if not bool(m.all())} or None
        logits: dict[int, list[np.ndarray]] = {}
        valence: dict[int, list[np.ndarray]] = {}
        for keys, trainer in result.models:
            out = trainer.forward_inputs({k: v.to(trainer.device) for k, v in inputs.items()},
                                         {k: v.to(trainer.device) for k, v in masks.items()} if masks else None)
            for k, (ci, seed, _fold) in enumerate(keys):
                if ci != config:
                    continue
                if "emotion" in out:
                    logits.setdefault(seed, []).append(out["emotion"][k].cpu().numpy())
                if "valence" in out:
                    valence.setdefault(seed, []).append(out["valence"][k].cpu().numpy())
        res: dict[str, Any] = {"ids": ids_all[r]}
        if logits:
            lg = np.mean([np.mean(v, axis=0) for v in logits.values()], axis=0)
            probs = torch.softmax(torch.from_numpy(lg).double(), dim=1).numpy()
            res.update(logits=lg, probs=probs, pred=lg.argmax(axis=1))
        if valence:
            res["valence"] = np.mean([np.mean(v, axis=0) for v in valence.values()], axis=0)
        yield res


def write_submission(chunks: Iterator[dict[str, Any]], classes: list[str], path: str | Path,
                     probabilities: bool = False) -> int:
    """Write `name,discrete` (the MER challenge format; valence and per-class probabilities when asked) and
    return the rows written. The file appears only when complete (written beside it, then renamed)."""
    n = 0
    path = Path(path)
    part = path.with_name(path.name + ".part")
    with open(part, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        header_done = False
        for ch in chunks:
            if not header_done:
                header = ["name"] + (["discrete"] if "pred" in ch else []) + (["valence"] if "valence" in ch else [])
                header += [f"prob_{c}" for c in classes] if probabilities and "probs" in ch else []
                w.writerow(header)
                header_done = True
            for i, sid in enumerate(ch["ids"]):
                row: list[Any] = [sid]
                if "pred" in ch:
                    row.append(classes[int(ch["pred"][i])])
                if "valence" in ch:
                    row.append(f"{float(ch['valence'][i]):.6f}")
                if probabilities and "probs" in ch:
                    row += [f"{p:.6f}" for p in ch["probs"][i]]
                w.writerow(row)
                n += 1
    os.replace(part, path)
    return n
