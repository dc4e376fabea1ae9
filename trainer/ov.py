"""MER-OV set-level scores (MER2024 paper, Section 3.4, Eqs. 4-8): label files, synonym groups, accuracy/recall.

Per sample, every label is lower-cased and mapped to the head of its synonym group (the first word of the
group; a label in no group stands for itself), giving the truth set T and the prediction set P:
    accuracy = |T ∩ P| / |P|   (0 when P is empty)        recall = |T ∩ P| / |T|
each averaged over the scored samples; the ranking score is their mean. As in MERTools (main-ov.py), a
label listed in two groups of a sample maps to the head of the later group.

Bad input, never a crash or a silent division by zero:
- an empty prediction set scores accuracy 0 and recall 0 (as in the paper);
- a sample whose truth set is empty cannot be scored: it is excluded from both averages, counted and named;
- a truth sample with no prediction row is scored as an empty prediction (a missing answer cannot help) and
  listed; prediction rows of samples the truth does not have are ignored and listed;
- a malformed label list is an error naming the file, the line and the sample.

Groups come from a synonym file (`read_groups`: per-sample groups, as the challenge's LLM grouping step
produced them, or one list of groups for every sample) or from featstore.ov_grouping (offline, a sentence
encoder): either way they arrive here as data -- nothing in trainer/ runs a model.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from featstore.errors import FeatstoreError
from featstore.label_lists import (OPENSET_LABEL, LabelListError, decode_label_lists, format_labels, named_rows,
                                  parse_groups, parse_labels)

LabelSets = dict[str, list[str]]                        # sample name -> labels
Groups = list[list[str]]                                 # one sample's synonym groups, head first
GroupSource = Union[None, Groups, Mapping[str, Groups]]  # none | the same groups for all | per sample
LABEL_COLUMNS = (OPENSET_LABEL, "labels", "prediction", "pred")

__all__ = ["OVReport", "evaluate", "score_sample", "group_map", "read_label_csv", "write_label_csv",
           "read_groups", "read_reference", "store_label_lists", "LabelSets", "Groups", "empty_predictions",
           "random_predictions", "threshold_predictions", "crossfit_thresholds", "out_of_fold_probabilities"]


# ---------------------------------------------------------------------------------------------- scoring
def group_map(groups: Iterable[Sequence[str]] | None) -> dict[str, str]:
    """{lower-cased label: lower-cased head of its group}; a label in two groups takes the later head."""
    mapping: dict[str, str] = {}
    for group in groups or ():
        labels = [str(x).strip().lower() for x in group if str(x).strip()]
        for label in labels:
            mapping[label] = labels[0]
    return mapping


def _mapped(labels: Iterable[str], mapping: Mapping[str, str]) -> set[str]:
    out = set()
    for x in labels:
        key = str(x).strip().lower()
        if key:
            out.add(mapping.get(key, key))
    return out


def score_sample(truth: Iterable[str], pred: Iterable[str], groups: Iterable[Sequence[str]] | None = None
                 ) -> tuple[float, float] | None:
    """(accuracy, recall) of one sample after grouping, or None when its truth set is empty."""
    mapping = group_map(groups)
    t, p = _mapped(truth, mapping), _mapped(pred, mapping)
    if not t:
        return None
    hit = len(t & p)
    return (hit / len(p) if p else 0.0), hit / len(t)


@dataclass
class OVReport:
    """The set-level scores of one prediction file against the truth, with what could not be scored."""

    accuracy: float
    recall: float
    average: float
    n_scored: int
    empty_truth: list[str] = field(default_factory=list)      # excluded: nothing to recall
    empty_pred: list[str] = field(default_factory=list)       # scored 0 (includes missing_pred)
    missing_pred: list[str] = field(default_factory=list)     # scored truth samples without a prediction row
    extra_pred: list[str] = field(default_factory=list)       # prediction rows the truth does not have
    per_sample: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready dict (per-sample rows only when asked)."""
        d = asdict(self)
        if not per_sample:
            d.pop("per_sample")
        return d

    def notes(self, show: int = 10, kinds: Sequence[str] = ("empty_truth", "missing_pred", "extra_pred", "empty_pred")
              ) -> list[str]:
        """One line per kind of input that was excluded, zeroed or ignored (first `show` names each), for the
        `kinds` asked (empty_pred counts the empty rows that exist, not the missing ones)."""
        def names(xs: list[str]) -> str:
            return ", ".join(xs[:show]) + (f" (+{len(xs) - show} more)" if len(xs) > show else "")
        missing = set(self.missing_pred)
        lines = {
            "empty_truth": (self.empty_truth, "sample(s) with an empty truth set excluded"),
            "missing_pred": (self.missing_pred, "truth sample(s) have no prediction row (scored as empty predictions)"),
            "extra_pred": (self.extra_pred, "prediction row(s) name samples the truth does not have (ignored)"),
            "empty_pred": ([n for n in self.empty_pred if n not in missing], "empty prediction set(s) scored 0"),
        }
        unknown = [k for k in kinds if k not in lines]
        if unknown:
            raise FeatstoreError(f"unknown note kind '{unknown[0]}' (known: {', '.join(lines)})")
        return [f"{len(xs)} {what}: {names(xs)}" for k in kinds for xs, what in [lines[k]] if xs]


def _groups_for(source: GroupSource, name: str) -> Groups | None:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return source


def evaluate(truth: Mapping[str, Sequence[str]], pred: Mapping[str, Sequence[str]],
             groups: GroupSource = None) -> OVReport:
    """Score `pred` against `truth` (both {sample: labels}); see the module docstring for the rules.

    groups: None (exact labels after lower-casing), one list of groups used for every sample, or
    {sample: groups} (a sample without an entry has no groups).
    """
    acc: list[float] = []
    rec: list[float] = []
    report = OVReport(accuracy=float("nan"), recall=float("nan"), average=float("nan"), n_scored=0)
    for name in truth:
        labels_t = list(truth[name])
        have_pred = name in pred
        labels_p = list(pred[name]) if have_pred else []
        sc = score_sample(labels_t, labels_p, _groups_for(groups, name))
        if sc is None:
            report.empty_truth.append(name)
            continue
        if not have_pred:
            report.missing_pred.append(name)
        if not _mapped(labels_p, {}):
            report.empty_pred.append(name)
        acc.append(sc[0])
        rec.append(sc[1])
        report.per_sample.append({"name": name, "accuracy": sc[0], "recall": sc[1],
                                  "truth": labels_t, "pred": labels_p})
    report.extra_pred = [n for n in pred if n not in truth]
    if acc:
        report.accuracy, report.recall = float(np.mean(acc)), float(np.mean(rec))
        report.average = (report.accuracy + report.recall) / 2
    report.n_scored = len(acc)
    return report


# ---------------------------------------------------------------------------------------------- files
def read_label_csv(path: str | Path, column: str | None = None) -> LabelSets:
    """{name: labels} from a MER-OV CSV (columns `name` and `openset`, as check-openset.csv).

    The label column is `column`, else the first of openset/labels/prediction/pred present, else the only
    column besides `name`. A malformed list, an empty or repeated name is an error naming the line.
    """
    header, rows = named_rows(path, "label file")
    if column is None:
        column = next((c for c in LABEL_COLUMNS if c in header), None)
        rest = [h for h in header if h != "name"]
        if column is None and len(rest) == 1:
            column = rest[0]
    if column is None or column not in header:
        raise FeatstoreError(f"{path}: no label column '{column or OPENSET_LABEL}' (found {', '.join(header)})")
    out: LabelSets = {}
    for line, name, row in rows:
        try:
            out[name] = parse_labels(row.get(column))
        except LabelListError as exc:
            raise FeatstoreError(f"{path} line {line} (sample {name}): malformed label list "
                                 f"{(row.get(column) or '')[:60]!r}: {exc}") from None
    return out


def write_label_csv(path: str | Path, labels: Mapping[str, Sequence[str]]) -> int:
    """Write the challenge's OV CSV (`name,openset`, lists spelled as MERTools does); the file appears whole."""
    import os

    path = Path(path)
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", OPENSET_LABEL])
        for name, labs in labels.items():
            w.writerow([name, format_labels(labs)])
    os.replace(part, path)
    return len(labels)


def _as_groups(value: Any, where: str) -> Groups:
    try:
        return parse_groups(value)
    except LabelListError as exc:
        raise FeatstoreError(f"{where}: malformed synonym groups: {exc}") from None


def _read_group_folder(path: Path) -> dict[str, Groups]:
    """MERTools' openset-synonym/ folder: one <sample>.npy per sample holding the LLM's answer (a string)."""
    out: dict[str, Groups] = {}
    files = sorted(path.glob("*.npy"))
    if not files:
        raise FeatstoreError(f"synonym folder {path} holds no <sample>.npy files")
    for f in files:
        try:
            value = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatstoreError(f"{f}: not a plain .npy array ({exc})") from None
        out[f.stem] = _as_groups(value.tolist(), str(f))
    return out


def read_groups(path: str | Path) -> GroupSource:
    """Synonym groups from JSON -- {"samples": [{"name", "synonym_groups"}]} (the MER-OV reference file),
    {name: [[head, synonym, ...], ...]} (per sample; a value may also be the LLM's answer as one string), or
    [[head, synonym, ...], ...] (every sample) -- or from a folder of <sample>.npy answers (MERTools'
    openset-synonym/, unzipped from ov_store/openset-synonym.zip)."""
    path = Path(path)
    if path.is_dir():
        return _read_group_folder(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FeatstoreError(f"cannot read synonym file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FeatstoreError(f"{path}: not JSON ({exc})") from None
    if isinstance(data, list):
        return _as_groups(data, str(path))
    if isinstance(data, dict) and isinstance(data.get("samples"), list):
        out: dict[str, Groups] = {}
        for i, s in enumerate(data["samples"]):
            if not isinstance(s, dict) or "name" not in s:
                raise FeatstoreError(f"{path}: samples[{i}] has no 'name'")
            out[str(s["name"])] = _as_groups(s.get("synonym_groups", []), f"{path} sample {s['name']}")
        return out
    if isinstance(data, dict):
        return {str(k): _as_groups(v, f"{path} sample {k}") for k, v in data.items()}
    raise FeatstoreError(f"{path}: expected a list of groups or an object of per-sample groups")


def read_reference(path: str | Path) -> tuple[LabelSets, LabelSets, dict[str, Groups]]:
    """(truth, predicted, per-sample LLM groups) of a MER-OV reference JSON ({"samples": [{"name", "truth",
    "predicted", "synonym_groups"}]}, e.g. ../shared/fixtures/mer2024-ov/ov_reference.json)."""
    groups = read_groups(path)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(groups, dict) or not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise FeatstoreError(f"{path}: not a MER-OV reference file (expected {{\"samples\": [...]}})")
    truth: LabelSets = {}
    pred: LabelSets = {}
    for i, s in enumerate(data["samples"]):
        name = str(s["name"])
        for key, into in (("truth", truth), ("predicted", pred)):
            try:
                into[name] = parse_labels(s.get(key))
            except LabelListError as exc:
                raise FeatstoreError(f"{path} samples[{i}] (sample {name}): malformed '{key}' list: {exc}") from None
    return truth, pred, groups


def store_label_lists(store: Any, dataset: str, subset: str | None = "test_ov") -> LabelSets:
    """{name: labels} of a dataset's stored label lists (label `openset`), rows of `subset` (None: every row
    that has a list)."""
    labels = store.labels(dataset)
    if OPENSET_LABEL not in labels or labels[OPENSET_LABEL][1] is None:
        raise FeatstoreError(f"dataset {dataset} has no '{OPENSET_LABEL}' label lists in the store (the mer2024 "
                             f"adapter stores them from check-openset.csv); pass --truth CSV instead")
    codes, classes = labels[OPENSET_LABEL]
    ids = store.ids(dataset)
    keep = np.ones(len(ids), bool)
    if subset is not None:
        subsets = store.subsets(dataset)
        if subset not in subsets:
            from featstore.errors import UnknownNameError

            raise UnknownNameError(f"subset of {dataset}", subset, subsets)
        keep = subsets[subset]
    lists = decode_label_lists(codes, classes)
    return {str(ids[i]): lists[i] for i in np.flatnonzero(keep) if lists[i] is not None}


# ---------------------------------------------------------------------------------------------- baselines
def empty_predictions(names: Iterable[str]) -> LabelSets:
    """MER2024 Table 5's Empty baseline: no label for any sample (accuracy 0, recall 0)."""
    return {n: [] for n in names}


def random_predictions(names: Iterable[str], vocabulary: Sequence[str], k: int = 1, seed: int = 0) -> LabelSets:
    """MER2024 Table 5's Random baseline: per sample `k` distinct labels drawn uniformly from `vocabulary`
    (default use: the dataset's six discrete emotions, one label), seeded."""
    vocab = list(dict.fromkeys(vocabulary))
    if not vocab:
        raise FeatstoreError("random baseline: the vocabulary is empty")
    if not 1 <= k <= len(vocab):
        raise FeatstoreError(f"random baseline: k must be in [1, {len(vocab)}], got {k}")
    rng = np.random.default_rng(seed)
    return {n: [vocab[i] for i in rng.choice(len(vocab), size=k, replace=False)] for n in names}


def threshold_predictions(probs: Mapping[str, np.ndarray], classes: Sequence[str], threshold: float) -> LabelSets:
    """Per sample the classes whose probability is >= threshold, most probable first; the top class always."""
    out: LabelSets = {}
    for n, p in probs.items():
        order = np.argsort(-np.asarray(p), kind="stable")
        out[n] = [classes[i] for i in order if p[i] >= threshold or i == order[0]]
    return out


THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))


def crossfit_thresholds(truth: Mapping[str, Sequence[str]], probs: Mapping[str, np.ndarray],
                        classes: Sequence[str], groups: GroupSource = None, seed: int = 0,
                        grid: Sequence[float] = THRESHOLDS) -> tuple[LabelSets, list[float]]:
    """Open-vocabulary predictions from a closed-set classifier, the threshold chosen on held-out samples.

    The truth samples are split in two halves (seeded); the threshold that maximises the average score on one
    half labels the other, and the other way round, so no sample is scored with a threshold tuned on itself.
    Returns (predictions of every truth sample that has probabilities, [threshold of half A, of half B])."""
    names = [n for n in truth if n in probs]
    if len(names) < 2:
        raise FeatstoreError(f"classifier baseline: {len(names)} truth sample(s) have out-of-fold probabilities; "
                             f"need at least 2 (are the MER-OV samples in the trained subset?)")
    perm = np.random.default_rng(seed).permutation(len(names))
    halves = [[names[i] for i in perm[: len(names) // 2]], [names[i] for i in perm[len(names) // 2:]]]
    preds: LabelSets = {}
    chosen = []
    for tune, apply in ((halves[0], halves[1]), (halves[1], halves[0])):
        def score(t: float) -> float:
            rep = evaluate({n: truth[n] for n in tune},
                           threshold_predictions({n: probs[n] for n in tune}, classes, t), groups)
            return rep.average if np.isfinite(rep.average) else -1.0
        best = max(grid, key=score)             # ties: the lowest threshold (max keeps the first)
        chosen.append(float(best))
        preds.update(threshold_predictions({n: probs[n] for n in apply}, classes, best))
    return {n: preds[n] for n in names}, chosen


def out_of_fold_probabilities(result: Any, config: int = 0) -> dict[str, np.ndarray]:
    """{sample: class probabilities} from an experiment's out-of-fold emotion logits (each training row scored
    by the fold model that did not see it), averaged over seeds."""
    import torch

    acc: dict[str, list[np.ndarray]] = {}
    for (ci, _seed), oof in result.heldout_outputs.items():
        if ci != config or "emotion" not in oof:
            continue
        probs = torch.softmax(torch.from_numpy(np.asarray(oof["emotion"], np.float64)), dim=1).numpy()
        for sid, p in zip(oof["ids"], probs):
            acc.setdefault(str(sid), []).append(p)
    if not acc:
        raise FeatstoreError("the experiment kept no out-of-fold emotion outputs (a dataset without emotion labels?)")
    return {n: np.mean(v, axis=0) for n, v in acc.items()}
