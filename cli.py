"""Command-line entry points `featstore` and `trainer`: parse, call one library function, render with rich."""

from __future__ import annotations

import contextvars
import functools
import inspect
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


_GIVEN: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("given_options", default=frozenset())


def command(app: typer.Typer, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a typer command whose FeatstoreErrors print as one red line and exit with status 1; while it runs,
    `_GIVEN` holds the names of the parameters the user typed (so a preset never replaces them)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, _typer_ctx: typer.Context, **kwargs: Any) -> Any:
            given = frozenset(k for k in kwargs if getattr(_typer_ctx.get_parameter_source(k), "name", "DEFAULT")
                              not in ("DEFAULT", "DEFAULT_MAP"))
            token = _GIVEN.set(given)
            try:
                return fn(*args, **kwargs)
            except FeatstoreError as exc:
                err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            finally:
                _GIVEN.reset(token)

        sig = inspect.signature(fn, eval_str=True)
        ctx = inspect.Parameter("_typer_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), ctx])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, "_typer_ctx": typer.Context}
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
                     "rows_done": int(fa.done_mask().sum()), "errors": len(fa.errors()), "seq_cap": fa.seq_cap})
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
    for col in ("dataset/encoder/corruption", "N×L×D", "frames", "dtype", "done", "errors"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        n = r["shape"][0]
        done = f"{r['rows_done']}/{n}"
        t.add_row(r["key"], "×".join(map(str, r["shape"])), f"cap {r['seq_cap']}" if r["seq_cap"] else "-", r["dtype"],
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
        ("frames", f"seq {'×'.join(map(str, info['seq_shape']))} (cap {info['seq_cap']} steps, integer average "
                   f"pooling); steps per done row: mean {info['seq_len_mean']:.1f}, max {info['seq_len_max']}"
         if "seq_shape" in info else "none (utterance features only; featstore build ... --level frame keeps them)"),
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
    max_batch_seconds: Annotated[Optional[float], typer.Option(help="Padded audio seconds per batch (default: 160 on an accelerator; on a CPU one clip a forward, measured fastest there).")] = None,
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
    level: Annotated[Optional[str], typer.Option("--level", help="utt: utterance vectors only; frame: also frame/token-level sequences (seq) in the same key. Default: an existing key's level, else the catalog entry's (frame when it sets seq_cap).")] = None,
    seq_cap: Annotated[Optional[int], typer.Option("--seq-cap", help="Frame level: steps kept per sample; longer sequences are average-pooled by an integer factor, never truncated (default: the entry's seq_cap, else 64). Implies --level frame.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Extract one encoder's features for a dataset (clean or under a corruption) into the store.

    In-process by default; `--workers N` starts a local Dask cluster and `--scheduler ADDR` uses an existing one
    (the same partitions run on the workers; a rerun after any crash finishes the job). `--level frame` also keeps
    frame/token-level features for sequence models; it is another spec, so an utterance-only key needs --overwrite.
    """
    from contextlib import ExitStack

    from featstore.build import BuildOptions, build

    cat = _catalog()
    cat.dataset(dataset), cat.encoder(encoder), cat.corruption(corruption)  # unknown names fail before any work
    cat.encoder(encoder).at_level(level, seq_cap)                           # and so do --level/--seq-cap
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
            elif event == "info":
                prog.console.print(f"[dim]{payload}[/]", highlight=False)
            elif event == "crash":
                prog.console.print(f"[red]crash:[/] sample {payload['id']} killed worker processes; recorded and "
                                   f"skipped", highlight=False)
            elif event == "partition_failed":
                prog.console.print(f"[red]failed:[/] rows [{payload['start']}, {payload['stop']}): {payload['reason']}",
                                   highlight=False)

        report = build(fs, dataset, encoder, corruption, root=root, model=model, device=device,
                       trust_remote_code=trust_remote_code, noise_bank=noise_bank, options=opts, catalog=cat,
                       progress=on_progress, client=client, torch_threads=torch_threads, level=level, seq_cap=seq_cap)
    on = f" on {report.workers} worker(s)" if client is not None else ""
    frames = f" with frames (cap {report.seq_cap})" if report.seq_cap else ""
    console.print(f"{report.key}: wrote {report.written} row(s){frames} in {report.seconds:.1f} s{on} "
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


@command(trainer_app, "fusions")
def trainer_fusions_cmd(as_json: JsonOpt = False) -> None:
    """List the fusion models (the registry): input level, alignment, own options and search space."""
    import inspect

    from trainer.models import available_models, model_class

    out = {}
    for name in available_models():
        cls = model_class(name)
        level = getattr(cls, "level", "utt")
        init = getattr(cls, "make_net", None) if level == "seq" else cls.__init__
        params = inspect.signature(init).parameters if init else {}
        options = {p.name: p.default for p in params.values()
                   if p.name not in ("self", "spec", "dims", "dropout") and p.default is not inspect.Parameter.empty}
        out[name] = {"level": level, "aligned": getattr(cls, "aligned", None) if level == "seq" else None,
                     "options": options, "space": getattr(cls, "space", None),
                     "doc": (inspect.getmodule(cls).__doc__ or "").strip().splitlines()[0]}
    if as_json:
        _print_json(out)
        return
    t = Table(title="fusion models (trainer --fusion NAME; grid --fusion all runs every one but mlp)", title_justify="left")
    for col in ("name", "level", "options", "what"):
        t.add_column(col)
    for name, d in out.items():
        level = d["level"] + (" (aligned)" if d["aligned"] else "")
        t.add_row(name, level, ", ".join(f"{k}={v}" for k, v in d["options"].items()), d["doc"])
    console.print(t)


def _split_names(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# options shared by run, rank and grid
ProtocolOpt = Annotated[str, typer.Option(help="mertools (the published protocol) | strict (inner validation, standardised).")]
EpochsOpt = Annotated[int, typer.Option(help="Epochs.")]
BatchOpt = Annotated[int, typer.Option(help="Minibatch size.")]
WeightDecayOpt = Annotated[float, typer.Option(help="Adam weight decay (L2).")]
FoldsOpt = Annotated[str, typer.Option(help="auto | cv5 (cvN) | logo | official.")]
SeedsOpt = Annotated[str, typer.Option(help="Seeds, comma-separated (mean±std over them).")]
ThreadsOpt = Annotated[int, typer.Option(help="Torch threads (1: results do not depend on the core count).")]
Bf16Opt = Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast for the forward pass: fast where the hardware multiplies bf16 natively (CUDA, AVX512-BF16, AMX); elsewhere emulated, many times slower than float32, and the run says so.")]
MaxModelsOpt = Annotated[Optional[int], typer.Option("--max-models", help="Models trained together in one batched module (default: as many as fit 2 GiB).")]
TestSplitsOpt = Annotated[Optional[str], typer.Option("--test-splits", help="Test subsets, comma-separated (default: every subset disjoint from the training rows).")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results", help="Results database (default: results.sqlite beside the store).")]
CorruptionOpt = Annotated[str, typer.Option(help="Feature variant of the training rows.")]
TestCorruptionOpt = Annotated[Optional[str], typer.Option(help="Feature variant of the test rows (default: --corruption).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Spread trials over a local Dask cluster of N worker processes.")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Spread trials over the Dask cluster at this address (every worker must see --store).")]


SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {   # name -> (typer annotation, default), see shared_options
    "audio": (Annotated[Optional[str], typer.Option(help="Audio encoder(s), comma-separated (each its own branch).")], None),
    "text": (Annotated[Optional[str], typer.Option(help="Text encoder(s), comma-separated.")], None),
    "video": (Annotated[Optional[str], typer.Option(help="Visual encoder(s), comma-separated.")], None),
    "corruption": (CorruptionOpt, "clean"),
    "test_corruption": (TestCorruptionOpt, None),
    "fusion": (Annotated[str, typer.Option(help="Fusion model: a name `trainer fusions` lists (grid: all).",
                                           autocompletion=lambda incomplete: _fusion_names(incomplete))], "attention"),
    "steps": (Annotated[Optional[int], typer.Option("--steps", help="Sequence models: cap on each feature's time steps (longer sequences are average-pooled by an integer factor).")], None),
    "aligned": (Annotated[Optional[bool], typer.Option("--aligned/--unaligned", help="Sequence models: resample every modality of a sample to one time axis (its text length), or keep each its own (default: what the model needs; unaligned for mult).")], None),
    "protocol": (ProtocolOpt, "mertools"),
    "preset": (Annotated[str, typer.Option("--preset", help="Training recipe (trainer/presets.py): default (the MERTools protocol) or fast (larger batches, warm-up + cosine lr over a few epochs, bf16 training where native, strict protocol, no epoch selection); fills the options not given on the command line.")], "default"),
    "hidden_dim": (Annotated[int, typer.Option(help="Hidden size.")], 128),
    "dropout": (Annotated[float, typer.Option(help="Dropout.")], 0.5),
    "lr": (Annotated[float, typer.Option(help="Learning rate.")], 1e-4),
    "weight_decay": (WeightDecayOpt, 1e-5),
    "valence_weight": (Annotated[float, typer.Option("--valence-weight", help="Loss = CE + this x valence MSE where the dataset has valence (MERTools: 1; the fast preset: 0.5).")], 1.0),
    "batch_size": (BatchOpt, 32),
    "epochs": (EpochsOpt, 100),
    "folds": (FoldsOpt, "auto"),
    "seeds": (SeedsOpt, "0"),
    "threads": (ThreadsOpt, 1),
    "bf16": (Bf16Opt, False),
    "train_bf16": (Annotated[Optional[bool], typer.Option("--train-bf16/--fp32-train", help="Training steps multiply in bfloat16 (each branch's first layer, nearly all the FLOPs, on kept bf16 copies; the rest under autocast); weights, gradients, Adam and evaluation stay float32 (default: the preset's; fast: on where the hardware has native bf16).")], None),
    "max_models": (MaxModelsOpt, None),
    "test_splits": (TestSplitsOpt, None),
    "workers": (WorkersOpt, None),
    "scheduler": (SchedulerOpt, None),
    "results": (ResultsOpt, None),
    "store": (StoreOpt, DEFAULT_STORE),
    "as_json": (JsonOpt, False),
}


def _fusion_names(incomplete: str = "") -> list[str]:
    from trainer.models import available_models

    return [m for m in available_models() if m.startswith(incomplete)]


def shared_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command's keyword-only parameters named in SHARED_OPTIONS their option declaration and default, so
    every trainer command spells `--epochs`, `--protocol`, `--store`, … the same way, declared once."""
    import inspect

    sig = inspect.signature(fn, eval_str=True)
    params = [p.replace(annotation=SHARED_OPTIONS[p.name][0], default=SHARED_OPTIONS[p.name][1])
              if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in SHARED_OPTIONS else p
              for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
    return fn


_OPTION_FIELDS = {"hidden_dim": "hidden", "protocol": "mode"}   # command-line name -> Protocol field, where they differ


def _protocol(**kw: Any):  # noqa: ANN202
    from trainer.protocol import Protocol

    from trainer.presets import apply_preset

    seeds = kw.pop("seeds")
    splits = kw.pop("test_splits", None)
    preset = kw.pop("preset", "default")
    given = {_OPTION_FIELDS.get(name, name) for name in _GIVEN.get()}   # typed on the command line: kept
    try:
        return apply_preset(Protocol(seeds=tuple(int(s) for s in _split_names(seeds)),
                                     test_splits=tuple(_split_names(splits)) if splits else None, **kw), preset,
                            keep=given)
    except ValueError as exc:
        raise FeatstoreError(str(exc)) from None


def _model_options(pairs: Optional[list[str]]) -> dict[str, Any]:
    """['rank=8', 'subnet=32'] -> {'rank': 8, 'subnet': 32} (numbers parsed; a bad pair is named)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FeatstoreError(f"--model-option '{pair}': expected KEY=VALUE, e.g. rank=8")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _results_db(results: Optional[Path], store_path: str):  # noqa: ANN202
    from trainer.results import ResultsDB, default_results_path

    return ResultsDB(results or default_results_path(store_path))


def _fmt(d: dict[str, Any], m: str) -> str:
    mean, std = d.get(f"{m}_mean", float("nan")), d.get(f"{m}_std", float("nan"))
    return "—" if mean != mean else f"{mean:.4f} ± {std:.4f}"


@command(trainer_app, "run")
@shared_options
def trainer_run_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    concat: Annotated[bool, typer.Option("--concat", help="Concatenate each modality's features into one input (default: one branch per feature).")] = False,
    softmax: Annotated[bool, typer.Option("--softmax", help="Softmax over the attention fusion's modality weights (the paper's equation; MERTools applies none).")] = False,
    model_option: Annotated[Optional[list[str]], typer.Option("--model-option", help="A fusion model's own option, KEY=VALUE (e.g. rank=8 for lmf, subnet=32 for tfn); repeatable.")] = None,
    save_predictions: Annotated[Optional[Path], typer.Option("--save-predictions", help="Write one CSV per test split here.")] = None,
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], corruption: str,
    test_corruption: Optional[str], fusion: str, protocol: str, hidden_dim: int, dropout: float, lr: float,
    weight_decay: float, valence_weight: float, batch_size: int, epochs: int, folds: str, seeds: str, threads: int, bf16: bool,
    train_bf16: Optional[bool],
    max_models: Optional[int], test_splits: Optional[str], results: Optional[Path], store: str, as_json: bool,
    steps: Optional[int], aligned: Optional[bool], preset: str,
) -> None:
    """Run one experiment (all folds and seeds) and record it in the results database."""
    import csv
    import time

    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.models import input_options
    from trainer.record import record

    t0 = time.perf_counter()
    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, valence_weight=valence_weight, hidden=hidden_dim, dropout=dropout, seeds=seeds, threads=threads,
                      bf16=bf16, train_bf16=train_bf16, test_splits=test_splits, steps=steps, aligned=aligned,
                      preset=preset)
    epochs = proto.epochs
    fs = _open(store, read_only=True)
    features = load_features(fs, dataset, audio=_split_names(audio), text=_split_names(text),
                             video=_split_names(video), corruption=corruption, test_corruption=test_corruption,
                             concat=concat, **input_options(fusion, proto))
    with _progress() as prog:
        task = prog.add_task(f"{dataset} {fusion}", total=epochs, rate="", errors="")
        options = _model_options(model_option) | ({"softmax": True} if softmax else {})
        result = run_experiment(features, fusion, proto, options or None, max_models=max_models,
                                progress=lambda ev, info: prog.update(task, completed=info.get("epoch", 0))
                                if ev == "epoch" else None)
    db = _results_db(results, fs.path)
    added = record(db, result, preset=preset, test_corruption=test_corruption)
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
        _print_json({"dataset": dataset, "fusion": fusion, "mode": proto.mode, "preset": preset, "features": result.features,
                     "branches": result.branches, "folds": result.folds, "seeds": list(proto.seeds), "wall_s": wall,
                     "counts": result.counts, "warnings": result.warnings, "config": result.configs[0],
                     "protocol": proto.as_dict(),
                     "splits": {d["split"]: {m: {"mean": d[f"{m}_mean"], "std": d[f"{m}_std"]}
                                             for m in ("acc", "waf", "mse")} | {"n": d["n"]} for d in summary}})
        return
    t = Table(title=f"{dataset}: {fusion}, {proto.mode} protocol{'' if preset == 'default' else f', {preset} preset'}, "
                    f"{result.folds}, seeds {list(proto.seeds)} "
                    f"({wall:.1f} s; {added} rows recorded in {db.path})", title_justify="left")
    for col in ("split", "n", "ACC", "WAF", "valence MSE"):
        t.add_column(col, no_wrap=True)
    for d in summary:
        t.add_row(d["split"], str(d["n"]), _fmt(d, "acc"), _fmt(d, "waf"), _fmt(d, "mse"))
    console.print(t)
    for w in result.warnings:
        err_console.print(f"[yellow]note:[/] {w}", highlight=False)


def _search_progress(prog: Progress, label: str) -> Callable[[str, dict[str, Any]], None]:
    """A grid/rank progress callback feeding a rich bar: trials done, best CV WAF so far, ETA."""
    task = prog.add_task(label, total=None, rate="", errors="")

    def update(event: str, info: dict[str, Any]) -> None:
        if event == "start":
            prog.update(task, total=info["total"], rate=f"{info['skipped']} already done")
        elif event == "trials":
            best = info.get("best") or {}
            prog.update(task, completed=info["done"], rate=f"best CV WAF {best['waf']:.4f}" if best else "")
        elif event == "task":
            prog.update(task, description=f"{label}: {info['task']}")
        elif event == "ranking":
            prog.update(task, description=f"{label}: ranking {info['dataset']} first")

    return update


def _cluster(workers: Optional[int], scheduler: Optional[str]):  # noqa: ANN202
    import contextlib

    if workers is None and scheduler is None:
        return contextlib.nullcontext(None)
    from featstore.distributed import connect

    return connect(workers=workers, scheduler=scheduler)


def _ranking_json(order: dict[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    import dataclasses

    return {m: [dataclasses.asdict(r) for r in lst] for m, lst in order.items()}


def _print_ranking(order: dict[str, list[Any]], title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("modality", "#", "encoder", "CV WAF", "test WAF", "configs", "seeds"):
        t.add_column(col, no_wrap=True, min_width=len(col))
    t.add_column("best config", overflow="fold")
    for m, lst in order.items():
        for i, r in enumerate(lst, 1):
            t.add_row(m, str(i), r.encoder, f"{r.cv_waf:.4f}", "—" if r.test_waf != r.test_waf else f"{r.test_waf:.4f}",
                      str(r.trials), str(r.seeds), ", ".join(f"{k} {v}" for k, v in r.hyper.items() if k != "weight_decay"))
    console.print(t)


@command(trainer_app, "rank")
@shared_options
def trainer_rank_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    modality: Annotated[Optional[str], typer.Option(help="Only this modality: audio | text | video.")] = None,
    rank_by: Annotated[str, typer.Option("--rank-by", help="cv (CV WAF) | test (mean WAF of the test splits, MER2024 Table 3).")] = "cv",
    rank_from: Annotated[Optional[str], typer.Option("--rank-from", help="Show another dataset's ranking from the database (MERBench Table 10); trains nothing.")] = None,
    trials: Annotated[int, typer.Option(help="Configs per encoder: the whole 24-point space hidden {64,128,256} x lr {1e-3,1e-4} x dropout {.2,.3,.4,.5} when >= 24, else a seeded sample.")] = 24,
    fast: Annotated[bool, typer.Option("--fast", help="Rank with the linear baseline (a ridge classifier on standardised features, its strength chosen on held-out rows): well under a second an encoder.")] = False,
    *,
    corruption: str, protocol: str, epochs: int, batch_size: int, weight_decay: float, valence_weight: float, folds: str, seeds: str,
    threads: int, bf16: bool, max_models: Optional[int], workers: Optional[int], scheduler: Optional[str],
    results: Optional[Path], store: str, as_json: bool,
) -> None:
    """Rank every stored encoder of a dataset: the same unimodal `mlp` search for each (default: the 24-point
    space, seed 0, the dataset's protocol), best config by CV score; resumable (trials in the database are skipped)."""
    from trainer.grid import run_rank
    from trainer.search import ranking

    fs = _open(store, read_only=True)
    db = _results_db(results, fs.path)
    if rank_from:
        order = ranking(db, rank_from, corruption=corruption, rank_by=rank_by, mode=protocol,
                        fusion="linear" if fast else "mlp")
        if not order:
            raise FeatstoreError(f"no ranking of dataset {rank_from} in {db.path}; run `trainer rank --dataset {rank_from}` first")
        rep = None
    else:
        proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size,
                          weight_decay=weight_decay, valence_weight=valence_weight, seeds=seeds, threads=threads, bf16=bf16)
        with _cluster(workers, scheduler) as client, _progress() as prog:
            rep, order = run_rank(fs, db, dataset, proto, n_trials=trials, corruption=corruption, modality=modality,
                                  rank_by=rank_by, client=client, max_models=max_models, fast=fast,
                                  progress=_search_progress(prog, f"rank {dataset}"))
    if as_json:
        _print_json({"dataset": rank_from or dataset, "rank_by": rank_by, "ranking": _ranking_json(order),
                     **({"trained": rep.trained, "skipped": rep.skipped, "wall_s": rep.seconds} if rep else {})})
        return
    done = f" ({rep.trained} trials trained, {rep.skipped} already in {db.path}, {rep.seconds:.1f} s)" if rep else ""
    _print_ranking(order, f"{rank_from or dataset}: encoders ranked by {rank_by} WAF{done}")


@command(trainer_app, "grid")
@shared_options
def trainer_grid_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    topn: Annotated[str, typer.Option("--topn", help="Top-N feature sets per modality: 1-6, or 1,3,5.")] = "1",
    modalities: Annotated[str, typer.Option(help="Modality combinations: letters A (audio) T (text) V (video), e.g. AV,AT,VT,AVT.")] = "AVT",
    trials: Annotated[int, typer.Option(help="Configs per feature set: the whole 24-point space when it has no more points, else a seeded sample.")] = 50,
    rank_by: Annotated[str, typer.Option("--rank-by", help="cv | test: which ranking picks the Top-N.")] = "cv",
    rank_from: Annotated[Optional[str], typer.Option("--rank-from", help="Use another dataset's ranking (MERBench Table 10).")] = None,
    rank_trials: Annotated[int, typer.Option(help="Configs per encoder when the ranking must be computed first.")] = 24,
    softmax: Annotated[bool, typer.Option("--softmax", help="Softmax over the attention fusion's modality weights in every trial.")] = False,
    *,
    fusion: str, corruption: str, test_corruption: Optional[str], protocol: str, epochs: int, batch_size: int,
    weight_decay: float, valence_weight: float, folds: str, seeds: str, threads: int, bf16: bool, train_bf16: Optional[bool],
    max_models: Optional[int], test_splits: Optional[str], workers: Optional[int], scheduler: Optional[str],
    results: Optional[Path], store: str, as_json: bool, steps: Optional[int], aligned: Optional[bool], preset: str,
) -> None:
    """Search Top-N feature sets x modality combinations x hidden {64,128,256} x lr {1e-3,1e-4} x dropout
    {.2,.3,.4,.5} (or the fusion's own space); `--fusion all` runs every registered fusion; resumable (trials in
    the database are skipped), locally or on a Dask cluster."""
    from trainer.grid import run_grid
    from trainer.search import parse_modalities, parse_topn

    ns, combos = parse_topn(topn), parse_modalities(modalities)
    if workers is not None and scheduler is not None:
        raise FeatstoreError("give either --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, valence_weight=valence_weight,
                      seeds=seeds, threads=threads, bf16=bf16, train_bf16=train_bf16, test_splits=test_splits,
                      steps=steps, aligned=aligned, preset=preset)
    fs = _open(store, read_only=True)
    db = _results_db(results, fs.path)
    from featstore.errors import MissingFramesError
    from trainer.grid import SearchReport
    from trainer.models import available_models, model_class, model_level

    fusions = [f for f in available_models() if f != "mlp"] if fusion == "all" else [fusion]
    for f in fusions:
        model_class(f)                        # unknown names fail before any work, with the closest names
    rep = SearchReport([])
    with _cluster(workers, scheduler) as client, _progress() as prog:
        for f in fusions:
            try:
                sub = run_grid(fs, db, dataset, proto, topn=ns, combos=combos, fusion=f, n_trials=trials,
                               corruption=corruption, test_corruption=test_corruption, rank_by=rank_by,
                               rank_from=rank_from, rank_trials=rank_trials, client=client, max_models=max_models,
                               preset=preset,
                               progress=_search_progress(prog, f"grid {dataset} {f}"),
                               model_options={"softmax": True} if softmax and f == "attention" else None)
            except MissingFramesError as exc:
                if fusion != "all" or model_level(f) != "seq":
                    raise
                rep.notes.append(f"sequence model {f} skipped: {exc}")   # `all` runs what the store can feed
                continue
            rep.merge(sub, label=f if len(fusions) > 1 else "")
    if as_json:
        _print_json({"dataset": dataset, "trained": rep.trained, "skipped": rep.skipped, "rows_added": rep.rows_added,
                     "wall_s": rep.seconds, "best": rep.best, "notes": rep.notes,
                     "sets": [{"label": t.label, "features": t.chosen, "configs": len(t.configs),
                               "pending": len(t.pending)} for t in rep.tasks]})
        return
    console.print(f"{dataset}: {len(rep.tasks)} feature set(s); {rep.trained} trials trained, {rep.skipped} already in "
                  f"{db.path} ({rep.seconds:.1f} s)")
    if rep.best:
        console.print(f"best CV WAF {rep.best['waf']:.4f}: {rep.best['task']} {rep.best['hyper']}", highlight=False)
    for n in rep.notes:
        err_console.print(f"[yellow]note:[/] {n}", highlight=False)
    console.print("tables: trainer report --dataset " + dataset)


@command(trainer_app, "noise")
@shared_options
def trainer_noise_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    train: Annotated[str, typer.Option("--train", help="Train corruptions, comma-separated (e.g. clean,snr5,snr10).")] = "clean",
    test: Annotated[str, typer.Option("--test", help="Test corruptions, comma-separated.")] = "clean,snr5-10",
    trials: Annotated[int, typer.Option(help="Configs per (train, test) pair from the 24-point space (1: its first point).")] = 1,
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], fusion: str, protocol: str, epochs: int,
    batch_size: int, weight_decay: float, valence_weight: float, folds: str, seeds: str, threads: int, max_models: Optional[int],
    workers: Optional[int], scheduler: Optional[str], results: Optional[Path], store: str, as_json: bool,
) -> None:
    """Noise robustness: train under each --train corruption, test under each --test corruption (MERBench Tables
    14-15); a corruption changes only its own modality's features. `trainer report` shows the matrix."""
    from trainer.grid import run_noise

    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, valence_weight=valence_weight,
                      seeds=seeds, threads=threads)
    chosen = {k: _split_names(v) for k, v in (("audio", audio), ("text", text), ("video", video)) if v}
    if not chosen:
        raise FeatstoreError("give at least one encoder (--audio, --text or --video)")
    fs = _open(store, read_only=True)
    db = _results_db(results, fs.path)
    with _cluster(workers, scheduler) as client, _progress() as prog:
        rep = run_noise(fs, db, dataset, proto, chosen, train_corruptions=_split_names(train),
                        test_corruptions=_split_names(test), fusion=fusion, n_trials=trials, client=client,
                        max_models=max_models, progress=_search_progress(prog, f"noise {dataset}"))
    if as_json:
        _print_json({"dataset": dataset, "trained": rep.trained, "skipped": rep.skipped, "wall_s": rep.seconds})
        return
    console.print(f"{dataset}: {rep.trained} trials trained, {rep.skipped} already in {db.path} ({rep.seconds:.1f} s); "
                  f"the matrix: trainer report --dataset {dataset}")


@command(trainer_app, "semi")
@shared_options
def trainer_semi_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    pool: Annotated[str, typer.Option(help="The unlabelled subset to pseudo-label.")] = "semi_pool",
    eta: Annotated[float, typer.Option(help="Class thresholds at this quantile of correct out-of-fold confidences.")] = 0.5,
    rounds: Annotated[int, typer.Option(help="Pseudo-labelling rounds.")] = 1,
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], fusion: str, protocol: str,
    hidden_dim: int, dropout: float, lr: float, weight_decay: float, valence_weight: float, batch_size: int, epochs: int, folds: str,
    seeds: str, threads: int, test_splits: Optional[str], max_models: Optional[int], results: Optional[Path],
    store: str, as_json: bool,
) -> None:
    """MER-SEMI: pseudo-label the unlabelled pool with class thresholds from out-of-fold confidences, retrain on
    the same folds, and compare with the supervised model (MERBench Algorithm 1)."""
    from trainer.data import load_features
    from trainer.record import record
    from trainer.semi import run_semi, without_split

    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, valence_weight=valence_weight, hidden=hidden_dim, dropout=dropout, seeds=seeds, threads=threads,
                      test_splits=test_splits)
    fs = _open(store, read_only=True)
    features = load_features(fs, dataset, audio=_split_names(audio), text=_split_names(text), video=_split_names(video))
    rep = run_semi(features, fusion, proto, pool=pool, eta=eta, rounds=rounds, max_models=max_models)
    db = _results_db(results, fs.path)
    record(db, rep.supervised)
    rows = [("supervised", rep.supervised, {})]
    for r in rep.rounds:
        if r.result is not None:
            record(db, without_split(r.result, pool), preset=f"semi-eta{eta:g}-round{r.round}")
            rows.append((f"round {r.round}", r.result, r.selected))
    table = []
    for name, res, sel in rows:
        summ = {d["split"]: d for d in res.summary() if d["split"] not in ("inner", pool)}
        table.append({"model": name, "pseudo_labels": sum(sel.values()), "per_class": sel,
                      **{sp: {"waf": d["waf_mean"], "waf_std": d["waf_std"], "acc": d["acc_mean"]} for sp, d in summ.items()}})
    if as_json:
        _print_json({"dataset": dataset, "pool": pool, "eta": eta, "models": table, "notes": rep.notes,
                     "thresholds": [r.thresholds for r in rep.rounds]})
        return
    splits = [k for k in table[0] if k not in ("model", "pseudo_labels", "per_class")]
    t = Table(title=f"{dataset}: MER-SEMI on '{pool}' (eta {eta:g}), {fusion}, {protocol} protocol", title_justify="left")
    for col in ("model", "pseudo-labels", *[f"{s} WAF" for s in splits]):
        t.add_column(col, no_wrap=True)
    for row in table:
        t.add_row(row["model"], str(row["pseudo_labels"]),
                  *[_fmt({"waf_mean": row[s]["waf"], "waf_std": row[s]["waf_std"]}, "waf") if s in row else "—"
                    for s in splits])
    console.print(t)
    for n in rep.notes:
        err_console.print(f"[yellow]note:[/] {n}", highlight=False)


@command(trainer_app, "cross")
@shared_options
def trainer_cross_cmd(
    train_dataset: Annotated[str, typer.Option("--train-dataset", help="Dataset trained on (its usual folds).")],
    test_dataset: Annotated[str, typer.Option("--test-dataset", help="Dataset tested on (every row).")],
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], fusion: str, protocol: str,
    hidden_dim: int, dropout: float, lr: float, weight_decay: float, valence_weight: float, batch_size: int, epochs: int, folds: str,
    seeds: str, threads: int, results: Optional[Path], store: str, as_json: bool,
) -> None:
    """Cross-corpus (MERBench Tables 19-20): train on one dataset, test on every row of another over the
    emotions they share (joy = happy, anger = angry, ...) or the sentiment sign (scales normalised)."""
    from trainer.cross import merge
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.record import record

    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, valence_weight=valence_weight, hidden=hidden_dim, dropout=dropout, seeds=seeds, threads=threads)
    fs = _open(store, read_only=True)
    chosen = dict(audio=_split_names(audio), text=_split_names(text), video=_split_names(video))
    merged = merge(load_features(fs, train_dataset, **chosen), load_features(fs, test_dataset, **chosen))
    result = run_experiment(merged, fusion, proto)
    db = _results_db(results, fs.path)
    record(db, result)
    summary = [d for d in result.summary() if d["split"] != "inner"]
    if as_json:
        _print_json({"train": train_dataset, "test": test_dataset, "classes": merged.classes, "warnings": result.warnings,
                     "splits": {d["split"]: {m: {"mean": d[f"{m}_mean"], "std": d[f"{m}_std"]} for m in ("acc", "waf")}
                                | {"n": d["n"]} for d in summary}})
        return
    t = Table(title=f"train {train_dataset} -> test {test_dataset}: {fusion}, {protocol} protocol, classes "
                    f"{', '.join(merged.classes) or 'sentiment sign'}", title_justify="left")
    for col in ("split", "n", "ACC", "WAF"):
        t.add_column(col, no_wrap=True)
    for d in summary:
        t.add_row(d["split"], str(d["n"]), _fmt(d, "acc"), _fmt(d, "waf"))
    console.print(t)
    for w in result.warnings:
        err_console.print(f"[yellow]note:[/] {w}", highlight=False)


@command(trainer_app, "predict")
@shared_options
def trainer_predict_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store.", autocompletion=_complete("datasets"))],
    split: Annotated[str, typer.Option("--split", help="Subset to predict (every sample of it), e.g. semi_pool.")],
    out: Annotated[Path, typer.Option("--out", help="CSV to write: name,discrete (the MER challenge format).")],
    train_subset: Annotated[str, typer.Option(help="The subset trained on (its val subset comes along).")] = "train",
    chunk: Annotated[int, typer.Option(help="Rows read from the store and scored at a time (bounds memory).")] = 4096,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Add one prob_<class> column per class.")] = False,
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], corruption: str,
    test_corruption: Optional[str], fusion: str, protocol: str, hidden_dim: int, dropout: float, lr: float,
    weight_decay: float, valence_weight: float, batch_size: int, epochs: int, folds: str, seeds: str, threads: int, store: str,
) -> None:
    """Train on the training rows only, then predict every sample of --split streamed from the store in chunks
    (e.g. all 115,595 unlabelled MER2024 clips) and write a submission CSV."""
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.predict import predict_split, write_submission
    from trainer.models import model_level

    if model_level(fusion) == "seq":   # before any training
        raise FeatstoreError(f"trainer predict streams utterance vectors from the store; sequence model '{fusion}' "
                             f"is not supported there yet: use an utterance-level fusion, or `trainer run "
                             f"--save-predictions DIR` when the split is one of the dataset's test splits")
    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, valence_weight=valence_weight, hidden=hidden_dim, dropout=dropout, seeds=seeds, threads=threads)
    fs = _open(store, read_only=True)
    if fs.has_dataset(dataset) and split not in fs.subsets(dataset):  # before any training
        from featstore.errors import UnknownNameError

        raise UnknownNameError(f"subset of {dataset}", split, fs.subsets(dataset))
    features = load_features(fs, dataset, audio=_split_names(audio), text=_split_names(text), video=_split_names(video),
                             corruption=corruption, test_corruption=test_corruption, subsets=[train_subset],
                             train_subset=train_subset)
    with _progress() as prog:
        task = prog.add_task(f"{dataset} {fusion}", total=epochs, rate="", errors="")
        result = run_experiment(features, fusion, proto.replace(test_splits=()), keep_models=True,
                                progress=lambda ev, info: prog.update(task, completed=info.get("epoch", 0))
                                if ev == "epoch" else None)
    n = write_submission(predict_split(result, features, fs, split, chunk=chunk), features.classes, out,
                         probabilities=probabilities)
    cv = next((d for d in result.summary() if d["split"] == "cv"), None)
    console.print(f"wrote {n:,} predictions of {dataset}/{split} to {out}"
                  + (f" (CV WAF {cv['waf_mean']:.4f})" if cv else ""))


@command(trainer_app, "report")
def trainer_report_cmd(
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Only this dataset (default: all in the database).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md | csv | latex.")] = "md",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write PNG plots here (confusion matrix, Top-N curve, attention weights).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Only this protocol mode: mertools | strict (default: both).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the tables to this file instead of stdout.")] = None,
    results: ResultsOpt = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Table-3/4-style tables (mean ± std over seeds) and plots, from the results database alone."""
    from trainer.plots import plot_all
    from trainer.report import render, tables, trials

    db_path = results or Path(store).resolve().parent / "results.sqlite"
    if not db_path.is_file():
        raise FeatstoreError(f"no results database at {db_path}; run `trainer run`, `rank` or `grid` first (or pass --results)")
    db = _results_db(db_path, store)
    text = render(tables(db, dataset, mode), fmt)
    if out:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {out}")
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    if plot:
        for f in plot_all(db, trials(db, dataset, mode), plot):
            err_console.print(f"wrote {f}", highlight=False)


# ---------------------------------------------------------------------------------------------- MER-OV
def _ov_groups(groups: Optional[Path], group_by: Optional[str], truth: dict, pred: dict, model: Optional[str]):  # noqa: ANN202
    """Synonym groups for ov-eval/ov-baseline: a file, offline embeddings, or none."""
    if groups is not None and group_by is not None:
        raise FeatstoreError("give either --groups FILE or --group-by embeddings, not both")
    if groups is not None:
        from trainer.ov import read_groups

        return read_groups(groups), f"synonym file {groups}"
    if group_by is None:
        return None, "none (exact lower-cased labels)"
    if group_by != "embeddings":
        from featstore.errors import UnknownNameError

        raise UnknownNameError("grouping", group_by, ["embeddings"])
    from featstore.ov_grouping import DEFAULT_ENCODER, DEFAULT_LINKAGE, DEFAULT_THRESHOLD, TEMPLATE, LabelEmbedder, group_samples

    emb = LabelEmbedder.load(DEFAULT_ENCODER, model=model)
    return (group_samples(truth, pred, emb),
            f"offline: {DEFAULT_ENCODER} '{TEMPLATE}', {DEFAULT_LINKAGE} linkage, cosine >= {DEFAULT_THRESHOLD}")


def _ov_truth(truth: Optional[Path], store: str, dataset: Optional[str], subset: str) -> dict:
    from trainer.ov import read_label_csv, read_reference, store_label_lists

    if truth is not None:
        return read_reference(truth)[0] if truth.suffix == ".json" else read_label_csv(truth)
    if dataset is None:
        raise FeatstoreError("give --truth CSV, or --dataset (with --store) to read the stored MER-OV label lists")
    return store_label_lists(_open(store, read_only=True), dataset, subset)


def _ov_print(rows: list[tuple[str, Any]], grouping: str, notes: list[str], as_json: bool) -> None:
    if as_json:
        _print_json({"grouping": grouping, "notes": notes,
                     "results": [{"name": n, **r.as_dict()} for n, r in rows]})
        return
    t = Table(title=f"MER-OV set-level scores (groups: {grouping})")
    for c in ("predictions", "accuracy", "recall", "average", "scored", "empty truth", "empty pred"):
        t.add_column(c, justify="left" if c == "predictions" else "right", overflow="fold")
    for n, r in rows:
        t.add_row(n, f"{r.accuracy:.4f}", f"{r.recall:.4f}", f"{r.average:.4f}", str(r.n_scored),
                  str(len(r.empty_truth)), str(len(r.empty_pred)))
    console.print(t)
    for line in notes:
        err_console.print(f"[yellow]note:[/] {line}", highlight=False)


@command(trainer_app, "ov-eval")
def trainer_ov_eval_cmd(
    pred: Annotated[Path, typer.Option("--pred", help="Predictions CSV (name, openset), as the challenge's submission.")],
    truth: Annotated[Optional[Path], typer.Option("--truth", help="Truth CSV (name, openset) or a MER-OV reference JSON.")] = None,
    groups: Annotated[Optional[Path], typer.Option("--groups", help="Synonym groups JSON: per sample {name: [[head, ...], ...]}, one list for all, or a MER-OV reference file.")] = None,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="embeddings: group each sample's labels offline with MiniLM (featstore.ov_grouping).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="With --group-by: a local folder for the sentence encoder.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Without --truth: the stored label lists of this dataset.")] = None,
    subset: Annotated[str, typer.Option(help="With --dataset: the subset holding the MER-OV samples.")] = "test_ov",
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Score open-vocabulary predictions (MER2024 Eqs. 4-8): set accuracy and recall after synonym grouping."""
    from trainer.ov import evaluate, read_label_csv

    t = _ov_truth(truth, store, dataset, subset)
    p = read_label_csv(pred)
    g, grouping = _ov_groups(groups, group_by, t, p, model)
    rep = evaluate(t, p, g)
    _ov_print([(pred.name, rep)], grouping, rep.notes(), as_json)


@command(trainer_app, "ov-predict")
def trainer_ov_predict_cmd(
    model: Annotated[str, typer.Option("--model", help="A transformers causal LM: hub id or local folder.")],
    out: Annotated[Path, typer.Option("--out", help="OV CSV to write (name, openset).")],
    descriptions: Annotated[Optional[Path], typer.Option("--descriptions", help="CSV (name, description): extract labels from emotion descriptions.")] = None,
    subtitles: Annotated[Optional[Path], typer.Option("--subtitles", help="CSV (name, subtitle[, clues]): describe each clip first, then extract.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[Optional[str], typer.Option(help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per answer.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the hub model's own code.")] = False,
    failures: Annotated[Optional[Path], typer.Option("--failures", help="Also write the failed samples (name, reason, answer) here.")] = None,
    describe_as: Annotated[str, typer.Option("--describe-as", help="With --subtitles: the video or the audio form of MER2024 Table 2's description prompt.")] = "video",
    save_descriptions: Annotated[Optional[Path], typer.Option("--save-descriptions", help="With --subtitles: also write the generated descriptions (name, description), a --descriptions input.")] = None,
    column: Annotated[Optional[str], typer.Option("--column", help="The text column of the input CSV (default: description | subtitle), e.g. english for MER2024's label-transcription.csv.")] = None,
    names_from: Annotated[Optional[Path], typer.Option("--names", help="Only the samples named in this CSV's name column (e.g. check-openset.csv), in its order.")] = None,
) -> None:
    """Open-vocabulary labels from a local LLM with the MER2024 prompts; answers that are not a list are recorded
    per sample and the run goes on (a failed sample gets an empty list in the CSV)."""
    from featstore.errors import UnknownNameError
    from featstore.ov_llm import (DESCRIBE_INSTRUCTIONS, LocalLLM, describe_and_extract, extract_labels, read_inputs,
                                  write_descriptions, write_failures)
    from trainer.ov import write_label_csv

    if (descriptions is None) == (subtitles is None):
        raise FeatstoreError("give exactly one of --descriptions CSV or --subtitles CSV")
    if describe_as not in DESCRIBE_INSTRUCTIONS:
        raise UnknownNameError("description prompt", describe_as, list(DESCRIBE_INSTRUCTIONS))
    src = descriptions if descriptions is not None else subtitles
    assert src is not None
    col = column or ("description" if descriptions is not None else "subtitle")
    rows = read_inputs(src, col, () if descriptions is not None else ("clues",))
    names = list(read_inputs(names_from, "name")) if names_from is not None else list(rows)
    texts = {n: rows[n][col] for n in names if n in rows}
    llm = LocalLLM.load(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    if descriptions is not None:
        res = extract_labels(llm, texts)
    else:
        res = describe_and_extract(llm, texts, {n: rows[n].get("clues", "") for n in texts}, modality=describe_as)
        if save_descriptions:
            write_descriptions(save_descriptions, res, names)
    for n in names:
        if n not in rows:
            res.failures[n] = f"no row in {src.name}"
    n_written = write_label_csv(out, {n: res.labels.get(n, []) for n in names})
    if failures:
        write_failures(failures, res)
    console.print(f"wrote {n_written} label lists to {out}; {len(res.failures)} sample(s) failed"
                  + (f" (listed in {failures})" if failures and res.failures else ""))
    for name, why in list(res.failures.items())[:10]:
        err_console.print(f"[yellow]{name}:[/] {why}", highlight=False)


@command(trainer_app, "ov-baseline")
@shared_options
def trainer_ov_baseline_cmd(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the store (its MER-OV samples must lie in the trained subset).")],
    truth: Annotated[Optional[Path], typer.Option("--truth", help="Truth CSV (name, openset); default: the stored label lists.")] = None,
    subset: Annotated[str, typer.Option(help="Without --truth: the subset holding the MER-OV samples.")] = "test_ov",
    groups: Annotated[Optional[Path], typer.Option("--groups", help="Synonym groups JSON (see ov-eval).")] = None,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="embeddings: offline grouping (see ov-eval).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Write each baseline's OV CSV here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Random baseline and of the threshold halves.")] = 0,
    *,
    audio: Optional[str], text: Optional[str], video: Optional[str], corruption: str,
    test_corruption: Optional[str], fusion: str, protocol: str, hidden_dim: int, dropout: float, lr: float,
    weight_decay: float, valence_weight: float, batch_size: int, epochs: int, folds: str, seeds: str, threads: int, store: str, as_json: bool,
) -> None:
    """MER2024 Table 5's offline baselines: Empty, Random (one of the six emotions) and the trained six-way
    classifier's out-of-fold probabilities thresholded (threshold chosen on the other half of the samples)."""
    from trainer.data import load_features
    from trainer.fit import run_experiment
    from trainer.ov import (crossfit_thresholds, empty_predictions, evaluate, out_of_fold_probabilities,
                            random_predictions, write_label_csv)

    t = _ov_truth(truth, store, None if truth else dataset, subset)
    proto = _protocol(folds=folds, mode=protocol, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, valence_weight=valence_weight, hidden=hidden_dim, dropout=dropout, seeds=seeds, threads=threads)
    fs = _open(store, read_only=True)
    features = load_features(fs, dataset, audio=_split_names(audio), text=_split_names(text),
                             video=_split_names(video), corruption=corruption, test_corruption=test_corruption)
    with _progress() as prog:
        task = prog.add_task(f"{dataset} {fusion} (out-of-fold probabilities)", total=epochs, rate="", errors="")
        result = run_experiment(features, fusion, proto.replace(test_splits=()),
                                progress=lambda ev, info: prog.update(task, completed=info.get("epoch", 0))
                                if ev == "epoch" else None)
    probs = out_of_fold_probabilities(result)
    missing = [n for n in t if n not in probs and t[n]]
    # every baseline predicts among the classes: one grouping of (truth + classes) per sample serves them all
    g, grouping = _ov_groups(groups, group_by, t, {n: list(features.classes) for n in t}, None)
    clf, thresholds = crossfit_thresholds(t, probs, features.classes, g, seed=seed)
    preds = {"empty": empty_predictions(t), "random": random_predictions(t, features.classes, seed=seed),
             f"classifier ({fusion}, thresholds {thresholds[0]:.2f}/{thresholds[1]:.2f})": clf}
    rows = [(name, evaluate(t, p, g)) for name, p in preds.items()]
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        for (name, p) in zip(("empty", "random", "classifier"), preds.values()):
            write_label_csv(out_dir / f"{dataset}-ov-{name}.csv", p)
    notes = rows[0][1].notes(kinds=("empty_truth",))          # the same truth for every baseline
    if missing:
        notes.append(f"{len(missing)} truth sample(s) have no out-of-fold prediction (not in the trained subset; "
                     f"scored as empty by the classifier): {', '.join(missing[:5])}")
    _ov_print(rows, grouping, notes, as_json)


if __name__ == "__main__":  # pragma: no cover
    featstore_app()
