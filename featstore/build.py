"""`featstore build`: plan chunk-aligned partitions, then decode -> corrupt -> encode -> pool -> write each.

The partition function (`run_partition`) is the unit of work locally and on a Dask cluster alike: it
writes whole row chunks and one finished-partition record, so concurrent partitions need no lock.
Only the coordinating process (`build`) writes the key's attributes.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from featstore.catalog import Catalog, EncoderSpec, load_catalog, spec_hash
from featstore.corrupt import Corruptor, make_corruptor
from featstore.datasets import load_index
from featstore.datasets.base import DatasetIndex
from featstore.encoders import load_encoder
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError, SampleError
from featstore.prefetch import prefetch_map
from featstore.store import FeatureArray, FeatureStore, KeyName

PACKAGES = ("featstore", "numpy", "torch", "transformers", "zarr", "av", "opensmile")


@dataclass
class BuildOptions:
    """Knobs that change speed, never features (so they are not part of the spec hash)."""

    batch_size: int = 16
    max_batch_seconds: float = 160.0     # audio: total seconds of padded audio per batch
    decode_workers: int = 2
    partition_chunks: int = 1            # row chunks per partition
    rows_per_chunk: int | None = None    # None: ~4 MiB chunks (256..1024 rows)
    retry_failed: bool = False
    overwrite: bool = False


@dataclass
class PartitionResult:
    """What one partition did: its rows, how many were written, and the per-sample failures."""

    start: int
    stop: int
    written: int
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BuildReport:
    """The outcome of `build`: rows written now, failures, partitions, wall time."""

    key: str
    rows: int
    written: int
    already_done: int
    failed: list[dict[str, Any]]
    partitions: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change features."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def index_to_store(store: FeatureStore, index: DatasetIndex, adapter: str) -> None:
    """Write (or refresh) a dataset's ids, labels and subsets from its adapter's index."""
    store.put_dataset(index.name, index.ids, labels=index.labels, label_classes=index.label_classes,
                      subsets=index.subsets, groups=index.groups,
                      attrs={"adapter": adapter, "source_root": str(Path(index.root).resolve()),
                             "label_space": {k: v for k, v in index.label_classes.items()}})


def key_spec(encoder: EncoderSpec, corruption: dict[str, Any], weights: Any) -> dict[str, Any]:
    """Everything that changes a key's features: encoder recipe, resolved weights, corruption spec + seed.

    When the resolved weights are known (a hash or a package version), the model's hub id/path is left
    out, so the same weights reached through another path give the same key.
    """
    enc = encoder.feature_spec()
    if weights:
        enc.pop("model", None)
        enc.pop("revision", None)
    return {"encoder": enc, "weights": weights, "corruption": corruption}


def prepare_input(encoder: Encoder, index: DatasetIndex, row: int,
                  corruptor: Corruptor | None = None) -> tuple[Any, dict[str, Any]]:
    """Decode, corrupt and (if the encoder has a `prepare` step, e.g. face cropping) prepare one sample.

    Returns (input, corruption params drawn). Runs in the prefetch threads, so it overlaps encoding.
    Raises SampleError naming the stage (decode, corrupt, face, text) and the cause.
    """
    from featstore import media

    spec = encoder.spec
    sid = index.ids[row]
    if spec.modality == "text":
        x: Any = index.text[row]
        if x is None or not str(x).strip():
            raise SampleError(sid, "text", "empty subtitle")
        x = str(x)
    else:
        path = index.media[row]
        if path is None:
            raise SampleError(sid, "decode", "missing file (no media path for this sample)")
        if spec.modality == "audio":
            x = media.decode_audio(path, sid, sample_rate=int(spec.input.get("sample_rate", 16000)))
        else:
            x = media.decode_frames(path, sid, n_frames=spec.input.get("frames"), fps=spec.input.get("fps"),
                                    max_side=spec.input.get("max_side"))
    drawn: dict[str, Any] = {}
    if corruptor is not None:
        x, drawn = corruptor.apply(x, sid)
        if spec.modality == "text" and not x.strip():
            raise SampleError(sid, "text", "empty subtitle after punctuation removal")
    prepare = getattr(encoder, "prepare", None)
    if prepare is not None:
        x = prepare(x, sid)
    return x, drawn


def input_length(x: Any) -> int:
    """Length used to bucket a batch: samples, characters or frames."""
    return len(x)


def make_batches(lengths: Sequence[int], batch_size: int, max_units: float | None) -> list[list[int]]:
    """Length-bucketed batches: sort by length, cap each batch by count and by padded size (B * max len)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        padded = (len(cur) + 1) * lengths[i]
        if cur and (len(cur) >= batch_size or (max_units is not None and padded > max_units)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _encode_or_bisect(encoder: Encoder, items: list[Any], ids: list[str]) -> tuple[list[np.ndarray | None], list[dict[str, Any]]]:
    """Encode a batch; on failure, encode one at a time so only the culprit is recorded."""
    try:
        out = encoder.encode(items)
        return [out[i] for i in range(len(items))], []
    except SampleError:
        raise
    except Exception:
        if len(items) == 1:
            raise
    rows: list[np.ndarray | None] = []
    records: list[dict[str, Any]] = []
    for item, sid in zip(items, ids):
        try:
            rows.append(encoder.encode([item])[0])
        except Exception as exc:  # one sample's failure never stops the partition
            rows.append(None)
            records.append({"id": sid, "stage": "encode", "message": _one_line(exc)})
    return rows, records


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def run_partition(fa: FeatureArray, encoder: Encoder, index: DatasetIndex, start: int, stop: int,
                  options: BuildOptions, on_sample: Callable[[int, int], None] | None = None,
                  corruptor: Corruptor | None = None) -> PartitionResult:
    """Build rows [start, stop): decode (prefetched), encode in length-bucketed batches, write, record.

    Rows are written whole-chunk, `done` after the rows, then the finished-partition record with the
    failures; a crash before that loses only this partition, which a rerun redoes.
    """
    t0 = time.perf_counter()
    spec = encoder.spec
    n = stop - start
    values = np.zeros((n, spec.n_stored_layers, spec.dim), dtype=np.float32)
    valid = np.zeros(n, bool)
    records: list[dict[str, Any]] = []
    decoded: dict[int, Any] = {}
    drawn: dict[str, dict[str, Any]] = {}
    for row, result in prefetch_map(lambda r: prepare_input(encoder, index, r, corruptor), range(start, stop),
                                    workers=options.decode_workers):
        if isinstance(result, SampleError):
            records.append({"id": result.sample_id, "stage": result.stage, "message": result.cause})
        elif isinstance(result, Exception):
            records.append({"id": index.ids[row], "stage": "decode", "message": _one_line(result)})
        else:
            decoded[row], params = result
            if params:
                drawn[index.ids[row]] = params
        if on_sample and isinstance(result, Exception):
            on_sample(0, 1)
    rows = sorted(decoded)
    sr = float(spec.input.get("sample_rate", 16000))
    max_units = options.max_batch_seconds * sr if spec.modality == "audio" else None
    for batch in make_batches([input_length(decoded[r]) for r in rows], options.batch_size, max_units):
        batch_rows = [rows[i] for i in batch]
        outs, errs = _encode_or_bisect(encoder, [decoded[r] for r in batch_rows], [index.ids[r] for r in batch_rows])
        records.extend(errs)
        good = 0
        for r, out in zip(batch_rows, outs):
            if out is None:
                continue
            if not np.isfinite(out).all():
                records.append({"id": index.ids[r], "stage": "encode", "message": "encoder output has NaN/Inf"})
                continue
            if fa.utt.dtype == np.float16 and np.abs(out).max(initial=0) > np.finfo(np.float16).max:
                records.append({"id": index.ids[r], "stage": "encode", "message": "values beyond float16 range"})
                continue
            values[r - start] = out
            valid[r - start] = True
            good += 1
        if on_sample:
            on_sample(good, len(batch_rows) - good)
        for r in batch_rows:
            decoded.pop(r, None)
    fa.write_rows(start, values, valid)
    records.sort(key=lambda rec: rec["id"])
    fa.finish_partition(start, stop, records, drawn=drawn or None)
    return PartitionResult(start, stop, int(valid.sum()), records, time.perf_counter() - t0)


def plan_partitions(fa: FeatureArray, options: BuildOptions) -> list[tuple[int, int]]:
    """Group the pending row chunks into partitions of `partition_chunks` contiguous chunks."""
    chunks = fa.pending_chunks(retry_failed=options.retry_failed)
    parts: list[tuple[int, int]] = []
    for s, e in chunks:
        if parts and parts[-1][1] == s and (e - parts[-1][0]) <= options.partition_chunks * fa.rows_per_chunk:
            parts[-1] = (parts[-1][0], e)
        else:
            parts.append((s, e))
    return parts


def build(store: FeatureStore, dataset: str, encoder_name: str, corruption: str = "clean", *,
          root: str | Path | None = None, model: str | None = None, device: str = "cpu",
          trust_remote_code: bool = False, noise_bank: str | Path | None = None,
          options: BuildOptions | None = None, catalog: Catalog | None = None,
          progress: Callable[[str, Any], None] | None = None) -> BuildReport:
    """Fill (dataset, encoder, corruption) in the store; a rerun does only what is missing.

    `progress(event, payload)` receives ("plan", {"rows": n_todo, "total": N}) once, then
    ("samples", (ok, failed)) as batches finish.
    """
    t0 = time.perf_counter()
    options = options or BuildOptions()
    catalog = catalog or load_catalog()
    ds_spec = catalog.dataset(dataset)
    enc_spec = catalog.encoder(encoder_name)
    cor_spec = catalog.corruption(corruption)
    corruptor = None
    if cor_spec.kind != "none":
        if cor_spec.modality != enc_spec.modality:
            raise FeatstoreError(f"corruption {corruption} changes {cor_spec.modality} input; encoder {encoder_name} "
                                 f"reads {enc_spec.modality}")
        if cor_spec.kind == "variant":
            raise FeatstoreError(f"corruption {corruption} is an input variant: its inputs come from files the dataset "
                                 f"adapter provides (e.g. `featstore import mertools` of a -{corruption} folder)")
        corruptor = make_corruptor(cor_spec, noise_bank)
    if root is None:
        if not store.has_dataset(dataset):
            raise FeatstoreError(f"dataset {dataset} is not in the store yet; pass --root with its release folder")
        root = store.dataset_attrs(dataset).get("source_root")
    index = load_index(dataset, root, catalog)  # type: ignore[arg-type]
    index_to_store(store, index, ds_spec.adapter)
    enc = load_encoder(enc_spec, model=model, device=device, trust_remote_code=trust_remote_code)
    prov = enc.provenance()
    cor_feature_spec = corruptor.feature_spec() if corruptor else cor_spec.feature_spec()
    spec = key_spec(enc_spec, cor_feature_spec, prov.get("weights"))
    key = KeyName(dataset, encoder_name, corruption)
    with store.lease(key, "build"):
        fa = store.create_key(key, layers=enc_spec.n_stored_layers, dim=enc_spec.dim, dtype=enc_spec.dtype,
                              spec=spec, spec_hash=spec_hash(spec), rows_per_chunk=options.rows_per_chunk,
                              overwrite=options.overwrite)
        already = int(fa.done_mask().sum())
        parts = plan_partitions(fa, options)
        todo = sum(e - s for s, e in parts)
        if progress:
            progress("plan", {"rows": todo, "total": fa.n})
        on_sample = (lambda ok, bad: progress("samples", (ok, bad))) if progress else None
        results = [run_partition(fa, enc, index, s, e, options, on_sample, corruptor) for s, e in parts]
        written = sum(r.written for r in results)
        failed = fa.errors()
        fa.group.attrs.update({
            "encoder": enc_spec.name, "corruption": corruption, "dataset": dataset,
            "provenance": {**prov, "packages": package_versions(), "host": socket.gethostname(),
                           "device": device, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "rows_done": int(fa.done_mask().sum()), "n_errors": len(failed),
        })
    return BuildReport(str(key), fa.n, written, already, failed, len(parts), time.perf_counter() - t0)
