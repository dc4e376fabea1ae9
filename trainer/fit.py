"""Run one experiment: every (config, fold, seed) model, trained together as one batched module.

The loop (MERTools main-release.py `train_or_eval_model`, without its per-epoch test passes):
  per epoch, per model: its own permutation of its training rows (its own generator), minibatches of
  `batch_size` (the last one smaller), loss = CE (mean over the minibatch) + valence MSE (mean) where the
  dataset has valence (+ the model's own `aux_loss` [K] when its output has one), Adam with L2 weight decay; then one forward pass over its selection rows, the
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
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer import native
from trainer.data import FeatureSet
from trainer.experiment import ExperimentResult, Job, Outcome, TestOutput, assemble
from trainer.metrics import Scores, score
from trainer.models import build_model, model_class
from trainer.models.base import ModelSpec
from trainer.models.layers import length_key, time_mask
from trainer.optim import BatchedAdam
from trainer.protocol import HYPER, Plan, Protocol, ProtocolError

Progress = Callable[[str, dict[str, Any]], None]
EVAL_CHUNK_BYTES = 128 << 20      # inputs gathered at once for a forward pass without gradients (fewer, longer
#                                   chunks: a grid of 40 hidden-256 models scores its rows ~25% faster than at 16 MB)
MODEL_BUDGET_BYTES = 2 << 30      # parameters + gradients + Adam state + best copy of one batched module


# ---------------------------------------------------------------------------------------------- entry point
def run_experiment(features: FeatureSet, fusion: str = "attention", protocol: Protocol | None = None,
                   configs: Sequence[dict[str, Any]] | dict[str, Any] | None = None, *,
                   max_models: int | None = None, progress: Progress | None = None,
                   keep_models: bool = False) -> ExperimentResult:
    """Train and score every (config, fold, seed) model of one feature set; see ExperimentResult.

    configs: one dict or a list of dicts of hyper-parameters (hidden, dropout, lr, weight_decay; missing keys
    come from the protocol) and model options (e.g. softmax=True for attention). Configs with the same hidden
    size and options train together with all their folds and seeds as batched modules of at most `max_models`
    models (default: as many as fit MODEL_BUDGET_BYTES): as few modules as that allows, of even sizes, one after
    another (each freed before the next is built). progress(event, info) is called with
    'group' and 'epoch' events. keep_models: keep each batched module at its selected epochs in
    `result.models` (for trainer.predict, which scores rows streamed from the store).
    """
    t_start = time.perf_counter()
    protocol = protocol or Protocol()
    convex = getattr(model_class(fusion), "convex", False)  # unknown names fail here, before any work; convex:
    notes = []                                              # the linear baseline, direct fits, no minibatches
    if convex and protocol.mode == "strict" and not protocol.inner_fraction:
        protocol = protocol.replace(inner_fraction=Protocol.inner_fraction)
        notes.append(f"fusion '{fusion}' chooses its regularisation on selection rows: an inner split of "
                     f"{Protocol.inner_fraction:.0%} of each training fold (inner_fraction 0 leaves none)")
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
    warnings = list(features.warnings) + notes
    for s, pl in plans.items():
        warnings.extend(pl.notes)
    if not convex:
        protocol = _fit_batch_size(protocol, plans, warnings)
    if n_classes:
        warnings.extend(_absent_classes(features, plans, n_classes))

    jobs = [Job(ci, s, f, cfg, model_seed(cfg, f.index, s))
            for ci, cfg in enumerate(cfgs) for s in protocol.seeds for f in plans[s].folds]
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(_group_key(j.hyper), []).append(j)
    device = torch.device(protocol.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dims = {k: f.dim for k, f in features.features.items()}

    has_bf16 = bool(protocol.train_bf16 or protocol.bf16) and native_bf16(device)   # read once per run
    low_bf16 = bool(protocol.train_bf16) and has_bf16
    if protocol.train_bf16 and not low_bf16:
        warnings.append(f"train_bf16: this {device.type} has no native bfloat16 matmuls (emulated ones are slower than "
                        f"float32), so training ran in float32")
    if protocol.bf16 and not has_bf16:     # honoured (its numbers are asked for), but said
        warnings.append(f"bf16: this {device.type} has no native bfloat16 matmuls, so autocast emulated them: a grid "
                        f"ran 30x slower than in float32 on an AVX2 CPU (benchmarks/RESULTS.md); drop bf16 for speed")
    why = None if device.type != "cpu" or low_bf16 or protocol.bf16 or convex or \
        getattr(model_class(fusion), "level", "utt") == "seq" else native.unavailable()
    if why and "FEATSTORE_NATIVE=0" not in why:      # switched off on purpose: nothing to say
        warnings.append(f"the data layers and the attention trunk ran on the PyTorch path, about 1.3x slower: "
                        f"trainer.native's kernels are unavailable, {why}")
    outcomes: dict[int, Outcome] = {}
    moments: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}   # standardisation, by training rows
    kept: list[tuple[list[tuple[int, int, int]], _GroupTrainer]] = []
    timings = {"train": 0.0, "select": 0.0, "final": 0.0, "setup": 0.0}
    if convex:
        from trainer.linear import fit_jobs

        if keep_models:
            raise ProtocolError(f"fusion '{fusion}' keeps no torch models to stream predictions with; use another")
        outcomes = fit_jobs(features, jobs, plans, selection, n_classes, has_valence)
        timings["train"] = time.perf_counter() - t_start
        timings["total"] = timings["train"]
        return assemble(features, fusion, protocol, cfgs, selection, plans, jobs, outcomes, timings, warnings,
                        n_classes, has_valence)
    with _runtime(protocol, device):
        fs = features if device.type == "cpu" else features.to(device)
        batches = []
        for g in groups.values():
            # models sharing lr and weight decay side by side: BatchedAdam steps each run of them in one call (80
            # models of 16 configs in config order took 16 calls a step, sorted 6; stable, so a config's folds and
            # seeds stay together)
            g = sorted(g, key=lambda j: (j.hyper["lr"], j.hyper["weight_decay"]))
            per_model = _model_bytes(features, dims, int(g[0].hyper["hidden"]), n_classes, low_bf16)
            chunk = max_models or max(1, MODEL_BUDGET_BYTES // max(1, per_model))
            n = -(-len(g) // chunk)       # as few modules as fit, of even sizes (90 models: 30 x 3, not 41 + 41 + 8)
            batches += [g[i * len(g) // n:(i + 1) * len(g) // n] for i in range(n)]
        for gi, batch in enumerate(batches):
            if progress:
                progress("group", {"group": gi, "groups": len(batches), "models": len(batch)})
            trainer = _GroupTrainer(batch, fs, fusion, protocol, selection, n_classes, has_valence, device,
                                    plans, progress, gi, moments, torch.bfloat16 if low_bf16 else None)
            res = trainer.run()
            warnings.extend(trainer.notes)
            for j, o in zip(batch, res):
                outcomes[id(j)] = o
            if keep_models:
                trainer.release_buffers()
                kept.append(([(j.config, j.seed, j.fold.index) for j in batch], trainer))
            for k, v in trainer.timings.items():
                timings[k] += v
            # free this group's parameters, moments and buffers before the next group allocates its own: memory
            # freed a moment ago is reused at once, while memory this process has not touched lately costs ~2 ms
            # a MB of page faults on these VMs (the next group's set-up took seconds)
            del trainer
    timings["total"] = time.perf_counter() - t_start
    result = assemble(features, fusion, protocol, cfgs, selection, plans, jobs, outcomes, timings, warnings,
                      n_classes, has_valence)
    result.models = kept
    return result


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively: a CUDA GPU that supports bf16, or an x86 CPU with
    AVX512-BF16 or AMX-BF16 (Linux: the flags of /proc/cpuinfo). Elsewhere oneDNN emulates bf16, slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def _fit_batch_size(protocol: Protocol, plans: dict[int, Plan], warnings: list[str]) -> Protocol:
    """With `min_steps` set (a preset's large batches), a batch too large for the smallest training fold falls
    back to the largest size giving that many minibatches an epoch, and a warning says so."""
    if not protocol.min_steps:
        return protocol
    rows = min(len(f.train) for pl in plans.values() for f in pl.folds)
    if rows >= protocol.batch_size * protocol.min_steps:
        return protocol
    batch = max(1, rows // protocol.min_steps)
    warnings.append(f"batch size {protocol.batch_size} is too large for {rows} training rows per fold "
                    f"({protocol.min_steps} minibatches an epoch at least): using batch size {batch}")
    return protocol.replace(batch_size=batch)


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
def _group_key(hyper: dict[str, Any]) -> str:
    return json.dumps({"hidden": hyper["hidden"], **{k: v for k, v in hyper.items() if k not in HYPER}},
                      sort_keys=True, default=str)


def _model_bytes(features: FeatureSet, dims: dict[str, int], hidden: int, n_classes: int,
                 low_copies: bool = False) -> int:
    """Bytes of one model in a batched module: parameters, gradients, Adam's two moments and the best copy (float32),
    plus the bf16 copies of the data weights and their gradients when the data layers run in bf16."""
    M = len(features.branches)
    d = sum(dims[p] for b in features.branches for p in b.parts)
    n_params = hidden * (d + 3 * M * hidden + 3 * hidden + n_classes + M + 1)
    return 5 * 4 * n_params + (2 * 2 * hidden * d if low_copies else 0)


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


def _moments(x: torch.Tensor, row_sets: Sequence[np.ndarray], lengths: torch.Tensor | None,
             chunk_bytes: int = 1 << 25) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and (biased) std, float64, of x over each set of rows in `row_sets` (over the row axis and, for
    sequences [n, T, D] with `lengths`, over their real steps only), all sets in one pass over their rows.

    Rows are read in chunks of ~32 MB into reused float64 buffers; deviations from a centre c (the mean of the
    first chunk) and their squares are summed per set by one matrix product with the sets' 0/1 membership,
    so var = E[(x - c)^2] - (E[x] - c)^2 loses no precision to a large mean. One pass over the rows that any set
    uses, whatever the number of sets: the five folds of a run read the training rows once, not twice per fold."""
    dev, D = x.device, x.shape[-1]
    sets = [np.asarray(r, np.int64) for r in row_sets]
    union = torch.from_numpy(np.unique(np.concatenate(sets))).to(dev)
    member = torch.zeros(len(sets), x.shape[0], dtype=torch.float64, device=dev)
    for i, r in enumerate(sets):
        member[i, torch.from_numpy(r).to(dev)] = 1.0
    # values counted per set: its rows, or their real steps
    count = (member.sum(1) if lengths is None else member @ lengths.to(torch.float64)).unsqueeze(1)
    s1 = torch.zeros(len(sets), D, dtype=torch.float64, device=dev)
    s2 = torch.zeros_like(s1)
    centre: torch.Tensor | None = None
    gathered = buf = torch.empty(0, dtype=torch.float64, device=dev)
    chunk = max(1, chunk_bytes // (8 * max(1, int(np.prod(x.shape[1:])))))
    for c0 in range(0, len(union), chunk):
        r = union[c0:c0 + chunk]
        if buf.shape[0] != len(r):
            gathered = torch.empty(len(r), *x.shape[1:], dtype=x.dtype, device=dev)
            buf = torch.empty(len(r), *x.shape[1:], dtype=torch.float64, device=dev)
        xs = buf.copy_(torch.index_select(x, 0, r, out=gathered))   # [n, D] or [n, T, D], float64
        valid = None if lengths is None else time_mask(lengths.index_select(0, r), xs.shape[1]).unsqueeze(-1)
        if centre is None:
            centre = xs.mean(0) if valid is None else (xs * valid).sum((0, 1)) / valid.sum().clamp(min=1)
        xs.sub_(centre)
        if valid is not None:                              # padding steps count for nothing
            xs.mul_(valid)
        m = member.index_select(1, r)                      # [sets, n]
        s1.addmm_(m, xs if valid is None else xs.sum(1))
        s2.addmm_(m, xs.square_() if valid is None else xs.square_().sum(1))
    if centre is None:                                     # no rows at all
        centre = torch.zeros(D, dtype=torch.float64, device=dev)
    d, sq = s1 / count.clamp(min=1), s2 / count.clamp(min=1)
    return [(centre + d[i], (sq[i] - d[i] * d[i]).clamp(min=0).sqrt()) for i in range(len(sets))]


@contextlib.contextmanager
def _runtime(protocol: Protocol, device: torch.device) -> Iterator[None]:
    threads = torch.get_num_threads()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if protocol.threads:
        torch.set_num_threads(int(protocol.threads))
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if protocol.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _deterministic(True, warn_only=True)
        # deterministic mode also NaN-fills every torch.empty (~0.35 s of a fast-preset run here); the trainer
        # writes every buffer before reading it, so results are the same without the fill
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _deterministic(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _deterministic(mode: bool, warn_only: bool) -> None:
    """torch.use_deterministic_algorithms, without importing torch._inductor only to copy the flag into its
    config (1.8 s of every `trainer` command here); where inductor is loaded already, the public call."""
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


class _GroupTrainer:
    """K compatible models (same hidden size and model options) trained as one batched module."""

    def __init__(self, jobs: list[Job], fs: FeatureSet, fusion: str, protocol: Protocol, selection: str,
                 n_classes: int, has_valence: bool, device: torch.device, plans: dict[int, Plan],
                 progress: Progress | None, group_index: int,
                 moments: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 data_dtype: torch.dtype | None = None) -> None:
        """`moments`: standardisation statistics by (feature, training rows), shared by the groups of one run.
        `data_dtype`: bfloat16 for Protocol.train_bf16 on native hardware: the data layers multiply kept bf16 copies
        and the rest of each training step runs under bf16 autocast (evaluation stays float32); None: float32."""
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
                         drop_generators=self.drop_gens, device=device,
                         modalities={b.name: b.modality for b in fs.branches})
        try:
            self.model = build_model(fusion, spec, **jobs[0].options)
        except TypeError as exc:
            raise ProtocolError(f"fusion '{fusion}' does not take option(s) {sorted(jobs[0].options)}: {exc}") from None
        self.level = getattr(self.model, "level", "utt")
        if self.level == "seq" and fs.level != "seq":
            raise ProtocolError(f"fusion '{fusion}' is a sequence model: it needs frame-level features (trainer "
                                f"--level frame; featstore build ... --level frame)")
        if self.level == "seq" and getattr(self.model, "aligned", None) and not fs.aligned:
            raise ProtocolError(f"fusion '{fusion}' needs aligned sequences (every modality on one time axis): "
                                f"add --aligned")
        self.params = list(self.model.parameters())
        self.base_lr = [float(j.hyper["lr"]) for j in jobs]
        self.opt = BatchedAdam(self.params, list(self.base_lr), [j.hyper["weight_decay"] for j in jobs])
        self.model.defer_data_grads = True   # float32 data layers on a CPU: weight gradient + Adam in one pass
        self.stopped = [False] * K          # early stopping (protocol.patience): a stopped model takes no steps
        self.epoch = 0
        self.notes: list[str] = []
        self.feature_names = list(fs.features)
        seq = self.level == "seq"
        self.X = {k: (f.seq if seq else f.x) for k, f in fs.features.items()}
        self.XT = {k: (f.seq_test if seq else f.x_test) for k, f in fs.features.items()}
        # sequence lengths ride along with the values, under their own input key
        self.LEN = {length_key(k): f.lengths.to(device) for k, f in fs.features.items() if seq}
        self.LENT = {length_key(k): f.lengths_test.to(device) for k, f in fs.features.items() if seq}
        self.avail = {b.name: fs.available(b).to(device) for b in fs.branches}
        self.avail_test = {b.name: fs.available(b, test=True).to(device) for b in fs.branches}
        self.y_emo = fs.emotion.to(device) if fs.emotion is not None else None
        self.y_val = fs.valence.to(device) if fs.valence is not None else None
        self.y_emo_np = fs.emotion.numpy() if fs.emotion is not None else None
        self.y_val_np = fs.valence.numpy() if fs.valence is not None else None
        # standardisation: each model's mean/std of its own training rows (strict mode), applied as one pass
        # x * (1 / std) + (-mean / std): the (shift, inv) pairs, [K, 1, D]
        self.std: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if protocol.standardizes():
            self.std = {}
            moments = {} if moments is None else moments
            digests = [hashlib.sha1(j.fold.train.tobytes()).hexdigest() for j in jobs]
            for name, x in self.X.items():
                shift = torch.empty(K, *([1] * (x.dim() - 1)), x.shape[-1], device=device)
                inv = torch.empty_like(shift)
                # models on the same training rows (folds of other configs, a grid) share them; the rest in one pass
                todo = {d: j.fold.train for d, j in zip(digests, jobs) if (name, d) not in moments}
                if todo:
                    stats = _moments(x, list(todo.values()), self.LEN[length_key(name)] if seq else None)
                    moments.update({(name, d): s for d, s in zip(todo, stats)})
                for k, d in enumerate(digests):
                    m, sd = moments[(name, d)]
                    inv64 = torch.where(sd > 0, 1.0 / sd, torch.ones_like(sd))
                    inv[k].view(-1).copy_(inv64.float())
                    shift[k].view(-1).copy_((-m * inv64).float())
                self.std[name] = (shift, inv)
        d_total = sum(int(np.prod(x.shape[1:])) for x in self.X.values())
        self.eval_chunk = int(max(32, min(8192, EVAL_CHUNK_BYTES // max(1, 4 * K * d_total))))
        self._xbuf: dict[tuple[str, str, int], torch.Tensor] = {}
        bf16 = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        self.autocast = bf16 if protocol.bf16 else contextlib.nullcontext()          # every forward pass
        self.train_autocast = bf16 if data_dtype is not None else self.autocast     # training steps only
        # float32 training steps: each step's inputs may go to the model a step ahead (BatchedModel.prefetch);
        # under autocast the data layers run in bf16 from this step's inputs instead
        self.prefetch = data_dtype is None and not protocol.bf16
        self.model.data_dtype = data_dtype
        self.timings["setup"] += time.perf_counter() - t0

    # -------------------------------------------------------------- one epoch of minibatches
    def _epoch_batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[int]]:
        B, K = self.p.batch_size, self.K
        shuffle = self.p.shuffles(self.fs)
        ns = [len(j.fold.train) for j in self.jobs]
        steps = [0 if stop else math.ceil(n / B) for n, stop in zip(ns, self.stopped)]
        S = max(steps)
        idx = np.zeros((K, S * B), np.int64)
        w = np.zeros((K, S * B), np.float32)
        for k, j in enumerate(self.jobs):
            n = ns[k] if steps[k] else 0
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
            buf = self._buffer((tag, name, int(flat.shape[0])), (flat.shape[0], *src[name].shape[1:]), src[name].dtype)
            x = torch.index_select(src[name], 0, flat, out=buf).view(self.K, n, *src[name].shape[1:])
            if self.std is not None:
                shift, inv = self.std[name]
                x = torch.addcmul(shift, x, inv, out=x)
            out[name] = x
        for name, ln in (self.LENT if test else self.LEN).items():
            out[name] = ln.index_select(0, flat).view(self.K, n)
        return out

    def _train_epoch(self) -> None:
        self._full_steps = [math.ceil(len(j.fold.train) / self.p.batch_size) for j in self.jobs]
        idx, w, wv, steps = self._epoch_batches()
        K, S, B = idx.shape
        y_emo = self.y_emo.clamp(min=0) if self.y_emo is not None else None
        y_val = torch.nan_to_num(self.y_val, nan=0.0) if self.y_val is not None else None
        steps_t = torch.tensor(steps)
        vw = float(self.p.valence_weight)
        self.model.train()
        ahead: dict[str, torch.Tensor] | None = None    # this step's inputs, handed to the model a step ahead
        for s in range(S):
            active = (steps_t > s)
            all_active = bool(active.all())
            self.model.active = None if all_active else active.tolist()
            self.model.row_weight = w[:, s]
            if self.p.schedule == "cosine":   # each model along its own steps of the whole run
                E = self.p.epochs
                self.opt.lr = [lr * self.p.lr_factor((self.epoch * n + s) / max(1, E * n)) if n else lr
                               for lr, n in zip(self.base_lr, self._full_steps)]
            flat = idx[:, s].reshape(-1)
            # two sets of input buffers, by step parity: a step's inputs stay intact until its optimiser step
            inputs = ahead if ahead is not None else self._gather(flat, B, test=False, tag=f"train{s % 2}")
            with self.train_autocast:
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
            if "aux_loss" in out:  # the model's own training terms (MISA, MMIM, MCTN, MFM), [K]
                aux = out["aux_loss"].float()
                aux = (aux if all_active else aux * active.to(aux.device, aux.dtype)).sum()
                loss = aux if loss is None else loss + aux
            self.opt.zero_grad()
            loss.backward()
            ahead = None
            if self.prefetch and s + 1 < S:   # the next step's data-layer products come from this step's Adam pass
                nxt = self._gather(idx[:, s + 1].reshape(-1), B, test=False, tag=f"train{(s + 1) % 2}")
                act_next = steps_t > s + 1
                if self.model.prefetch(nxt, None if bool(act_next.all()) else act_next.tolist()):
                    ahead = nxt
            self.opt.step(None if all_active else active.tolist())
        self.model.active = None
        self.model.row_weight = None

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
        src = self.XT if test else self.X
        avail = self.avail_test if test else self.avail
        rows_t = torch.from_numpy(rows).to(self.device)
        chunks: dict[str, list[torch.Tensor]] = {}
        for c0 in range(0, len(rows), self.eval_chunk):
            r = rows_t[c0:c0 + self.eval_chunk]
            masks = {b: a.index_select(0, r) for b, a in avail.items() if not bool(a[r].all())} or None
            lens = self.LENT if test else self.LEN
            out = self.forward_inputs({name: src[name].index_select(0, r) for name in self.feature_names}
                                      | {name: ln.index_select(0, r) for name, ln in lens.items()}, masks)
            for key, v in out.items():
                chunks.setdefault(key, []).append(v)
        return {k: torch.cat(v, dim=1).cpu().numpy() for k, v in chunks.items()}

    def release_buffers(self) -> None:
        """Drop the gather buffers (a kept module then holds only its parameters and statistics)."""
        self._xbuf.clear()

    @torch.no_grad()
    def forward_inputs(self, inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None
                       ) -> dict[str, torch.Tensor]:
        """Every model on the same inputs {feature: [n, D]} (standardised per model in strict mode), with branch
        availability `masks` {branch: [n] bool}: {'emotion': [K, n, C], 'valence': [K, n], 'attention': ...}."""
        self.model.eval()
        if self.std is not None:
            inputs = {name: (self._standardised(name, x) if name in self.std else x) for name, x in inputs.items()}
        with self.autocast:
            out = self.model(inputs, masks)
        return {key: (out[key].float().expand(self.K, *out[key].shape[-2:]) if out[key].dim() == 3
                      else out[key].float()) for key in ("emotion", "valence", "attention") if key in out}

    def _standardised(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """[n, D] -> [K, n, D]: each model's standardisation of the same rows, x * (1 / std) - mean / std as in
        `_gather`, into a kept buffer (a fresh [K, n, D] tensor per chunk cost ~20 ms of page faults)."""
        shift, inv = self.std[name]
        buf = self._buffer(("shared", name, int(x.shape[0])), (self.K, *x.shape), torch.result_type(x, shift))
        return torch.addcmul(shift, x.unsqueeze(0), inv, out=buf)

    def _buffer(self, key: tuple[str, str, int], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` kept under `key` across steps and epochs (at most 64 kept)."""
        buf = self._xbuf.get(key)
        if buf is None or buf.dtype != dtype:
            if len(self._xbuf) > 64:
                self._xbuf.clear()
            buf = self._xbuf[key] = torch.empty(shape, dtype=dtype, device=self.device)
        return buf

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
        select_rows = [j.fold.select for j in self.jobs]
        select_test = self.jobs[0].fold.select_test
        selecting = any(len(r) for r in select_rows)   # strict inner_fraction 0: none, every model keeps its last epoch
        snapshot = [p.detach().clone() for p in self.params] if selecting else []
        t_start = time.perf_counter()
        trained = 0
        for e in range(E):
            t0 = time.perf_counter()
            self.epoch = e
            self._train_epoch()
            trained = e + 1
            t1 = time.perf_counter()
            out = self._forward_rows(select_rows, select_test) if selecting else {}
            improved = []
            for k in range(K if selecting else 0):
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
            if self.p.patience:
                for k in range(K):
                    if best_epoch[k] and e + 1 - best_epoch[k] >= self.p.patience:
                        self.stopped[k] = True
                if all(self.stopped):
                    self.notes.append(f"early stopping: all {K} models stopped by epoch {e + 1} of {E} (patience "
                                      f"{self.p.patience} on the selection rows)")
                    break
            if self.p.time_budget and time.perf_counter() - t_start >= self.p.time_budget and e + 1 < E:
                running = K - sum(self.stopped)
                kept = "best epochs kept" if any(best_epoch) else "last epochs kept"
                self.notes.append(f"time budget of {self.p.time_budget:g} s reached after epoch {e + 1} of {E}: "
                                  f"{running} of {K} models had not converged (stopped early, {kept})")
                break
        t0 = time.perf_counter()
        with torch.no_grad():
            for p, sp in zip(self.params, snapshot):
                for k in range(K):
                    if best_epoch[k] == 0:  # never scored (no labelled selection rows): keep the last epoch
                        sp[k].copy_(p[k])
                p.copy_(sp)
        for k in range(K):
            if best_epoch[k] == 0:          # the last epoch trained (a time budget may stop before E)
                best_epoch[k] = trained
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


__all__ = ["run_experiment", "ExperimentResult", "TestOutput", "Job", "normalise_configs", "model_seed", "Protocol"]
