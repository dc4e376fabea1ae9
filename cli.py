"""Command-line entry points `featstore` and `trainer`: parse, call one library function, render with rich."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from featstore.errors import FeatstoreError

console = Console()
err_console = Console(stderr=True)

featstore_app = typer.Typer(help="Feature store for multimodal emotion recognition: build, inspect, move features.",
                            no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
import_app = typer.Typer(help="Bring features in: `hdf5` (a featstore export) or `mertools` (a MERTools folder).",
                         no_args_is_help=True)
featstore_app.add_typer(import_app, name="import")


def command(app: typer.Typer, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a typer command whose FeatstoreErrors print as one red line and exit with status 1."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except FeatstoreError as exc:
                err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None

        app.command(name)(wrapper)
        return fn

    return deco


def _catalog():  # noqa: ANN202 - small indirection so tests can point FEATSTORE_CATALOG elsewhere
    from featstore.catalog import load_catalog

    return load_catalog()


def _complete(section: str) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [n for n in getattr(_catalog(), section) if n.startswith(incomplete)]

    return complete


StoreOpt = Annotated[str, typer.Option("--store", envvar="FEATSTORE_STORE", help="Store path (default ./featstore.zarr).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_STORE = "featstore.zarr"


def _open(store: str, create: bool = False, read_only: bool = False):  # noqa: ANN202
    from featstore.store import FeatureStore

    return FeatureStore(store, create=create, read_only=read_only)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- catalog
@command(featstore_app, "catalog")
def catalog_cmd(
    modality: Annotated[Optional[str], typer.Option(help="audio | text | visual")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the catalog's encoders (and datasets and corruptions)."""
    from dataclasses import asdict

    from featstore.catalog import MODALITIES
    from featstore.errors import UnknownNameError

    cat = _catalog()
    if modality and modality not in MODALITIES:
        raise UnknownNameError("modality", modality, MODALITIES)
    encoders = [e for e in cat.encoders.values() if not modality or e.modality == modality]
    if as_json:
        _print_json({"encoders": [asdict(e) for e in encoders],
                     "datasets": [asdict(d) for d in cat.datasets.values()],
                     "corruptions": [asdict(c) for c in cat.corruptions.values()]})
        return
    t = Table(title=f"encoders ({len(encoders)})", title_justify="left")
    t.add_column("name", no_wrap=True)
    for col in ("modality", "family", "dim", "layers"):
        t.add_column(col, no_wrap=True)
    t.add_column("model", overflow="fold")
    t.add_column("availability", no_wrap=True)
    for e in encoders:
        layers = e.layers if isinstance(e.layers, str) else ",".join(map(str, e.layers)) + f" {e.layer_reduce}"
        t.add_row(e.name, e.modality, e.family, str(e.dim), layers, e.model or "", e.availability)
    console.print(t)
    if not modality:
        console.print("[bold]datasets:[/] " + ", ".join(cat.datasets))
        console.print("[bold]corruptions:[/] " + ", ".join(cat.corruptions))


# ---------------------------------------------------------------------------------------------- ls / info
@command(featstore_app, "ls")
def ls_cmd(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List the store's datasets and (dataset, encoder, corruption) keys."""
    fs = _open(store, read_only=True)
    rows = []
    for key in fs.keys():
        fa = fs.open_key(key)
        rows.append({"key": str(key), "shape": list(fa.shape), "dtype": str(fa.utt.dtype),
                     "rows_done": int(fa.done_mask().sum()), "errors": len(fa.errors())})
    datasets = [{"dataset": d, "samples": len(fs.ids(d)), "subsets": {k: int(v.sum()) for k, v in fs.subsets(d).items()},
                 "labels": sorted(fs.labels(d))} for d in fs.datasets() if fs.has_dataset(d)]
    if as_json:
        _print_json({"store": fs.path, "datasets": datasets, "keys": rows})
        return
    t = Table(title=f"datasets in {fs.path}", title_justify="left")
    for col in ("dataset", "samples", "subsets", "labels"):
        t.add_column(col)
    for d in datasets:
        t.add_row(d["dataset"], str(d["samples"]), " ".join(f"{k}={v}" for k, v in d["subsets"].items()),
                  ", ".join(d["labels"]))
    console.print(t)
    t = Table(title="features", title_justify="left")
    for col in ("dataset/encoder/corruption", "N×L×D", "dtype", "done", "errors"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        n = r["shape"][0]
        done = f"{r['rows_done']}/{n}"
        t.add_row(r["key"], "×".join(map(str, r["shape"])), r["dtype"],
                  done if r["rows_done"] == n else f"[yellow]{done}[/]",
                  f"[red]{r['errors']}[/]" if r["errors"] else "0")
    console.print(t)


@command(featstore_app, "info")
def info_cmd(
    key: Annotated[str, typer.Argument(help="DATASET/ENCODER[/CORRUPTION]")],
    store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False,
) -> None:
    """Shape, dtype, rows done, errors and provenance of one key."""
    from featstore.store import KeyName

    fs = _open(store, read_only=True)
    info = fs.open_key(KeyName.parse(key)).info()
    if as_json:
        _print_json(info)
        return
    attrs = info["attrs"]
    spec, prov = attrs.get("spec", {}), attrs.get("provenance", {})
    enc, cor = spec.get("encoder") or {}, spec.get("corruption") or {}
    t = Table(show_header=False, title=f"{info['key']}", title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    n = info["shape"][0]
    rows = [
        ("shape", f"{'×'.join(map(str, info['shape']))} {info['dtype']}, chunks of {info['rows_per_chunk']} rows"),
        ("rows done", f"{info['rows_done']}/{n}" + (f", {len(info['errors'])} failed" if info["errors"] else "")),
        ("spec hash", str(attrs.get("spec_hash"))),
        ("encoder", f"{attrs.get('encoder', '')} {enc.get('family', '')} {prov.get('model') or prov.get('model_path') or enc.get('model') or ''}".strip()),
        ("weights", str(prov.get("weights") or spec.get("weights") or "")),
        ("revision", str(prov.get("revision") or enc.get("revision") or "")),
        ("recipe", f"{enc.get('recipe', '')}; layers {enc.get('layers', '')} {enc.get('layer_reduce', '')}; pooling {enc.get('pooling', '')}"),
        ("input", json.dumps(enc.get("input", {}))),
        ("corruption", f"{attrs.get('corruption', '')} {json.dumps(cor.get('params', {}))} seed {cor.get('seed', '')}"),
        ("packages", " ".join(f"{k}={v}" for k, v in (prov.get("packages") or {}).items())),
        ("built", f"{prov.get('finished', attrs.get('created', ''))} on {prov.get('host', '?')} ({prov.get('device', '?')})"),
    ]
    for k, v in rows:
        if v and v.strip():
            t.add_row(k, v)
    console.print(t)
    console.print("[dim]full provenance: featstore info KEY --json[/]")
    errors = info["errors"]
    if errors:
        t = Table(title=f"{len(errors)} failed sample(s)", title_justify="left")
        for col in ("id", "stage", "message"):
            t.add_column(col, overflow="fold")
        for e in errors[:200]:
            t.add_row(str(e.get("id")), str(e.get("stage")), str(e.get("message")))
        console.print(t)
        if len(errors) > 200:
            console.print(f"… {len(errors) - 200} more (use --json)")


@command(featstore_app, "rm")
def rm_cmd(
    target: Annotated[str, typer.Argument(help="DATASET/ENCODER[/CORRUPTION], or a DATASET with every key under it")],
    store: StoreOpt = DEFAULT_STORE,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one key, or one dataset with all its keys (nothing else)."""
    from featstore.store import KeyName

    fs = _open(store)
    what = f"dataset {target} and its {len(fs.keys(target))} key(s)" if "/" not in target else target
    if "/" not in target and not fs.has_dataset(target):
        raise FeatstoreError(f"no dataset '{target}' in {fs.path}")
    if not yes and not typer.confirm(f"delete {what} from {fs.path}?"):
        raise typer.Exit(1)
    if "/" in target:
        fs.delete_key(KeyName.parse(target))
    else:
        fs.delete_dataset(target)
    console.print(f"deleted {what}")


@command(featstore_app, "verify")
def verify_cmd(
    keys: Annotated[Optional[list[str]], typer.Argument(help="Keys to check (default: all).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option("--repair", help="Delete leftovers of interrupted writes and stale leases (only those).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check shapes, done masks, NaN/Inf, provenance and leftovers of interrupted writes."""
    from dataclasses import asdict

    from featstore.store import KeyName
    from featstore.verify import verify

    fs = _open(store)
    findings = verify(fs, [KeyName.parse(k) for k in keys] if keys else None, repair=repair)
    if as_json:
        _print_json([asdict(f) for f in findings])
    else:
        colour = {"error": "red", "warning": "yellow", "info": "cyan"}
        for f in findings:
            console.print(f"[{colour.get(f.severity, 'white')}]{f.severity:7}[/] {f.key}: {f.message}", highlight=False)
        n_err = sum(f.severity == "error" for f in findings)
        console.print(f"{len(findings)} finding(s), {n_err} error(s)" if findings else "store is consistent")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- exchange
@command(featstore_app, "export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="Output file (.h5).")],
    fmt: Annotated[str, typer.Option("--format", help="Exchange format (hdf5).")] = "hdf5",
    key: Annotated[Optional[list[str]], typer.Option("--key", help="Export only these keys (repeatable).")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Export the store (or some keys) to one HDF5 file; `featstore import hdf5` restores it bit-exactly."""
    from featstore.exchange import export_hdf5
    from featstore.store import KeyName

    if fmt != "hdf5":
        raise FeatstoreError(f"unknown export format '{fmt}'; supported: hdf5")
    summary = export_hdf5(_open(store, read_only=True), out, keys=[KeyName.parse(k) for k in key] if key else None)
    console.print(f"wrote {out} ({summary['bytes'] / 1e6:.1f} MB): {len(summary['datasets'])} dataset(s), "
                  f"{len(summary['keys'])} key(s): {', '.join(summary['keys'])}")


@command(import_app, "hdf5")
def import_hdf5_cmd(
    src: Annotated[Path, typer.Argument(help="A file written by `featstore export`.")],
    store: StoreOpt = DEFAULT_STORE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace keys that already exist.")] = False,
) -> None:
    """Import a featstore HDF5 export (bit-exact: ids, labels, provenance included)."""
    from featstore.exchange import import_hdf5

    summary = import_hdf5(_open(store, create=True), src, overwrite=overwrite)
    console.print(f"imported {src}: {len(summary['keys'])} key(s) ({', '.join(summary['keys'])}), "
                  f"{summary['rows_done']} rows done; new datasets: {', '.join(summary['datasets_created']) or 'none'}"
                  + (f"; resumed: {', '.join(summary['resumed'])}" if summary["resumed"] else ""))


@command(import_app, "mertools")
def import_mertools_cmd(
    root: Annotated[Path, typer.Argument(help="A MERTools processed folder (label-6way.npz, features/).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name in the store.", autocompletion=_complete("datasets"))],
    mapping: Annotated[Optional[list[str]], typer.Option("--map", help="FEATURE_DIR=ENCODER (repeatable).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace keys that already exist.")] = False,
) -> None:
    """Import a MERTools folder: labels, splits and per-sample .npy features."""
    from featstore.mertools import import_mertools, parse_mapping

    fs = _open(store, create=True)
    with _progress() as prog:
        task = prog.add_task("import mertools", total=None, rate="", errors="")

        def on_progress(event: str, payload: Any) -> None:
            if event == "plan":
                prog.update(task, total=payload["rows"])
            elif event == "rows":
                prog.update(task, advance=payload["rows"], errors=f"{payload.get('failed', 0)} failed" if payload.get("failed") else "")

        report = import_mertools(fs, root, dataset, mapping=parse_mapping(mapping), overwrite=overwrite, progress=on_progress)
    t = Table(title=f"{report.dataset}: {report.n_samples} samples; subsets {report.subsets}", title_justify="left")
    t.add_column("key", no_wrap=True)
    for col in ("source folder", "status", "rows written", "done", "errors"):
        t.add_column(col, overflow="fold")
    for k in report.keys:
        t.add_row(k.key, k.folder, k.status, str(k.rows_written), f"{k.rows_done}/{k.rows}",
                  f"[red]{len(k.errors)}[/]" if k.errors else "0")
    console.print(t)
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for sk in report.skipped:
        err_console.print(f"[yellow]skipped[/] {sk.folder}: {sk.reason}", highlight=False)
    for k in report.keys:
        for e in k.errors[:10]:
            err_console.print(f"  [red]{k.key}[/] {e['id']}: {e['message']}", highlight=False)
    if not report.ok:
        raise typer.Exit(3)


# ---------------------------------------------------------------------------------------------- build
def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[errors]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


def _build_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[errors]}"),
                    TextColumn("{task.fields[workers]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


@command(featstore_app, "build")
def build_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Catalog dataset.", autocompletion=_complete("datasets"))],
    encoder: Annotated[str, typer.Option("--encoder", help="Catalog encoder (see `featstore catalog`).", autocompletion=_complete("encoders"))],
    corruption: Annotated[str, typer.Option("--corruption", help="Catalog corruption.", autocompletion=_complete("corruptions"))] = "clean",
    root: Annotated[Optional[Path], typer.Option("--root", help="Dataset release folder (remembered in the store).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Local weights folder (or hub id) replacing the catalog's.")] = None,
    noise_bank: Annotated[Optional[Path], typer.Option("--noise-bank", help="Folder of noise wavs (MUSAN speech layout) for audio-noise corruptions; default: built-in babble.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 …")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Clips per batch.")] = 16,
    max_batch_seconds: Annotated[float, typer.Option(help="Padded audio seconds per batch.")] = 160.0,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow models that run the hub's code.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the key and build it again.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Redo samples that failed before.")] = False,
    rows_per_chunk: Annotated[Optional[int], typer.Option(help="Rows per chunk of a new key (default ~4 MiB chunks).")] = None,
    partition_chunks: Annotated[int, typer.Option(help="Row chunks per partition (the unit of work and of loss on a crash).")] = 1,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Run on a local Dask cluster of N worker processes.")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Run on the Dask cluster at this scheduler address (tcp://HOST:PORT); every worker must see --store.")] = None,
    threads_per_worker: Annotated[int, typer.Option(help="Threads per local worker process (--workers): each runs one partition at a time, its threads serve torch.")] = 1,
    torch_threads: Annotated[Optional[int], typer.Option(help="torch/OpenMP threads per worker (default: the worker's threads).")] = None,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to wait for the --scheduler to answer.")] = 10.0,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Extract one encoder's features for a dataset (clean or under a corruption) into the store.

    In-process by default; `--workers N` starts a local Dask cluster and `--scheduler ADDR` uses an existing one
    (the same partitions run on the workers; a rerun after any crash finishes the job).
    """
    from contextlib import ExitStack

    from featstore.build import BuildOptions, build

    cat = _catalog()
    cat.dataset(dataset), cat.encoder(encoder), cat.corruption(corruption)  # unknown names fail before any work
    if workers is not None and scheduler is not None:
        raise FeatstoreError("give either --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    if partition_chunks < 1:
        raise FeatstoreError(f"--partition-chunks must be at least 1, got {partition_chunks}")
    opts = BuildOptions(batch_size=batch_size, max_batch_seconds=max_batch_seconds, overwrite=overwrite,
                        retry_failed=retry_failed, rows_per_chunk=rows_per_chunk, partition_chunks=partition_chunks)
    with ExitStack() as stack:
        client = None
        if workers is not None or scheduler is not None:  # connect before the store is touched: a dead address writes nothing
            from featstore.distributed import connect

            client = stack.enter_context(connect(workers=workers, scheduler=scheduler, threads_per_worker=threads_per_worker,
                                                 torch_threads=torch_threads, timeout=connect_timeout))
        fs = _open(store, create=True)
        prog = stack.enter_context(_build_progress())
        task = prog.add_task(f"{dataset}/{encoder}/{corruption}", total=None, rate="", errors="", workers="")
        state = {"ok": 0, "bad": 0}

        def on_progress(event: str, payload: Any) -> None:
            if event == "plan":
                prog.update(task, total=payload["rows"])
            elif event == "samples":
                state["ok"] += payload[0]
                state["bad"] += payload[1]
                elapsed = prog.tasks[0].elapsed or 1e-9
                prog.update(task, advance=payload[0] + payload[1],
                            rate=f"{(state['ok'] + state['bad']) / elapsed:.1f} clips/s",
                            errors=f"{state['bad']} failed" if state["bad"] else "")
            elif event == "workers":
                prog.update(task, workers=f"{payload} worker{'s' if payload != 1 else ''}")
            elif event == "warning":
                prog.console.print(f"[yellow]warning:[/] {payload}", highlight=False)
            elif event == "crash":
                prog.console.print(f"[red]crash:[/] sample {payload['id']} killed worker processes; recorded and "
                                   f"skipped", highlight=False)
            elif event == "partition_failed":
                prog.console.print(f"[red]failed:[/] rows [{payload['start']}, {payload['stop']}): {payload['reason']}",
                                   highlight=False)

        report = build(fs, dataset, encoder, corruption, root=root, model=model, device=device,
                       trust_remote_code=trust_remote_code, noise_bank=noise_bank, options=opts, catalog=cat,
                       progress=on_progress, client=client, torch_threads=torch_threads)
    on = f" on {report.workers} worker(s)" if client is not None else ""
    console.print(f"{report.key}: wrote {report.written} row(s) in {report.seconds:.1f} s{on} "
                  f"({report.already_done} already done, {report.partitions} partition(s)); "
                  f"{len(report.failed)} failed sample(s) in total")
    for rec in report.failed[:20]:
        err_console.print(f"  [red]{rec['id']}[/] {rec['stage']}: {rec['message']}", highlight=False)
    if len(report.failed) > 20:
        err_console.print(f"  … see `featstore info {report.key}`")
    for part in report.failed_partitions:
        ids = part["ids"]
        shown = ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        err_console.print(f"  [red]rows [{part['start']}, {part['stop']}) not built[/]: {part['reason']}; samples {shown} "
                          f"(a rerun tries them again)", highlight=False)
    if not report.ok:
        raise typer.Exit(3)


# ---------------------------------------------------------------------------------------------- demo data
@command(featstore_app, "demo-data")
def demo_data_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the corpus to.")],
    n: Annotated[int, typer.Option("--n", help="Number of clips.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same corpus).")] = 0,
) -> None:
    """Generate the offline synthetic demo corpus (espeak-ng speech, rendered faces, six emotions)."""
    from featstore.demo_data import generate

    path = generate(out, n=n, seed=seed)
    console.print(f"wrote {n} clips to {path}")


# ---------------------------------------------------------------------------------------------- trainer
trainer_app = typer.Typer(help="Train fusion classifiers on cached featstore vectors.", no_args_is_help=True,
                          pretty_exceptions_enable=False, add_completion=False)


@trainer_app.callback()
def trainer_main() -> None:
    """Train fusion classifiers on cached featstore vectors (never decodes media or runs encoders)."""


@command(trainer_app, "datasets")
def trainer_datasets_cmd(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List what the trainer can use: per dataset, its subsets, labels and stored encoders by modality."""
    fs = _open(store, read_only=True)
    cat = _catalog()
    out: dict[str, Any] = {}
    for d in fs.datasets():
        if not fs.has_dataset(d):
            continue
        by_mod: dict[str, list[str]] = {}
        for k in fs.keys(d):
            mod = cat.encoders[k.encoder].modality if k.encoder in cat.encoders else "imported"
            by_mod.setdefault(mod, []).append(f"{k.encoder}/{k.corruption}")
        out[d] = {"samples": len(fs.ids(d)), "subsets": {k: int(v.sum()) for k, v in fs.subsets(d).items()},
                  "labels": sorted(fs.labels(d)), "features": by_mod}
    if as_json:
        _print_json(out)
        return
    for d, info in out.items():
        console.print(f"[bold]{d}[/] {info['samples']} samples; subsets {info['subsets']}; labels {info['labels']}")
        for mod, keys in sorted(info["features"].items()):
            console.print(f"  {mod}: {', '.join(keys)}")


def _split_names(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@command(trainer_app, "run")
def trainer_run_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    audio: Annotated[Optional[str], typer.Option(help="Audio encoder(s), comma-separated (each its own branch).")] = None,
    text: Annotated[Optional[str], typer.Option(help="Text encoder(s), comma-separated.")] = None,
    video: Annotated[Optional[str], typer.Option(help="Visual encoder(s), comma-separated.")] = None,
    corruption: Annotated[str, typer.Option(help="Feature variant of the training rows.")] = "clean",
    test_corruption: Annotated[Optional[str], typer.Option(help="Feature variant of the test rows (default: --corruption).")] = None,
    fusion: Annotated[str, typer.Option(help="Fusion model (attention, mlp, …).")] = "attention",
    protocol: Annotated[str, typer.Option(help="mertools (the published protocol) | strict (inner validation, standardised).")] = "mertools",
    hidden_dim: Annotated[int, typer.Option(help="Hidden size.")] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout.")] = 0.5,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay (L2).")] = 1e-5,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 32,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 100,
    folds: Annotated[str, typer.Option(help="auto | cv5 (cvN) | logo | official.")] = "auto",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated (mean±std over them).")] = "0",
    save_predictions: Annotated[Optional[Path], typer.Option("--save-predictions", help="Write one CSV per test split here.")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="Results database (default: results.sqlite beside the store).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Run one experiment (all folds and seeds) and record it in the results database."""
    import csv
    import time

    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.protocol import Protocol
    from trainer.record import record
    from trainer.results import ResultsDB, default_results_path

    t0 = time.perf_counter()
    try:
        proto = Protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, hidden=hidden_dim, dropout=dropout,
                         seeds=tuple(int(s) for s in _split_names(seeds)))
    except ValueError as exc:
        raise FeatstoreError(str(exc)) from None
    fs = _open(store, read_only=True)
    features = load_features(fs, dataset, audio=_split_names(audio), text=_split_names(text),
                             video=_split_names(video), corruption=corruption, test_corruption=test_corruption)
    with _progress() as prog:
        task = prog.add_task(f"{dataset} {fusion}", total=epochs, rate="", errors="")
        result = run_experiment(features, fusion, proto, progress=lambda ev, info: prog.update(
            task, completed=info.get("epoch", 0)) if ev == "epoch" else None)
    db = ResultsDB(results or default_results_path(fs.path))
    added = record(db, result, test_corruption=test_corruption)
    summary = [d for d in result.summary() if d["split"] != "inner"]
    wall = time.perf_counter() - t0
    if save_predictions:
        save_predictions.mkdir(parents=True, exist_ok=True)
        for split in result.test_ids:
            rows = result.prediction_rows(split)
            if rows:
                with open(save_predictions / f"{dataset}-{split}.csv", "w", newline="", encoding="utf-8") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
    if as_json:
        _print_json({"dataset": dataset, "fusion": fusion, "mode": protocol, "features": result.features,
                     "folds": result.folds, "seeds": list(proto.seeds), "wall_s": wall, "counts": result.counts,
                     "warnings": result.warnings,
                     "splits": {d["split"]: {m: {"mean": d[f"{m}_mean"], "std": d[f"{m}_std"]}
                                             for m in ("acc", "waf", "mse")} | {"n": d["n"]} for d in summary}})
        return
    t = Table(title=f"{dataset}: {fusion}, {protocol} protocol, {result.folds}, seeds {list(proto.seeds)} "
                    f"({wall:.1f} s; {added} rows recorded in {db.path})", title_justify="left")
    for col in ("split", "n", "ACC", "WAF", "valence MSE"):
        t.add_column(col, no_wrap=True)
    for d in summary:
        fmt = lambda m: "—" if d[f"{m}_mean"] != d[f"{m}_mean"] else f"{d[f'{m}_mean']:.4f} ± {d[f'{m}_std']:.4f}"  # noqa: E731
        t.add_row(d["split"], str(d["n"]), fmt("acc"), fmt("waf"), fmt("mse"))
    console.print(t)
    for w in result.warnings:
        err_console.print(f"[yellow]note:[/] {w}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    featstore_app()
