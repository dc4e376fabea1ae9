"""Run one experiment: every (config, fold, seed) model, trained together as one batched module.

The loop (MERTools main-release.py `train_or_eval_model`, without its per-epoch test passes):
  per epoch, per model: its own permutation of its training rows (its own generator), minibatches of
  `batch_size` (the last one smaller), loss = CE (mean over the minibatch) + valence MSE (mean) where the
  dataset has valence, Adam with L2 weight decay; then one forward pass over its selection rows, the
  selection score, and a copy of its weights when the score beats its best (ties keep the earlier epoch,
  as np.argmax does). At the end each model's best weights score its held-out rows (strict mode) and
  every test split, once. K models sit in one module (parameters [K, ...], batched matmuls); a model's
  numbers never depend on the others, so batching changes nothing but speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import FeatureSet
from trainer.metrics import Scores, score
from trainer.models import build_model, model_class
from trainer.models.base import ModelSpec
from trainer.optim import BatchedAdam
from trainer.protocol import HYPER, Fold, Plan, Protocol, ProtocolError

Progress = Callable[[str, dict[str, Any]], None]
EVAL_CHUNK_BYTES = 16 << 20       # inputs gathered at once for a forward pass without gradients
MODEL_BUDGET_BYTES = 2 << 30      # parameters + gradients + Adam state + best copy of one batched module


# ---------------------------------------------------------------------------------------------- results
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
    heldout_outputs: dict[tuple[int, int], dict[str, np.ndarray]]  # (config, seed) -> rows + out-of-fold outputs
    test_ids: dict[str, np.ndarray]
    test_labels: dict[str, dict[str, np.ndarray | None]]         # split -> {'emotion': codes, 'valence': values}
    timings: dict[str, float]
    counts: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

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


# ---------------------------------------------------------------------------------------------- entry point
def run_experiment(features: FeatureSet, fusion: str = "attention", protocol: Protocol | None = None,
                   configs: Sequence[dict[str, Any]] | dict[str, Any] | None = None, *,
                   max_models: int | None = None, progress: Progress | None = None) -> ExperimentResult:
    """Train and score every (config, fold, seed) model of one feature set; see ExperimentResult.

    configs: one dict or a list of dicts of hyper-parameters (hidden, dropout, lr, weight_decay; missing keys
    come from the protocol) and model options (e.g. softmax=True for attention). Configs with the same hidden
    size and options train together with all their folds and seeds as one batched module of at most
    `max_models` models (default: as many as fit MODEL_BUDGET_BYTES). progress(event, info) is called with
    'group' and 'epoch' events.
    """
    t_start = time.perf_counter()
    protocol = protocol or Protocol()
    model_class(fusion)  # unknown names fail here, before any work
    cfgs = normalise_configs(configs, protocol)
    selection = protocol.selection_for(features)
    plans = {s: protocol.plan(features, s) for s in protocol.seeds}
    first = plans[protocol.seeds[0]]
    n_classes = 0 if selection == "sentiment" else len(features.classes) or (
        int(features.emotion.max()) + 1 if features.emotion is not None else 0)
    has_valence = False
    if features.valence is not None:
        has_valence = bool(np.isfinite(features.valence.numpy()[first.training_rows]).any())
    if selection == "waf-0.25mse" and not has_valence:
        selection = "waf"
    if selection == "sentiment" and not has_valence:
        raise ProtocolError(f"dataset {features.dataset}: sentiment selection needs sentiment labels on training rows")
    warnings = list(features.warnings)
    for s, pl in plans.items():
        warnings.extend(pl.notes)
    if n_classes:
        warnings.extend(_absent_classes(features, plans, n_classes))

    jobs = [Job(ci, s, f, cfg, model_seed(cfg, f.index, s))
            for ci, cfg in enumerate(cfgs) for s in protocol.seeds for f in plans[s].folds]
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(_group_key(j.hyper), []).append(j)
    device = torch.device(protocol.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dims = {k: f.dim for k, f in features.features.items()}

    outcomes: dict[int, Outcome] = {}
    timings = {"train": 0.0, "select": 0.0, "final": 0.0, "setup": 0.0}
    with _runtime(protocol, device):
        fs = features if device.type == "cpu" else features.to(device)
        batches = []
        for g in groups.values():
            per_model = _model_bytes(features, dims, int(g[0].hyper["hidden"]), n_classes)
            chunk = max_models or max(1, MODEL_BUDGET_BYTES // max(1, per_model))
            batches += [g[i:i + chunk] for i in range(0, len(g), chunk)]
        for gi, batch in enumerate(batches):
            if progress:
                progress("group", {"group": gi, "groups": len(batches), "models": len(batch)})
            trainer = _GroupTrainer(batch, fs, fusion, protocol, selection, n_classes, has_valence, device,
                                    plans, progress, gi)
            res = trainer.run()
            for j, o in zip(batch, res):
                outcomes[id(j)] = o
            for k, v in trainer.timings.items():
                timings[k] += v
    timings["total"] = time.perf_counter() - t_start
    return _assemble(features, fusion, protocol, cfgs, selection, plans, jobs, outcomes, timings, warnings,
                     n_classes, has_valence)


def normalise_configs(configs: Sequence[dict[str, Any]] | dict[str, Any] | None,
                      protocol: Protocol) -> list[dict[str, Any]]:
    """Full config dicts: protocol defaults for hidden/dropout/lr/weight_decay, then the given keys."""
    if configs is None:
        configs = [{}]
    elif isinstance(configs, dict):
        configs = [configs]
    out = []
    for c in configs:
        full = {**protocol.hyper(), **dict(c)}
        try:
            full["hidden"] = int(full["hidden"])
            for k in ("dropout", "lr", "weight_decay"):
                full[k] = float(full[k])
        except (TypeError, ValueError):
            raise ProtocolError(f"config {dict(c)}: hidden, dropout, lr and weight_decay must be numbers") from None
        if full["hidden"] < 1 or not 0 <= full["dropout"] < 1 or full["lr"] <= 0 or full["weight_decay"] < 0:
            raise ProtocolError(f"config {dict(c)}: needs hidden >= 1, 0 <= dropout < 1, lr > 0, weight_decay >= 0")
        out.append(full)
    if not out:
        raise ProtocolError("no configs given")
    return out


def model_seed(config: dict[str, Any], fold: int, seed: int) -> int:
    """The seed of one model's generators: a hash of (config, fold, seed), stable across runs and grids."""
    blob = json.dumps([config, int(fold), int(seed)], sort_keys=True, default=str)
    return int(hashlib.sha256(blob.encode()).hexdigest()[:15], 16)


# ---------------------------------------------------------------------------------------------- internals
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


def _group_key(hyper: dict[str, Any]) -> str:
    return json.dumps({"hidden": hyper["hidden"], **{k: v for k, v in hyper.items() if k not in HYPER}},
                      sort_keys=True, default=str)


def _model_bytes(features: FeatureSet, dims: dict[str, int], hidden: int, n_classes: int) -> int:
    M = len(features.branches)
    d = sum(dims[p] for b in features.branches for p in b.parts)
    n_params = hidden * (d + 3 * M * hidden + 3 * hidden + n_classes + M + 1)
    return 5 * 4 * n_params


def _absent_classes(features: FeatureSet, plans: dict[int, Plan], n_classes: int) -> list[str]:
    out = []
    y = features.emotion.numpy() if features.emotion is not None else None
    if y is None:
        return out
    for s, pl in plans.items():
        for f in pl.folds:
            present = set(np.unique(y[f.train]).tolist())
            missing = [features.classes[c] if c < len(features.classes) else str(c)
                       for c in range(n_classes) if c not in present]
            if missing:
                out.append(f"seed {s} {f.name}: class(es) {', '.join(missing)} absent from the training rows")
    return out


@contextlib.contextmanager
def _runtime(protocol: Protocol, device: torch.device) -> Iterator[None]:
    threads = torch.get_num_threads()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if protocol.threads:
        torch.set_num_threads(int(protocol.threads))
    if protocol.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)


class _GroupTrainer:
    """K compatible models (same hidden size and model options) trained as one batched module."""

    def __init__(self, jobs: list[Job], fs: FeatureSet, fusion: str, protocol: Protocol, selection: str,
                 n_classes: int, has_valence: bool, device: torch.device, plans: dict[int, Plan],
                 progress: Progress | None, group_index: int) -> None:
        t0 = time.perf_counter()
        self.jobs, self.fs, self.p, self.selection = jobs, fs, protocol, selection
        self.n_classes, self.has_valence, self.device = n_classes, has_valence, device
        self.plans, self.progress, self.group_index = plans, progress, group_index
        self.K = K = len(jobs)
        self.timings = {"train": 0.0, "select": 0.0, "final": 0.0, "setup": 0.0}
        self.init_gens = [torch.Generator().manual_seed(j.model_seed) for j in jobs]
        self.drop_gens = [torch.Generator(device=device).manual_seed(j.model_seed ^ 0x5DEECE66D) for j in jobs]
        spec = ModelSpec(branches={b.name: b.parts for b in fs.branches},
                         dims={k: f.dim for k, f in fs.features.items()}, n_classes=n_classes,
                         n_valence=1 if has_valence else 0, hidden=int(jobs[0].hyper["hidden"]),
                         dropout=[j.hyper["dropout"] for j in jobs], init_generators=self.init_gens,
                         drop_generators=self.drop_gens, device=device)
        try:
            self.model = build_model(fusion, spec, **jobs[0].options)
        except TypeError as exc:
            raise ProtocolError(f"fusion '{fusion}' does not take option(s) {sorted(jobs[0].options)}: {exc}") from None
        self.params = list(self.model.parameters())
        self.opt = BatchedAdam(self.params, [j.hyper["lr"] for j in jobs], [j.hyper["weight_decay"] for j in jobs])
        self.feature_names = list(fs.features)
        self.X = {k: f.x for k, f in fs.features.items()}
        self.XT = {k: f.x_test for k, f in fs.features.items()}
        self.avail = {b.name: fs.available(b).to(device) for b in fs.branches}
        self.avail_test = {b.name: fs.available(b, test=True).to(device) for b in fs.branches}
        self.y_emo = fs.emotion.to(device) if fs.emotion is not None else None
        self.y_val = fs.valence.to(device) if fs.valence is not None else None
        self.y_emo_np = fs.emotion.numpy() if fs.emotion is not None else None
        self.y_val_np = fs.valence.numpy() if fs.valence is not None else None
        # standardisation: each model's mean/std of its own training rows (strict mode)
        self.std: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if protocol.standardizes():
            self.std = {}
            for name, x in self.X.items():
                mu = torch.empty(K, 1, x.shape[1], device=device)
                inv = torch.empty_like(mu)
                for k, j in enumerate(jobs):
                    rows = torch.from_numpy(j.fold.train).to(device)
                    xs = x.index_select(0, rows).double()
                    m, sd = xs.mean(0), xs.std(0, unbiased=False)
                    mu[k, 0] = m.float()
                    inv[k, 0] = torch.where(sd > 0, 1.0 / sd, torch.ones_like(sd)).float()
                self.std[name] = (mu, inv)
        d_total = sum(f.dim for f in fs.features.values())
        self.eval_chunk = int(max(32, min(8192, EVAL_CHUNK_BYTES // max(1, 4 * K * d_total))))
        self._xbuf: dict[tuple[str, str, int], torch.Tensor] = {}
        self.autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if protocol.bf16
                         else contextlib.nullcontext())
        self.timings["setup"] += time.perf_counter() - t0

    # -------------------------------------------------------------- one epoch of minibatches
    def _epoch_batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[int]]:
        B, K = self.p.batch_size, self.K
        shuffle = self.p.shuffles(self.fs)
        ns = [len(j.fold.train) for j in self.jobs]
        steps = [math.ceil(n / B) for n in ns]
        S = max(steps)
        idx = np.zeros((K, S * B), np.int64)
        w = np.zeros((K, S * B), np.float32)
        for k, j in enumerate(self.jobs):
            n = ns[k]
            order = j.fold.train
            if shuffle:
                order = order[torch.randperm(n, generator=self.init_gens[k]).numpy()]
            idx[k, :n] = order
            sizes = np.minimum(B, n - np.arange(steps[k]) * B)        # rows in each of its minibatches
            w[k, :n] = np.repeat(1.0 / sizes, sizes)
        wv = None
        if self.has_valence:
            have = np.isfinite(self.y_val_np[idx]) & (w > 0)
            cnt = have.reshape(K, S, B).sum(-1, keepdims=True)
            wv = (have.reshape(K, S, B) / np.maximum(cnt, 1)).astype(np.float32)
            wv = torch.from_numpy(wv).to(self.device)
        return (torch.from_numpy(idx.reshape(K, S, B)).to(self.device),
                torch.from_numpy(w.reshape(K, S, B)).to(self.device), wv, steps)

    def _gather(self, flat: torch.Tensor, n: int, test: bool, tag: str) -> dict[str, torch.Tensor]:
        """Rows `flat` ([K * n]) of every feature as [K, n, D] (standardised in strict mode), gathered into
        buffers kept across steps and epochs (the model never modifies its inputs; fresh multi-MB tensors
        cost page faults every time)."""
        src = self.XT if test else self.X
        out = {}
        for name in self.feature_names:
            key = (tag, name, int(flat.shape[0]))
            buf = self._xbuf.get(key)
            if buf is None:
                if len(self._xbuf) > 64:
                    self._xbuf.clear()
                buf = self._xbuf[key] = torch.empty(flat.shape[0], src[name].shape[1], device=self.device)
            x = torch.index_select(src[name], 0, flat, out=buf).view(self.K, n, -1)
            if self.std is not None:
                mu, inv = self.std[name]
                x = x.sub_(mu).mul_(inv)
            out[name] = x
        return out

    def _train_epoch(self) -> None:
        idx, w, wv, steps = self._epoch_batches()
        K, S, B = idx.shape
        y_emo = self.y_emo.clamp(min=0) if self.y_emo is not None else None
        y_val = torch.nan_to_num(self.y_val, nan=0.0) if self.y_val is not None else None
        steps_t = torch.tensor(steps)
        vw = float(self.p.valence_weight)
        self.model.train()
        for s in range(S):
            active = (steps_t > s)
            all_active = bool(active.all())
            self.model.active = None if all_active else active.tolist()
            flat = idx[:, s].reshape(-1)
            inputs = self._gather(flat, B, test=False, tag="train")
            with self.autocast:
                out = self.model(inputs)
            loss = None
            if self.n_classes:
                logits = out["emotion"].float().reshape(K * B, -1)
                ce = F.cross_entropy(logits, y_emo.index_select(0, flat), reduction="none").view(K, B)
                loss = (ce * w[:, s]).sum()
            if self.has_valence:
                diff = out["valence"].float() - y_val.index_select(0, flat).view(K, B)
                lv = (diff * diff * wv[:, s]).sum() * vw
                loss = lv if loss is None else loss + lv
            self.opt.zero_grad()
            loss.backward()
            self.opt.step(None if all_active else active.tolist())
        self.model.active = None

    # -------------------------------------------------------------- forward passes without gradients
    @torch.no_grad()
    def _forward_rows(self, rows: list[np.ndarray], test: bool) -> dict[str, np.ndarray]:
        """Each model on its own rows: outputs [K, max_rows, ...] (rows past a model's count are padding)."""
        self.model.eval()
        K = self.K
        S = max(1, max(len(r) for r in rows))
        idx = np.zeros((K, S), np.int64)
        for k, r in enumerate(rows):
            idx[k, :len(r)] = r
        idx_t = torch.from_numpy(idx).to(self.device)
        avail = self.avail_test if test else self.avail
        partial = {b: not bool(a.all()) for b, a in avail.items()}
        chunks: dict[str, list[torch.Tensor]] = {}
        for c0 in range(0, S, self.eval_chunk):
            ids = idx_t[:, c0:c0 + self.eval_chunk]
            n = ids.shape[1]
            flat = ids.reshape(-1)
            inputs = self._gather(flat, n, test, tag="eval")
            masks = {b: a.index_select(0, flat).view(K, n) for b, a in avail.items() if partial[b]} or None
            with self.autocast:
                out = self.model(inputs, masks)
            for key in ("emotion", "valence", "attention"):
                if key in out:
                    chunks.setdefault(key, []).append(out[key].float())
        return {k: torch.cat(v, dim=1).cpu().numpy() for k, v in chunks.items()}

    @torch.no_grad()
    def _forward_shared(self, rows: np.ndarray, test: bool) -> dict[str, np.ndarray]:
        """Every model on the same rows (test splits): outputs [K, n, ...]."""
        self.model.eval()
        src = self.XT if test else self.X
        avail = self.avail_test if test else self.avail
        rows_t = torch.from_numpy(rows).to(self.device)
        chunks: dict[str, list[torch.Tensor]] = {}
        for c0 in range(0, len(rows), self.eval_chunk):
            r = rows_t[c0:c0 + self.eval_chunk]
            inputs = {}
            for name in self.feature_names:
                x = src[name].index_select(0, r)
                if self.std is not None:
                    mu, inv = self.std[name]
                    x = (x.unsqueeze(0) - mu) * inv
                inputs[name] = x
            masks = {b: a.index_select(0, r) for b, a in avail.items() if not bool(a[r].all())} or None
            with self.autocast:
                out = self.model(inputs, masks)
            for key in ("emotion", "valence", "attention"):
                if key in out:
                    chunks.setdefault(key, []).append(out[key].float().expand(self.K, *out[key].shape[-2:])
                                                      if out[key].dim() == 3 else out[key].float())
        return {k: torch.cat(v, dim=1).cpu().numpy() for k, v in chunks.items()}

    def _score(self, rows: np.ndarray, out: dict[str, np.ndarray], k: int) -> Scores:
        n = len(rows)
        return score(self.selection,
                     emotion=self.y_emo_np[rows] if self.y_emo_np is not None else None,
                     logits=out["emotion"][k, :n] if "emotion" in out else None,
                     valence=self.y_val_np[rows] if (self.y_val_np is not None and self.has_valence) else None,
                     valence_pred=out["valence"][k, :n] if "valence" in out else None)

    # -------------------------------------------------------------- the whole run
    def run(self) -> list[Outcome]:
        K, E = self.K, self.p.epochs
        best = [-math.inf] * K
        best_epoch = [0] * K
        best_select: list[Scores] = [Scores()] * K
        best_out: list[dict[str, np.ndarray]] = [{} for _ in range(K)]
        curves = np.full((K, E), np.nan)
        snapshot = [p.detach().clone() for p in self.params]
        select_rows = [j.fold.select for j in self.jobs]
        select_test = self.jobs[0].fold.select_test
        for e in range(E):
            t0 = time.perf_counter()
            self._train_epoch()
            t1 = time.perf_counter()
            out = self._forward_rows(select_rows, select_test)
            improved = []
            for k in range(K):
                sc = self._score(select_rows[k], out, k)
                curves[k, e] = sc.score
                if math.isfinite(sc.score) and sc.score > best[k]:
                    best[k], best_epoch[k], best_select[k] = sc.score, e + 1, sc
                    best_out[k] = {key: v[k, :len(select_rows[k])].copy() for key, v in out.items()}
                    improved.append(k)
            if improved:
                with torch.no_grad():
                    for p, sp in zip(self.params, snapshot):
                        if len(improved) == K:
                            sp.copy_(p)
                        else:
                            for k in improved:
                                sp[k].copy_(p[k])
            t2 = time.perf_counter()
            self.timings["train"] += t1 - t0
            self.timings["select"] += t2 - t1
            if self.progress:
                self.progress("epoch", {"group": self.group_index, "epoch": e + 1, "epochs": E, "models": K,
                                        "best": float(np.nanmax(best)) if any(map(math.isfinite, best)) else None,
                                        "seconds": t2 - t0})
        t0 = time.perf_counter()
        with torch.no_grad():
            for p, sp in zip(self.params, snapshot):
                for k in range(K):
                    if best_epoch[k] == 0:  # never scored (no labelled selection rows): keep the last epoch
                        sp[k].copy_(p[k])
                p.copy_(sp)
        for k in range(K):
            if best_epoch[k] == 0:
                best_epoch[k] = E
        # held-out rows: in mertools mode they are the selection rows, scored at the best epoch already
        if self.p.mode == "strict":
            held_rows = [j.fold.heldout for j in self.jobs]
            hout = self._forward_rows(held_rows, self.jobs[0].fold.heldout_test)
            heldout = [self._score(held_rows[k], hout, k) for k in range(K)]
            heldout_out = [{key: v[k, :len(held_rows[k])].copy() for key, v in hout.items()} for k in range(K)]
        else:
            heldout, heldout_out = best_select, best_out
        plan_tests = self.plans[self.jobs[0].seed].tests
        tests: list[dict[str, dict[str, np.ndarray | None]]] = [{} for _ in range(K)]
        for split, rows in plan_tests.items():
            tout = self._forward_shared(rows, test=True)
            for k in range(K):
                tests[k][split] = {key: (tout[key][k].copy() if key in tout else None)
                                   for key in ("emotion", "valence", "attention")}
        self.timings["final"] += time.perf_counter() - t0
        seconds = sum(self.timings.values()) / K
        return [Outcome(best_epoch[k], curves[k], best_select[k], heldout[k], heldout_out[k], tests[k], seconds)
                for k in range(K)]


def _assemble(fs: FeatureSet, fusion: str, protocol: Protocol, cfgs: list[dict[str, Any]], selection: str,
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
        total = sum(o.seconds for _, o in items)
        for j, o in items:
            selected[(ci, j.fold.index, seed)] = o.best_epoch
            curves[(ci, j.fold.index, seed)] = o.curve
            rows.append(row(ci, j.fold.index, seed, "cv", o.heldout, o.best_epoch, o.seconds))
            if protocol.mode == "strict":
                rows.append(row(ci, j.fold.index, seed, "inner", o.select, o.best_epoch, o.seconds))
        for split in (["cv", "inner"] if protocol.mode == "strict" else ["cv"]):
            scs = [o.heldout if split == "cv" else o.select for _, o in items]
            rows.append(row(ci, -1, seed, split, _mean_scores(scs), None, total))
        # out-of-fold outputs on the held-out rows
        held_rows = np.concatenate([j.fold.heldout for j, _ in items])
        oof: dict[str, np.ndarray] = {"rows": held_rows, "ids": fs.ids[held_rows],
                                      "fold": np.concatenate([np.full(len(j.fold.heldout), j.fold.index) for j, _ in items])}
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


__all__ = ["run_experiment", "ExperimentResult", "TestOutput", "normalise_configs", "model_seed", "Protocol"]
