"""The evaluation protocol as data: which rows each fold model trains on, selects its epoch on, and is scored on.

Two named modes (DESIGN.md, issue 4):
- `mertools`, the published protocol (MERTools MER2024/main-release.py): 5 random unstratified folds over the
  training subset (first four folds int(n/5) rows, the last the rest), the epoch picked by the held-out fold's
  own score, that best score reported as the fold's CV figure, no feature standardisation; on official
  splits the training rows are not shuffled (MERTools' train DataLoader has no shuffle for MELD/CMU/SIMS);
- `strict`: inside each training fold a random `inner_fraction` of the rows selects the epoch, so the
  held-out fold (or the official val split) is scored once, unbiased; features standardised with each
  model's own training rows only. inner_fraction 0 selects nothing: every model trains on its whole fold
  to the end of a fixed schedule and keeps its last epoch (the fast preset), which is unbiased too.
Folds: `cv5` (any `cvN`) over the training subset, `logo` (leave one group out: IEMOCAP sessions) or
`official` (train / val / test subsets), `auto` picks official when the dataset has a val subset, logo when it
has groups, cv5 otherwise. Test splits: every loaded subset disjoint from the training and validation rows
(or the ones named), scored by every fold model once, at the end.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError
from trainer.data import FeatureSet
from trainer.metrics import SELECTIONS

MODES = ("mertools", "strict")
SCHEDULES = (None, "constant", "cosine")


class ProtocolError(FeatstoreError, ValueError):
    """A protocol that cannot run on this data (the CLI prints it as one line)."""

HYPER = ("hidden", "dropout", "lr", "weight_decay")


@dataclass(frozen=True)
class Protocol:
    """How an experiment is run; the hyper-parameter fields are the defaults of every config."""

    folds: str = "auto"                 # auto | cv5 (cvN) | logo | official
    mode: str = "mertools"              # mertools | strict
    selection: str | None = None        # waf | waf-0.25mse | sentiment; None: the dataset's (catalog)
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-5          # Adam's L2 term (torch.optim.Adam weight_decay), as MERTools --l2
    hidden: int = 128
    dropout: float = 0.5
    seeds: tuple[int, ...] = (0,)
    inner_fraction: float = 0.2         # strict: share of each training fold that selects the epoch; 0: no
                                        # selection, each model trains on the whole fold and keeps its last epoch
    valence_weight: float = 1.0         # loss = CE + valence_weight x MSE (MERTools adds them unweighted)
    shuffle: bool | None = None         # None: as MERTools (shuffled, except official splits in mertools mode)
    standardize: bool | None = None     # None: strict standardises, mertools does not
    test_splits: tuple[str, ...] | None = None  # None: every subset disjoint from the training/val rows
    bf16: bool = False                  # bfloat16 autocast for the forward pass
    threads: int | None = 1             # torch threads during the run (None: leave torch's setting). One thread
                                        # by default: results then do not depend on the core count, and on a
                                        # busy 2-core machine 2 OpenMP threads ran small models 10-70x slower
    device: str | None = None           # None: cuda when available, else cpu
    deterministic: bool = True          # torch.use_deterministic_algorithms during the run
    steps: int | None = None            # sequence models: cap on the time steps of a feature (None: as stored)
    aligned: bool | None = None         # sequence models: one time axis per row (None: the model's requirement)
    # training recipe beyond MERTools' (trainer.presets names sets of these; None = MERTools' behaviour)
    schedule: str | None = None         # None/'constant': fixed lr; 'cosine': linear warm-up then cosine decay to 0
    warmup: float | None = None         # cosine: share of each model's steps spent warming up (default 0)
    patience: int | None = None         # early stopping: a model stops after this many epochs without a better
                                        # selection score (selection rows only: inner split in strict mode)
    time_budget: float | None = None    # seconds of training per batched module; reaching it stops (and says so)
    min_steps: int | None = None        # minibatches per epoch at least: a larger batch falls back (and says so)
    train_bf16: bool | None = None      # training steps multiply in bfloat16: the data layers (each branch's first
                                        # Linear, nearly all the FLOPs) on kept bf16 copies, the other layers under
                                        # autocast; weights, gradients, Adam and evaluation stay float32. Hardware
                                        # without native bf16 matmuls runs float32 (and says so)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ProtocolError(f"unknown protocol mode '{self.mode}'; expected mertools or strict")
        if not (self.folds in ("auto", "logo", "official") or re.fullmatch(r"cv\d+", self.folds)):
            raise ProtocolError(f"unknown folds '{self.folds}'; expected auto, cv5 (cvN), logo or official")
        if self.folds.startswith("cv") and int(self.folds[2:]) < 2:
            raise ProtocolError("cross-validation needs at least 2 folds")
        if self.selection is not None and self.selection not in SELECTIONS:
            raise ProtocolError(f"unknown selection '{self.selection}'; expected one of {', '.join(SELECTIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ProtocolError("epochs and batch_size must be positive")
        if not 0 <= self.inner_fraction < 1:
            raise ProtocolError("inner_fraction must be in [0, 1)")
        if self.mode == "strict" and not self.inner_fraction and self.patience:
            raise ProtocolError("early stopping (patience) needs selection rows; inner_fraction 0 trains every model "
                                "to the end of its schedule")
        if not self.seeds:
            raise ProtocolError("at least one seed is needed")
        if self.steps is not None and self.steps < 1:
            raise ProtocolError(f"steps must be >= 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ProtocolError(f"unknown lr schedule '{self.schedule}'; expected {', '.join(map(str, SCHEDULES[1:]))}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise ProtocolError(f"warmup must be in [0, 1) (a share of the steps), got {self.warmup}")
        for name in ("patience", "min_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ProtocolError(f"{name} must be a positive integer, got {v!r}")
        if not (math.isfinite(self.valence_weight) and self.valence_weight >= 0):
            raise ProtocolError(f"valence_weight must be a finite number >= 0, got {self.valence_weight}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ProtocolError(f"time_budget must be > 0 seconds, got {self.time_budget}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.test_splits is not None:
            object.__setattr__(self, "test_splits", tuple(self.test_splits))

    def lr_factor(self, progress: float) -> float:
        """The lr multiplier at `progress` in [0, 1) of a model's training steps (1 for a constant schedule)."""
        if self.schedule != "cosine":
            return 1.0
        w = self.warmup or 0.0
        if progress < w:
            return (progress + 1e-12) / w
        return 0.5 * (1.0 + math.cos(math.pi * (progress - w) / (1.0 - w)))

    def hyper(self) -> dict[str, Any]:
        """The default config: hidden, dropout, lr, weight_decay."""
        return {k: getattr(self, k) for k in HYPER}

    def replace(self, **changes: Any) -> "Protocol":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ resolution against a dataset
    def fold_kind(self, features: FeatureSet) -> str:
        """cvN | logo | official for this dataset."""
        if self.folds != "auto":
            return self.folds
        if features.val_subset in features.subsets and features.train_subset in features.subsets:
            return "official"
        if features.groups is not None:
            return "logo"
        return "cv5"

    def selection_for(self, features: FeatureSet) -> str:
        return self.selection or features.selection

    def standardizes(self) -> bool:
        return self.mode == "strict" if self.standardize is None else bool(self.standardize)

    def shuffles(self, features: FeatureSet) -> bool:
        if self.shuffle is not None:
            return bool(self.shuffle)
        return not (self.mode == "mertools" and self.fold_kind(features) == "official")

    def plan(self, features: FeatureSet, seed: int) -> "Plan":
        """The folds of one seed (rows are indices into the FeatureSet)."""
        return _plan(self, features, int(seed))


@dataclass
class Fold:
    """One fold model's rows. `*_test` says whether rows are read from the test corruption."""

    index: int
    name: str
    train: np.ndarray           # rows it trains on (complete and labelled)
    select: np.ndarray          # rows whose score picks the epoch
    heldout: np.ndarray         # rows of its CV figure (== select in mertools mode)
    select_test: bool = False
    heldout_test: bool = False


@dataclass
class Plan:
    kind: str                                   # cvN | logo | official
    folds: list[Fold]
    tests: dict[str, np.ndarray]                # test split -> rows (all its rows, labelled or not)
    training_rows: np.ndarray                   # every row of a training role (before filtering)
    excluded: dict[str, int] = field(default_factory=dict)   # why training-role rows were not trained on
    notes: list[str] = field(default_factory=list)


def _plan(p: Protocol, fs: FeatureSet, seed: int) -> Plan:
    kind = p.fold_kind(fs)
    n = fs.n
    sub = fs.subsets
    complete = fs.complete().numpy()
    if fs.sentiment:
        labelled = np.isfinite(fs.valence.numpy()) if fs.valence is not None else np.zeros(n, bool)
    else:
        labelled = (fs.emotion.numpy() >= 0) if fs.emotion is not None else np.zeros(n, bool)
    trainable = complete & labelled
    notes: list[str] = []

    def need(name: str) -> np.ndarray:
        if name not in sub:
            raise ProtocolError(f"dataset {fs.dataset} has no '{name}' subset (has: {', '.join(sub) or 'none'}); "
                             f"folds '{kind}' need it")
        return sub[name]

    folds: list[Fold] = []
    if kind.startswith("cv"):
        F = int(kind[2:])
        base = need(fs.train_subset) if fs.train_subset in sub or fs.groups is None else np.ones(n, bool)
        rows = np.flatnonzero(base)
        if len(rows) < F:
            raise ProtocolError(f"{len(rows)} training rows cannot make {F} folds")
        perm = rows[np.random.default_rng(seed).permutation(len(rows))]
        size = len(rows) // F  # MERTools: int(n / folds) a fold, the last takes the remainder
        parts = [perm[i * size:(i + 1) * size] for i in range(F - 1)] + [perm[(F - 1) * size:]]
        role = base
        for i in range(F):
            train = np.concatenate([parts[j] for j in range(F) if j != i])
            folds.append(Fold(i, f"fold{i}", train, parts[i], parts[i]))
    elif kind == "logo":
        if fs.groups is None:
            raise ProtocolError(f"dataset {fs.dataset} has no groups; leave-one-group-out needs them")
        role = (sub[fs.train_subset] if fs.train_subset in sub else np.ones(n, bool)) & (fs.groups != "")
        names = sorted(set(fs.groups[role].tolist()))
        if len(names) < 2:
            raise ProtocolError(f"dataset {fs.dataset}: leave-one-group-out needs 2 or more groups, found {len(names)}")
        for i, g in enumerate(names):
            held = np.flatnonzero(role & (fs.groups == g))
            train = np.flatnonzero(role & (fs.groups != g))
            folds.append(Fold(i, str(g), train, held, held, select_test=True, heldout_test=True))
    elif kind == "official":
        tr, va = need(fs.train_subset), need(fs.val_subset)
        role = tr | va
        val = np.flatnonzero(va)
        folds.append(Fold(0, fs.val_subset, np.flatnonzero(tr & ~va), val, val))
    else:  # pragma: no cover - validated in Protocol
        raise ProtocolError(kind)

    excluded = {"missing features": int((role & ~complete).sum()),
                "unlabelled": int((role & complete & ~labelled).sum())}
    for f in folds:
        f.train = f.train[trainable[f.train]]
    if p.mode == "strict":
        for f in folds:
            rng = np.random.default_rng([seed, f.index, 7])
            order = rng.permutation(len(f.train))
            k = max(1, int(round(p.inner_fraction * len(f.train)))) if p.inner_fraction else 0
            inner, rest = f.train[np.sort(order[:k])], f.train[np.sort(order[k:])]
            f.select, f.train, f.select_test = inner, rest, False
    if fs.extra_train is not None:  # pseudo-labelled rows: trained on by every fold, never held out or selected on
        extra = np.flatnonzero(fs.extra_train & complete & labelled & ~role)
        for f in folds:
            f.train = np.concatenate([f.train, extra])
    for f in folds:
        if len(f.train) == 0:
            raise ProtocolError(f"fold {f.name} has no trainable rows (complete and labelled)")

    # test splits: disjoint from every training-role row, or the ones asked for
    if p.test_splits is not None:
        unknown = [s for s in p.test_splits if s not in sub]
        if unknown:
            raise ProtocolError(f"no subset '{unknown[0]}' loaded (loaded: {', '.join(sub)})")
        test_names = list(p.test_splits)
    else:
        test_names = [s for s, m in sub.items() if m.any() and not (m & role).any()]
    tests = {s: np.flatnonzero(sub[s]) for s in test_names}
    return Plan(kind=kind, folds=folds, tests=tests, training_rows=np.flatnonzero(role),
                excluded={k: v for k, v in excluded.items() if v}, notes=notes)
