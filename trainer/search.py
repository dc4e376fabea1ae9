"""What a grid searches: the hyper-parameter space, its trials, Top-N sets and modality combinations, rankings.

The space is data (the seeds' Table 4: hidden {64, 128, 256} x lr {1e-3, 1e-4} x dropout {0.2, 0.3, 0.4, 0.5});
`trials` enumerates it when it has no more points than asked for, and samples it (by seed) otherwise. The
ranking of a dataset's encoders is a function of the results database alone: the unimodal `mlp` trials that
`trainer rank` records.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError
from trainer.data import ARG_OF_MODALITY
from trainer.models import model_class
from trainer.protocol import HYPER
from trainer.results import ResultsDB

SPACE: dict[str, tuple[Any, ...]] = {"hidden": (64, 128, 256), "lr": (1e-3, 1e-4), "dropout": (0.2, 0.3, 0.4, 0.5)}
LETTERS = {"A": "audio", "T": "text", "V": "video"}       # modality letters of --modalities (video = visual)
MODALITY_ORDER = ("audio", "text", "video")
RANK_FUSION = "mlp"
FAST_RANK_FUSION = "linear"      # trainer rank --fast: the convex baseline, one fit per fold ...
FAST_RANK_CONFIG = {"solver": "ridge"}   # ... with the ridge classifier (all strengths from one factorisation)
RANK_BY = ("cv", "test")


def points(space: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Every point of the space, in a stable order (the product of the values in the given order)."""
    space = space or SPACE
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[k] for k in names))]


def trials(n: int, seed: int = 0, space: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """The configs of a search of `n` trials: the whole space when it has <= n points, else n distinct points
    drawn by `seed` (the same seed always draws the same points, in space order)."""
    if n < 1:
        raise FeatstoreError(f"--trials must be at least 1 (got {n})")
    pts = points(space)
    if len(pts) <= n:
        return pts
    pick = np.sort(np.random.default_rng(seed).choice(len(pts), size=n, replace=False))
    return [pts[i] for i in pick]


def parse_topn(text: str) -> list[int]:
    """'1-6' -> [1..6]; '1,3,5' -> [1, 3, 5]; '2' -> [2]."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise FeatstoreError(f"--topn '{text}': expected N, A-B or a comma-separated list such as 1-6 or 1,3,5")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a < 1 or b < a:
            raise FeatstoreError(f"--topn '{text}': ranges must run upwards from 1 (e.g. 1-6)")
        out.update(range(a, b + 1))
    return sorted(out)


def parse_modalities(text: str) -> list[tuple[str, ...]]:
    """'AV,AT,VT,AVT' -> [('audio', 'video'), ...] in audio, text, video order (A audio, T text, V video)."""
    combos: list[tuple[str, ...]] = []
    for part in str(text).replace(" ", "").upper().split(","):
        bad = [c for c in part if c not in LETTERS]
        if not part or bad:
            raise FeatstoreError(f"--modalities '{text}': unknown letter(s) {''.join(bad) or '(empty)'}; use A (audio), "
                                 f"T (text) and V (video), e.g. AV,AT,VT,AVT")
        combo = tuple(m for m in MODALITY_ORDER if any(LETTERS[c] == m for c in part))
        if combo not in combos:
            combos.append(combo)
    return combos


def combo_letters(combo: Sequence[str]) -> str:
    """('audio', 'text', 'video') -> 'AVT' (the MER papers' order: A, V, T)."""
    inv = {v: k for k, v in LETTERS.items()}
    return "".join(inv[m] for m in ("audio", "video", "text") if m in combo)


# ---------------------------------------------------------------------------------------------- rankings
@dataclass(frozen=True)
class Ranked:
    """One encoder's place in a ranking: its best unimodal config by CV score and the figures behind it."""

    encoder: str
    modality: str                 # audio | text | video (trainer argument names)
    cv_waf: float
    test_waf: float               # mean over the test splits of the config's fold-averaged WAF (nan: none)
    trials: int                   # configs tried
    seeds: int
    hyper: dict[str, Any]


def ranking(db: ResultsDB, dataset: str, *, corruption: str = "clean", rank_by: str = "cv",
            mode: str | None = None, fusion: str = "mlp") -> dict[str, list[Ranked]]:
    """{modality: encoders best first} from the unimodal trials of `fusion` (`mlp`; `linear` for
    `trainer rank --fast`) of `dataset` in the database.

    Per encoder: each config's figures are means over its seeds of the fold-averaged rows; the best config is the
    one with the highest mean CV selection score; encoders are ranked by that config's CV WAF (`cv`) or by the
    mean of its test splits' WAF (`test`, the MER2024 paper's Table 3).
    """
    if rank_by not in RANK_BY:
        raise FeatstoreError(f"--rank-by '{rank_by}': expected cv or test")
    where, params = "dataset = ? AND fusion = ? AND fold = -1", [dataset, fusion]
    convex = getattr(model_class(fusion), "convex", False)    # its config has no hidden/lr/dropout to show
    if mode:
        where += " AND mode = ?"
        params.append(mode)
    per_trial: dict[str, dict[str, Any]] = {}
    for r in db.rows(where, params):
        feats = r["features"] or {}
        keys = [k for v in feats.values() for k in v]
        if len(keys) != 1 or r["test_corruption"] not in (None, corruption):
            continue
        enc, _, cor = keys[0].partition("/")
        if cor != corruption:
            continue
        t = per_trial.setdefault(r["config_hash"], {"encoder": enc, "modality": next(iter(feats)),
                                                    "hyper": {k: v for k, v in r["hyper"].items()
                                                              if not (convex and k in HYPER)}, "cv": {}, "score": {}, "test": {}})
        if r["split"] == "cv":
            t["cv"][r["seed"]] = r["waf"]
            t["score"][r["seed"]] = r["score"]
        elif r["split"] != "inner":
            t["test"].setdefault(r["split"], {})[r["seed"]] = r["waf"]
    best: dict[str, tuple[float, dict[str, Any], int]] = {}
    for t in per_trial.values():
        if not t["cv"]:
            continue
        sc = _mean(t["score"].values())
        prev = best.get(t["encoder"])
        n = (prev[2] if prev else 0) + 1
        if prev is None or sc > prev[0]:
            best[t["encoder"]] = (sc, t, n)
        else:
            best[t["encoder"]] = (prev[0], prev[1], n)
    out: dict[str, list[Ranked]] = {}
    for enc, (_, t, n) in best.items():
        tests = [_mean(v.values()) for v in t["test"].values()]
        mod = ARG_OF_MODALITY.get(t["modality"], t["modality"])
        out.setdefault(mod, []).append(Ranked(enc, mod, _mean(t["cv"].values()), _mean(tests) if tests else math.nan,
                                              n, len(t["cv"]), t["hyper"]))
    for mod, lst in out.items():
        key = (lambda r: r.cv_waf) if rank_by == "cv" else (lambda r: r.test_waf)
        lst.sort(key=lambda r: (-_finite(key(r)), r.encoder))
    return {m: out[m] for m in MODALITY_ORDER if m in out}


def _mean(values: Any) -> float:
    v = np.array([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf
