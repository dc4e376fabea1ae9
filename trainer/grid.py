"""Many experiments: `trainer rank` (the same unimodal search for every stored encoder) and `trainer grid` (Top-N
feature sets x modality combinations x a hyper-parameter search), resumable, locally or on a Dask cluster.

A search is planned as tasks, one per feature set: the pending configs of a feature set train in ONE
run_experiment call (batched). Before anything trains, every trial's config hash is computed from the store's
metadata alone (trainer.record.trial_definition), and the (config, seed) pairs already complete in the results
database are skipped; results are recorded after each task, so an interrupted search loses at most the tasks in
flight and a rerun continues. On a cluster each task runs on a worker (which reads the features from the store)
and returns plain result rows; only this process writes the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from featstore.catalog import Catalog, load_catalog
from featstore.errors import FeatstoreError, UnknownNameError
from featstore.store import FeatureStore, KeyName
from trainer.data import ARG_OF_MODALITY, encoder_modality, key_corruption, load_features
from trainer.fit import normalise_configs, run_experiment
from trainer.models import input_options, model_class
from trainer.protocol import Protocol
from trainer.record import recorded_rows, trial_definition
from trainer.results import ResultsDB, config_hash
from trainer.search import FAST_RANK_CONFIG, FAST_RANK_FUSION, MODALITY_ORDER, RANK_FUSION, Ranked, combo_letters, ranking, trials

Progress = Callable[[str, dict[str, Any]], None]
Recorded = tuple[list[dict[str, Any]], list[dict[str, Any]]]      # (result rows, output rows) of one run


@dataclass
class Task:
    """One feature set and its configs; `pending` holds the (config index, seed) pairs not yet in the database."""

    label: str                                   # e.g. 'rank audio/egemaps' or 'AVT top-2'
    chosen: dict[str, list[str]]                 # {'audio': [...], 'text': [...], 'video': [...]}
    configs: list[dict[str, Any]]                # full hyper dicts (normalise_configs)
    hashes: list[str]
    pending: list[tuple[int, int]] = field(default_factory=list)
    topn: int = 0
    combo: str = ""

    def runs(self) -> list[tuple[tuple[int, ...], list[int]]]:
        """(seeds, config indices) groups: configs that miss the same seeds train in one call."""
        by_cfg: dict[int, list[int]] = {}
        for ci, s in self.pending:
            by_cfg.setdefault(ci, []).append(s)
        groups: dict[tuple[int, ...], list[int]] = {}
        for ci, seeds in by_cfg.items():
            groups.setdefault(tuple(sorted(seeds)), []).append(ci)
        return [(seeds, sorted(cis)) for seeds, cis in groups.items()]


@dataclass
class SearchReport:
    """What a search did: tasks, trials trained and skipped, the best CV WAF seen, wall time, notes."""

    tasks: list[Task]
    trained: int = 0
    skipped: int = 0
    rows_added: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def merge(self, other: "SearchReport", label: str = "") -> None:
        """Add another search's tasks, counts, time and notes; keep the better best trial."""
        self.tasks += other.tasks
        self.trained += other.trained
        self.skipped += other.skipped
        self.rows_added += other.rows_added
        self.seconds += other.seconds
        self.notes += [n for n in other.notes if n not in self.notes]
        if other.best and other.best.get("waf", -math.inf) > self.best.get("waf", -math.inf):
            self.best = {**other.best, "task": f"{label} {other.best['task']}".strip()}


# ---------------------------------------------------------------------------------------------- planning
def stored_encoders(store: FeatureStore, dataset: str, corruption: str = "clean",
                    catalog: Catalog | None = None) -> dict[str, list[str]]:
    """{modality: encoders with a key of (dataset, encoder, corruption)} (modality in audio, text, video)."""
    cat = catalog or load_catalog()
    if not store.has_dataset(dataset):
        raise UnknownNameError("dataset in the store", dataset, store.datasets())
    out: dict[str, list[str]] = {}
    for k in store.keys(dataset):
        if k.corruption != corruption:
            continue
        mod = _modality(store, k, cat)
        if mod:
            out.setdefault(mod, []).append(k.encoder)
    return {m: sorted(out[m]) for m in MODALITY_ORDER if m in out}


def _modality(store: FeatureStore, key: KeyName, cat: Catalog) -> str | None:
    spec = cat.encoders.get(key.encoder)
    mod = spec.modality if spec is not None else (store.open_key(key).attrs.get("spec") or {}).get("modality")
    return ARG_OF_MODALITY.get(mod)


def feature_identity(store: FeatureStore, dataset: str, chosen: dict[str, list[str]], corruption: str,
                     test_corruption: str | None, catalog: Catalog | None = None
                     ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """What FeatureSet.describe() and .spec_hashes() will say for these features, from the store's metadata only
    (no arrays read). A key that is not built fails naming the `featstore build` command."""
    cat = catalog or load_catalog()
    test_corruption = test_corruption or corruption
    describe: dict[str, list[str]] = {}
    hashes: dict[str, str] = {}
    for arg in MODALITY_ORDER:
        for enc in chosen.get(arg, []):
            modality = encoder_modality(cat, enc, arg)
            train_cor = key_corruption(cat, modality, corruption)
            describe.setdefault(modality, []).append(f"{enc}/{train_cor}")
            for cor in (train_cor, key_corruption(cat, modality, test_corruption)):
                fa = store.open_key(KeyName(dataset, enc, cor))   # MissingKeyError naming the build command
                hashes[f"{enc}/{cor}"] = str(fa.attrs.get("spec_hash", ""))
    return describe, hashes


def _plan(store: FeatureStore, db: ResultsDB, dataset: str, sets: list[tuple[str, dict[str, list[str]], int, str]],
          fusion: str, protocol: Protocol, configs: list[dict[str, Any]], corruption: str,
          test_corruption: str | None, preset: str) -> list[Task]:
    cat = load_catalog()
    cfgs = normalise_configs(configs, protocol)
    tasks = []
    for label, chosen, topn, combo in sets:
        describe, fhashes = feature_identity(store, dataset, chosen, corruption, test_corruption, cat)
        hashes = [config_hash(trial_definition(dataset, describe, fhashes, fusion, protocol, c, preset,
                                               test_corruption)) for c in cfgs]
        done = db.done_trials(hashes, protocol.seeds)
        pending = [(ci, s) for ci, h in enumerate(hashes) for s in protocol.seeds if (h, s) not in done]
        tasks.append(Task(label, chosen, cfgs, hashes, pending, topn, combo))
    return tasks


def rank_sets(store: FeatureStore, dataset: str, corruption: str = "clean",
              modality: str | None = None) -> list[tuple[str, dict[str, list[str]], int, str]]:
    """One unimodal feature set per stored encoder (of `modality`, or all)."""
    encs = stored_encoders(store, dataset, corruption)
    if modality is not None:
        if modality not in MODALITY_ORDER:
            raise UnknownNameError("modality", modality, MODALITY_ORDER)
        encs = {modality: encs.get(modality, [])}
    sets = [(f"rank {m}/{e}", {m: [e]}, 1, combo_letters([m])) for m, lst in encs.items() for e in lst]
    if not sets:
        raise FeatstoreError(f"dataset {dataset} has no stored features with corruption '{corruption}'"
                             f"{' for ' + modality if modality else ''}; build some first (featstore build "
                             f"--dataset {dataset} --encoder E)")
    return sets


def topn_sets(order: dict[str, list[str]], topn: Sequence[int], combos: Sequence[tuple[str, ...]],
              notes: list[str]) -> list[tuple[str, dict[str, list[str]], int, str]]:
    """The feature set of each (combo, N): the N best-ranked encoders of each of its modalities. A modality with
    fewer than N ranked encoders is noted, and a set equal to a smaller N's is skipped."""
    sets, seen = [], set()
    for combo in combos:
        missing = [m for m in combo if not order.get(m)]
        if missing:
            notes.append(f"{combo_letters(combo)}: no ranked {', '.join(missing)} encoder; combination skipped")
            continue
        for n in topn:
            chosen = {m: order[m][:n] for m in combo}
            short = [m for m in combo if len(order[m]) < n]
            sig = (combo, tuple(tuple(v) for v in chosen.values()))
            if short:
                notes.append(f"{combo_letters(combo)} top-{n}: only {', '.join(f'{len(order[m])} {m}' for m in short)} "
                             f"encoder(s) ranked" + ("; same set as a smaller N, skipped" if sig in seen else ""))
            if sig in seen:
                continue
            seen.add(sig)
            sets.append((f"{combo_letters(combo)} top-{n}", chosen, n, combo_letters(combo)))
    return sets


# ---------------------------------------------------------------------------------------------- running
def run_tasks(store: FeatureStore, db: ResultsDB, dataset: str, tasks: list[Task], fusion: str, protocol: Protocol,
              corruption: str, test_corruption: str | None, preset: str = "default", client: Any = None,
              max_models: int | None = None, progress: Progress | None = None) -> SearchReport:
    """Train every pending trial of `tasks`, recording each run's rows as soon as it ends. With a Dask `client`,
    runs are tasks on its workers (which read the store at `store.path`) and their rows come back here."""
    t0 = time.perf_counter()
    rep = SearchReport(tasks)
    rep.skipped = sum(len(t.configs) * len(protocol.seeds) - len(t.pending) for t in tasks)
    total = sum(len(t.pending) for t in tasks)
    if progress:
        progress("start", {"total": total, "skipped": rep.skipped})
    runs = [(t, seeds, cis) for t in tasks for seeds, cis in t.runs()]
    args = dict(store_path=str(store.path), dataset=dataset, fusion=fusion, corruption=corruption,
                test_corruption=test_corruption, preset=preset, max_models=max_models)

    def done(task: Task, seeds: tuple[int, ...], recorded: Recorded) -> None:
        rows, outputs = recorded
        rep.rows_added += db.add(rows, outputs)
        rep.trained += len(seeds) * len({r["config_hash"] for r in rows})
        for r in rows:
            if r["split"] == "cv" and r["fold"] == -1 and r["waf"] is not None and math.isfinite(r["waf"]):
                if r["waf"] > rep.best.get("waf", -math.inf):
                    rep.best = {"waf": r["waf"], "task": task.label, "hyper": r["hyper"], "seed": r["seed"]}
        if progress:
            progress("trials", {"done": rep.trained, "total": total, "best": rep.best, "task": task.label})

    if client is None:
        cache: tuple[str, Any] | None = None
        for task, seeds, cis in runs:
            if progress:
                progress("task", {"task": task.label})
            key = repr(sorted(task.chosen.items()))
            if cache is None or cache[0] != key:  # consecutive runs of one feature set share its tensors
                cache = (key, load_features(store, dataset, **task.chosen, corruption=corruption,
                                            test_corruption=test_corruption, **input_options(fusion, protocol)))
            result = run_experiment(cache[1], fusion, protocol.replace(seeds=seeds), [task.configs[i] for i in cis],
                                    max_models=max_models, progress=progress)
            done(task, seeds, recorded_rows(result, preset, test_corruption))
    else:
        from distributed import as_completed

        futs = {client.submit(train_on_worker, task.chosen, [task.configs[i] for i in cis], protocol.replace(seeds=seeds),
                              pure=False, **args): (task, seeds) for task, seeds, cis in runs}
        failed: list[str] = []
        for fut in as_completed(list(futs), loop=client.loop):
            task, seeds = futs[fut]
            try:
                done(task, seeds, fut.result())
            except FeatstoreError as exc:   # recorded runs stay recorded; the others finish first
                failed.append(f"{task.label}: {exc}")
            except Exception as exc:  # a worker that died (KilledWorker) or a bug on the worker
                failed.append(f"{task.label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if failed:
            raise FeatstoreError(f"{len(failed)} of {len(futs)} run(s) failed on the cluster (the others are recorded; "
                                 f"a rerun retries only the missing trials): {failed[0]}")
    rep.seconds = time.perf_counter() - t0
    return rep


def train_on_worker(chosen: dict[str, list[str]], configs: list[dict[str, Any]], protocol: Protocol, *,
                    store_path: str, dataset: str, fusion: str, corruption: str, test_corruption: str | None,
                    preset: str, max_models: int | None) -> Recorded:
    """A Dask task: read the features from the store, train the configs, return result and output rows (the
    client writes them)."""
    features = load_features(FeatureStore(store_path, read_only=True), dataset, **chosen, corruption=corruption,
                             test_corruption=test_corruption, **input_options(fusion, protocol))
    result = run_experiment(features, fusion, protocol, configs, max_models=max_models)
    return recorded_rows(result, preset, test_corruption)


# ---------------------------------------------------------------------------------------------- the two searches
def run_rank(store: FeatureStore, db: ResultsDB, dataset: str, protocol: Protocol, *, n_trials: int = 24,
             trial_seed: int = 0, corruption: str = "clean", modality: str | None = None, rank_by: str = "cv",
             client: Any = None, max_models: int | None = None, progress: Progress | None = None,
             fast: bool = False) -> tuple[SearchReport, dict[str, list[Ranked]]]:
    """The same unimodal search (fusion `mlp`, `trials(n_trials)` configs, the protocol's seeds) for every stored
    encoder of `dataset`, then the ranking from the database. fast: the linear baseline instead, one config
    (FAST_RANK_CONFIG: the ridge classifier, its strength chosen inside each fold), recorded as preset
    `rank-fast`."""
    fusion, preset = (FAST_RANK_FUSION, "rank-fast") if fast else (RANK_FUSION, "rank")
    configs = [dict(FAST_RANK_CONFIG)] if fast else trials(n_trials, trial_seed)
    sets = rank_sets(store, dataset, corruption, modality)
    tasks = _plan(store, db, dataset, sets, fusion, protocol, configs, corruption, None, preset)
    rep = run_tasks(store, db, dataset, tasks, fusion, protocol, corruption, None, preset, client, max_models,
                    progress)
    return rep, ranking(db, dataset, corruption=corruption, rank_by=rank_by, mode=protocol.mode, fusion=fusion)


def run_grid(store: FeatureStore, db: ResultsDB, dataset: str, protocol: Protocol, *, topn: Sequence[int],
             combos: Sequence[tuple[str, ...]], fusion: str = "attention", n_trials: int = 50, trial_seed: int = 0,
             corruption: str = "clean", test_corruption: str | None = None, rank_by: str = "cv",
             rank_from: str | None = None, rank_trials: int = 24, client: Any = None, max_models: int | None = None,
             progress: Progress | None = None, model_options: dict[str, Any] | None = None,
             preset: str = "default") -> SearchReport:
    """Top-N x modality-combination x hyper-parameter search. The ranking comes from the database (`rank_from`:
    another dataset's); when `dataset`'s own ranking is missing, `trainer rank`'s search runs first.
    model_options (e.g. {'softmax': True} for attention) join every config of the search (and its hash).
    preset: the name of the recipe `protocol` was built with (trainer.presets), recorded with every trial."""
    notes: list[str] = []
    stored = stored_encoders(store, dataset, corruption)
    src = rank_from or dataset
    order = ranking(db, src, corruption=corruption, rank_by=rank_by, mode=protocol.mode)
    need = {m for c in combos for m in c}
    if rank_from is None and any(set(stored.get(m, [])) - {r.encoder for r in order.get(m, [])} for m in need):
        if progress:
            progress("ranking", {"dataset": dataset})
        rank_proto = protocol.replace(test_splits=None)
        run_rank(store, db, dataset, rank_proto, n_trials=rank_trials, trial_seed=trial_seed, corruption=corruption,
                 client=client, max_models=max_models, progress=progress)
        order = ranking(db, dataset, corruption=corruption, rank_by=rank_by, mode=protocol.mode)
    if rank_from is not None and not order:
        raise FeatstoreError(f"no ranking of dataset {rank_from} in {db.path}; run `trainer rank --dataset {rank_from}` first")
    names: dict[str, list[str]] = {}
    for m, lst in order.items():
        keep = [r.encoder for r in lst if r.encoder in stored.get(m, [])]
        gone = [r.encoder for r in lst if r.encoder not in stored.get(m, [])]
        if gone:
            notes.append(f"ranked {m} encoder(s) not stored for {dataset}/{corruption}, skipped: {', '.join(gone)}")
        names[m] = keep
    sets = topn_sets(names, topn, combos, notes)
    if not sets:
        raise FeatstoreError(f"no feature set to search for {dataset}: " + ("; ".join(notes) or "nothing ranked"))
    space = getattr(model_class(fusion), "space", None)      # a fusion's own search space, else Table 4's
    configs = [{**c, **(model_options or {})} for c in trials(n_trials, trial_seed, space)]
    tasks = _plan(store, db, dataset, sets, fusion, protocol, configs, corruption, test_corruption, preset)
    rep = run_tasks(store, db, dataset, tasks, fusion, protocol, corruption, test_corruption, preset, client,
                    max_models, progress)
    rep.notes = notes + rep.notes
    return rep


def run_noise(store: FeatureStore, db: ResultsDB, dataset: str, protocol: Protocol, chosen: dict[str, list[str]], *,
              train_corruptions: Sequence[str], test_corruptions: Sequence[str], fusion: str = "attention",
              n_trials: int = 1, trial_seed: int = 0, configs: list[dict[str, Any]] | None = None, client: Any = None,
              max_models: int | None = None, progress: Progress | None = None) -> SearchReport:
    """Train under each train corruption and test under each test corruption (MERBench Tables 14-15): one
    experiment per pair and config, recorded with its test corruption; resumable like a grid. A corruption
    changes only the encoders of its modality (trainer.data.key_corruption)."""
    cfgs = configs if configs is not None else trials(n_trials, trial_seed)
    rep = SearchReport([])
    for tr in train_corruptions:
        for te in test_corruptions:
            label = f"train {tr} / test {te}"
            test = te if te != tr else None          # as `trainer run` records a run without --test-corruption
            tasks = _plan(store, db, dataset, [(label, chosen, 0, "")], fusion, protocol, cfgs, tr, test, "default")
            rep.merge(run_tasks(store, db, dataset, tasks, fusion, protocol, tr, test, "default", client,
                                max_models, progress))
    return rep

