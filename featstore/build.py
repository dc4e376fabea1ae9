"""`featstore build`: plan chunk-aligned partitions, then decode -> corrupt -> encode -> pool -> write each.

The partition function (`run_partition`) is the unit of work in-process and on a Dask cluster alike
(featstore.distributed): it writes whole row chunks and one finished-partition record, so concurrent
partitions need no lock. Only the coordinating process (`build`) writes attributes.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.catalog import Catalog, EncoderSpec, load_catalog, spec_hash
from featstore.corrupt import Corruptor, make_corruptor, protect
from featstore.datasets import load_index
from featstore.datasets.base import DatasetIndex, counts_line
from featstore.encoders import check_frames, load_encoder
from featstore.encoders.base import Encoder
from featstore.errors import FeatstoreError, LeaseError, SampleError, SpecMismatchError
from featstore.prefetch import prefetch_map
from featstore.store import FeatureArray, FeatureStore, KeyName

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

PACKAGES = ("featstore", "numpy", "torch", "transformers", "zarr", "av", "opensmile")
DATASET_LEASE_WAIT_S = 120.0
CRASH_STAGE = "crash"
ACCELERATOR_BATCH_SECONDS = 160.0


@dataclass
class BuildOptions:
    """Knobs that change speed, never features (so they are not part of the spec hash)."""

    batch_size: int = 16
    max_batch_seconds: float | None = None   # audio: padded seconds a batch; None: for the device (`audio_cap`)
    decode_workers: int = 1             # PyAV decode threads; 2 threads decode 2.4x slower than 1 here (GIL; RESULTS.md)
    partition_chunks: int = 1            # row chunks per partition
    rows_per_chunk: int | None = None    # None: ~4 MiB chunks (256..1024 rows)
    retry_failed: bool = False
    overwrite: bool = False

    def audio_cap(self, device: str) -> float:
        """Padded audio seconds a batch on `device`: max_batch_seconds when set; else 160 s on an accelerator and
        0 on a CPU (one clip a forward: there the one-clip forwards already run near the CPU's matmul rate, and
        padded batches ran slower -- padding, and a conv front end whose intermediates outgrow the caches;
        benchmarks/RESULTS.md extract_throughput)."""
        if self.max_batch_seconds is not None:
            return float(self.max_batch_seconds)
        return 0.0 if str(device).split(":")[0] == "cpu" else ACCELERATOR_BATCH_SECONDS


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
    """The outcome of `build`: rows written now, failures, partitions, wall time.

    failed_partitions: partitions that kept failing on a cluster (kept killing workers without one
    culprit sample, or kept raising): {start, stop, ids, reason}. They are not recorded in the store,
    so a rerun tries them again. workers: cluster workers at the start (0 for an in-process build).
    """

    key: str
    rows: int
    written: int
    already_done: int
    failed: list[dict[str, Any]]
    partitions: int
    seconds: float
    failed_partitions: list[dict[str, Any]] = field(default_factory=list)
    workers: int = 0
    seq_cap: int = 0                 # frame-level key: steps kept per sample (0: utterance features only)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.failed_partitions


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change features."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------- dataset
@contextmanager
def dataset_lease(store: FeatureStore, dataset: str, wait_s: float = DATASET_LEASE_WAIT_S) -> Iterator[None]:
    """Hold the dataset-level lease (waiting for it): serialises writes of the dataset group and the
    creation of key groups under it, so concurrent builds of other keys never clobber each other."""
    deadline = time.monotonic() + wait_s
    with ExitStack() as stack:
        while True:
            try:
                stack.enter_context(store.lease(dataset, "dataset update"))
                break
            except LeaseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield


def _same_dataset(store: FeatureStore, index: DatasetIndex, attrs: dict[str, Any]) -> bool:
    """True when the stored dataset already holds exactly these ids, labels, subsets, groups and attrs."""
    ds = index.name
    if not store.has_dataset(ds) or store.ids(ds).tolist() != [str(i) for i in index.ids]:
        return False
    stored_attrs = store.dataset_attrs(ds)
    if any(stored_attrs.get(k) != v for k, v in {**attrs, "n_samples": len(index.ids)}.items()):
        return False
    labels = store.labels(ds)
    for name, values in index.labels.items():
        if name not in labels:
            return False
        old, classes = labels[name]
        want = index.label_classes.get(name)
        new = np.asarray(values).astype(np.int16 if want is not None else np.float32)
        if (classes is None) != (want is None) or (want is not None and list(classes) != list(want)):
            return False
        if old.shape != new.shape or not np.array_equal(old, new, equal_nan=new.dtype.kind == "f"):
            return False
    subsets = store.subsets(ds)
    for name, member in index.subsets.items():
        if name not in subsets or not np.array_equal(subsets[name], np.asarray(member, bool)):
            return False
    if index.groups is not None:
        groups = store.groups(ds)
        if groups is None or groups.tolist() != [str(g) for g in index.groups]:
            return False
    return True


def index_to_store(store: FeatureStore, index: DatasetIndex, adapter: str) -> None:
    """Write (or refresh) a dataset's ids, labels and subsets from its adapter's index.

    Safe with concurrent builds: it runs under the dataset-level lease and writes nothing when the
    store already holds the same dataset (the common case for the second build into a store).
    """
    attrs = {"adapter": adapter, "source_root": str(Path(index.root).resolve()),
             "label_space": {k: v for k, v in index.label_classes.items()}}
    with dataset_lease(store, index.name):
        if _same_dataset(store, index, attrs):
            return
        if store.has_dataset(index.name) and not store.keys(index.name) and not any(store.ids(index.name)):
            store.delete_dataset(index.name)    # its ids array was created but never written (killed): redo
        store.put_dataset(index.name, index.ids, labels=index.labels, label_classes=index.label_classes,
                          subsets=index.subsets, groups=index.groups, attrs=attrs)


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


# ---------------------------------------------------------------------------------------------- samples
_FAULTS: tuple[str, dict[str, Any]] = ("", {})


def _test_fault(sample_id: str) -> None:
    """Test-only fault injection, off unless $FEATSTORE_TEST_FAULTS is set (tests/test_distributed.py).

    The variable holds JSON: {"crash": [sample ids], "delay": seconds}. `delay` sleeps before each
    sample; a sample listed in `crash` ends the process with os._exit(86) while it is being decoded,
    as a decoder segfault would. Set it only in the environment of the processes meant to die
    (Dask workers), never in production.
    """
    global _FAULTS
    raw = os.environ.get("FEATSTORE_TEST_FAULTS")
    if not raw:
        return
    if _FAULTS[0] != raw:
        try:
            _FAULTS = (raw, dict(json.loads(raw)))
        except (ValueError, TypeError):
            _FAULTS = (raw, {})
    faults = _FAULTS[1]
    if faults.get("delay"):
        time.sleep(float(faults["delay"]))
    if sample_id in faults.get("crash", ()):
        os._exit(86)


def prepare_input(encoder: Encoder, index: DatasetIndex, row: int,
                  corruptor: Corruptor | None = None) -> tuple[Any, dict[str, Any]]:
    """Decode, corrupt and (if the encoder has a `prepare` step, e.g. face cropping) prepare one sample.

    Returns (input, corruption params drawn). Runs in the prefetch threads, so it overlaps encoding.
    Raises SampleError naming the stage (decode, corrupt, face, text) and the cause.
    """
    from featstore import media

    spec = encoder.spec
    sid = index.ids[row]
    _test_fault(sid)
    if spec.modality == "text":
        x: Any = index.text[row]
        if x is None and row in getattr(index, "text_errors", {}):
            raise SampleError(sid, "text", index.text_errors[row])
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
    if corruptor is not None and sid in corruptor.precorrupted:
        drawn = {"kept": "the release already corrupted this clip"}
    elif corruptor is not None:
        x, drawn = corruptor.apply(x, sid)
        if spec.modality == "text" and not x.strip():
            raise SampleError(sid, "text", "empty subtitle after punctuation removal")
    prepare = getattr(encoder, "prepare", None)
    if prepare is not None:
        x = prepare(x, sid)
    return x, drawn


def planned_length(spec: EncoderSpec, index: DatasetIndex, row: int) -> int:
    """A sample's length for bucketing, known before it is decoded: the characters of its text, the samples of
    its audio or the frames of its video from the container's metadata (media.probe_duration; a fixed frame count
    needs no I/O). 0 when nothing is known (a missing or unreadable file, which then fails at decoding): such
    samples are batched first. A metadata length that is off costs only padding, never correctness."""
    from featstore import media

    if spec.modality == "text":
        return len(index.text[row] or "")
    if spec.modality != "audio" and spec.input.get("frames"):
        return int(spec.input["frames"])
    path = index.media[row]
    if path is None:
        return 0
    seconds = media.probe_duration(path, "audio" if spec.modality == "audio" else "video")
    if not seconds:
        return 0
    rate = float(spec.input.get("sample_rate", 16000)) if spec.modality == "audio" else float(spec.input.get("fps") or 1)
    return int(round(seconds * rate))


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


Encoded = tuple[np.ndarray, np.ndarray | None]   # (utterance row [L, D], frames [T, D] or None)


def _encode_batch(encoder: Encoder, items: list[Any], frames: bool) -> list[Encoded]:
    """One forward pass over a batch: per item its utterance row, and its frames when `frames` (encode_frames)."""
    if not frames:
        out = encoder.encode(items)
        return [(out[i], None) for i in range(len(items))]
    utt, seqs = encoder.encode_frames(items)  # type: ignore[attr-defined]
    if len(seqs) != len(items):
        raise FeatstoreError(f"encoder {encoder.spec.name}: encode_frames gave {len(seqs)} sequences for "
                             f"{len(items)} inputs")
    return [(utt[i], np.asarray(seqs[i], dtype=np.float32)) for i in range(len(items))]


def _encode_or_bisect(encoder: Encoder, items: list[Any], ids: list[str],
                      frames: bool = False) -> tuple[list[Encoded | None], list[dict[str, Any]]]:
    """Encode a batch; on failure, encode one at a time so only the culprit is recorded."""
    try:
        return list(_encode_batch(encoder, items, frames)), []
    except SampleError:
        raise
    except Exception:
        if len(items) == 1:
            raise
    rows: list[Encoded | None] = []
    records: list[dict[str, Any]] = []
    for item, sid in zip(items, ids):
        try:
            rows.append(_encode_batch(encoder, [item], frames)[0])
        except Exception as exc:  # one sample's failure never stops the partition
            rows.append(None)
            records.append({"id": sid, "stage": "encode", "message": _one_line(exc)})
    return rows, records


def _frames_problem(seq: np.ndarray | None, dim: int, f16: bool) -> str | None:
    """Why a sample's (already pooled) frames cannot be stored, or None."""
    if seq is None or seq.ndim != 2 or len(seq) == 0:
        shape = None if seq is None else tuple(seq.shape)
        return (f"no frame-level features: the encoder kept 0 real frames/tokens (shape {shape}; padding and added "
                f"special tokens are dropped)")
    if seq.shape[1] != dim:
        return f"frame-level features of dim {seq.shape[1]}, the key stores {dim}"
    if not np.isfinite(seq).all():
        return "frame-level features have NaN/Inf"
    if f16 and np.abs(seq).max(initial=0) > np.finfo(np.float16).max:
        return "frame-level values beyond float16 range"
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


@dataclass
class EncodedRows:
    """Output of `encode_rows`: float32 values [n, L, D] and a valid mask in the order of the rows given,
    the failure records (id, stage, message) and the corruption parameters drawn per sample id; for
    frame-level encoders (spec.seq_cap) also `seq`: per row its frames pooled to the cap, float32 [T_i, D]
    (None for rows that are not valid)."""

    values: np.ndarray
    valid: np.ndarray
    records: list[dict[str, Any]]
    drawn: dict[str, dict[str, Any]]
    seq: list[np.ndarray | None] | None = None


def _decoded_batches(stream: Iterator[tuple[int, Any]], planned: list[list[int]], index: DatasetIndex,
                     records: list[dict[str, Any]], drawn: dict[str, dict[str, Any]],
                     on_sample: Callable[[int, int], None] | None) -> Iterator[tuple[list[int], list[Any]]]:
    """(rows, prepared inputs) of each planned batch, taken in order from the prefetched `stream` of
    (row, prepare_input result); samples that failed to decode are recorded (and counted) instead, the
    corruption parameters drawn are kept in `drawn`, and batches left empty are skipped."""
    for batch_plan in planned:
        batch_rows, items = [], []
        for row, result in islice(stream, len(batch_plan)):
            if isinstance(result, SampleError):
                records.append({"id": result.sample_id, "stage": result.stage, "message": result.cause})
            elif isinstance(result, Exception):
                records.append({"id": index.ids[row], "stage": "decode", "message": _one_line(result)})
            else:
                x, params = result
                batch_rows.append(row)
                items.append(x)
                if params:
                    drawn[index.ids[row]] = params
            if on_sample and isinstance(result, Exception):
                on_sample(0, 1)
        if batch_rows:
            yield batch_rows, items


def encode_rows(encoder: Encoder, index: DatasetIndex, rows: Sequence[int], options: BuildOptions,
                on_sample: Callable[[int, int], None] | None = None, corruptor: Corruptor | None = None,
                skip: Mapping[str, str] | None = None, store_dtype: Any = np.float32) -> EncodedRows:
    """Decode (prefetched), corrupt and encode the given rows in length-bucketed batches; write nothing.

    Batches are planned from `planned_length` (metadata, before decoding) and decoded in batch order, so the
    prefetch thread(s) decode the next batch while one encodes. Batches depend only on the rows given (a
    partition), never on workers or timing. Samples named in `skip` (id -> message; samples that crashed a
    worker process) are not touched and are recorded with stage 'crash'. `store_dtype` is the stored dtype
    (float16 rows beyond its range are failures).
    When the encoder's spec asks for frames (seq_cap), each batch runs `encode_frames` instead of `encode`
    and every sample's frames are pooled to the cap at once (featstore.sequence.pool_to_cap); a sample
    with no frames (or bad ones) is recorded with stage 'frames' and its row stays not done.
    """
    from featstore.sequence import pool_to_cap

    spec = encoder.spec
    rows = list(rows)
    pos = {r: i for i, r in enumerate(rows)}
    values = np.zeros((len(rows), spec.n_stored_layers, spec.dim), dtype=np.float32)
    valid = np.zeros(len(rows), bool)
    cap = int(spec.seq_cap or 0)
    seq: list[np.ndarray | None] | None = [None] * len(rows) if cap else None
    records: list[dict[str, Any]] = []
    drawn: dict[str, dict[str, Any]] = {}
    skip = skip or {}
    todo = []
    for r in rows:
        if index.ids[r] in skip:
            records.append({"id": index.ids[r], "stage": CRASH_STAGE, "message": skip[index.ids[r]]})
            if on_sample:
                on_sample(0, 1)
        else:
            todo.append(r)
    sr = float(spec.input.get("sample_rate", 16000))
    max_units = options.audio_cap(str(getattr(encoder, "device", "cpu"))) * sr if spec.modality == "audio" else None
    f16 = np.dtype(store_dtype) == np.float16
    # Batches are planned from lengths known before decoding, then decoded in batch order: while one batch
    # encodes, the prefetch threads decode the next (up to two batches ahead).
    planned = [[todo[i] for i in b]
               for b in make_batches([planned_length(spec, index, r) for r in todo], options.batch_size, max_units)]
    stream = prefetch_map(lambda r: prepare_input(encoder, index, r, corruptor), [r for b in planned for r in b],
                          workers=options.decode_workers, ahead=max(8, 2 * options.batch_size))
    with closing(stream):
        for batch_rows, items in _decoded_batches(stream, planned, index, records, drawn, on_sample):
            outs, errs = _encode_or_bisect(encoder, items, [index.ids[r] for r in batch_rows], frames=bool(cap))
            records.extend(errs)
            good = 0
            for r, encoded in zip(batch_rows, outs):
                if encoded is None:
                    continue
                out, frames = encoded
                if not np.isfinite(out).all():
                    records.append({"id": index.ids[r], "stage": "encode", "message": "encoder output has NaN/Inf"})
                    continue
                if f16 and np.abs(out).max(initial=0) > np.finfo(np.float16).max:
                    records.append({"id": index.ids[r], "stage": "encode", "message": "values beyond float16 range"})
                    continue
                if seq is not None:
                    pooled = pool_to_cap(frames, cap) if frames is not None and frames.ndim == 2 and len(frames) else frames
                    problem = _frames_problem(pooled, spec.dim, f16)
                    if problem:
                        records.append({"id": index.ids[r], "stage": "frames", "message": problem})
                        continue
                    seq[pos[r]] = pooled
                values[pos[r]] = out
                valid[pos[r]] = True
                good += 1
            if on_sample:
                on_sample(good, len(batch_rows) - good)
    records.sort(key=lambda rec: rec["id"])
    return EncodedRows(values, valid, records, drawn, seq)


def run_partition(fa: FeatureArray, encoder: Encoder, index: DatasetIndex, start: int, stop: int,
                  options: BuildOptions, on_sample: Callable[[int, int], None] | None = None,
                  corruptor: Corruptor | None = None, skip: Mapping[str, str] | None = None) -> PartitionResult:
    """Build rows [start, stop): decode (prefetched), encode in length-bucketed batches, write, record.

    Rows are written whole-chunk, `done` after the rows, then the finished-partition record with the
    failures; a crash before that loses only this partition, which a rerun redoes (identically: the
    batches depend on the partition alone). `skip`: see `encode_rows`.
    """
    t0 = time.perf_counter()
    cap = int(encoder.spec.seq_cap or 0)
    if cap != fa.seq_cap:
        have = f"frames under cap {fa.seq_cap}" if fa.has_seq else "no frames"
        want = f"frames under cap {cap}" if cap else "no frames"
        raise FeatstoreError(f"{fa.key} keeps {have}, but encoder {encoder.spec.name} was loaded for {want}")
    out = encode_rows(encoder, index, range(start, stop), options, on_sample, corruptor, skip, fa.utt.dtype)
    fa.write_rows(start, out.values, out.valid, seq=out.seq)
    fa.finish_partition(start, stop, out.records, drawn=out.drawn or None)
    return PartitionResult(start, stop, int(out.valid.sum()), out.records, time.perf_counter() - t0)


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


# ---------------------------------------------------------------------------------------------- build
def stored_seq_cap(store: FeatureStore, key: KeyName) -> int | None:
    """The frame cap (T of `seq`) of an existing key (0: utterance features only), or None when there is no
    usable key (none, or one whose creation was interrupted)."""
    if not store.has_key(key):
        return None
    try:
        return store.open_key(key).seq_cap
    except KeyError:
        return None


def level_spec(spec: EncoderSpec, level: str | None, seq_cap: int | None, stored_cap: int | None) -> EncoderSpec:
    """The encoder spec a build uses: `level`/`seq_cap` as asked (EncoderSpec.at_level); with neither, an existing
    key keeps the level and cap it was built with (stored_cap: 0 = utterance only), a new key gets the entry's."""
    if level is None and seq_cap is None and stored_cap is not None:
        return spec.at_level("frame", stored_cap) if stored_cap else spec.at_level("utt")
    return spec.at_level(level, seq_cap)


def _refuse_other_level(key: KeyName, spec: EncoderSpec, stored_cap: int | None) -> None:
    """A frame-level build of an utterance-only key (or the reverse, or another cap) is another spec: refused,
    naming --overwrite, as any spec mismatch is (checked before the model loads)."""
    want = int(spec.seq_cap or 0)
    if stored_cap is None or stored_cap == want:
        return
    have = f"frame-level features under cap {stored_cap}" if stored_cap else "utterance features only"
    asked = f"frame-level features under cap {want} (--level frame)" if want else "utterance features only (--level utt)"
    raise SpecMismatchError(f"{key} keeps {have}; this build asks for {asked}, another spec -- refusing to mix them; "
                            f"use --overwrite to rebuild the key (its utterance features are rebuilt too)")


def _drop_unfinished_records(fa: FeatureArray) -> None:
    """Delete finished-partition record groups a kill -9 left incomplete (FeatureArray.unfinished_records).
    Their partitions are then planned again like any unrecorded partition. Called with the key's lease held,
    before work."""
    for name in fa.unfinished_records():
        del fa.group["errors"][name]


def _drop_half_created_key(store: FeatureStore, key: KeyName) -> None:
    """Delete a key whose creation was interrupted (kill -9 between its arrays and its spec attributes).

    No row can have been written to it (partitions start after creation), so nothing is lost. Called
    with the key's lease and the dataset's lease held.
    """
    if not store.has_key(key):
        return
    group = store.root[key.dataset][key.encoder][key.corruption]
    if "done" not in group or "spec_hash" not in group.attrs:
        store.delete_key(key)


def build(store: FeatureStore, dataset: str, encoder_name: str, corruption: str = "clean", *,
          root: str | Path | None = None, model: str | None = None, device: str = "cpu",
          trust_remote_code: bool = False, noise_bank: str | Path | None = None,
          options: BuildOptions | None = None, catalog: Catalog | None = None,
          progress: Callable[[str, Any], None] | None = None, client: Client | None = None,
          torch_threads: int | None = None, level: str | None = None, seq_cap: int | None = None) -> BuildReport:
    """Fill (dataset, encoder, corruption) in the store; a rerun does only what is missing.

    `level` 'frame' (or a `seq_cap`) also keeps frame/token-level features in the key (`seq` [N, T, D] and
    `seq_len` [N], T = seq_cap, else the entry's seq_cap, else 64); 'utt' keeps utterance features only; None
    keeps an existing key's level, else the entry's (see `level_spec`). Level and cap are part of the spec
    hash, so asking an existing key for another level is refused unless options.overwrite. A family or entry
    that has no frames fails at once, naming the encoder.

    In-process by default; with `client` (a dask.distributed Client, see featstore.distributed.connect)
    the same partitions run on the cluster's workers, which must all see the store's path. Then the
    workers are checked first (store visible, same catalog entries and package versions), each worker
    loads the encoder once, and a sample that kills worker processes is found by bisection, recorded
    with stage 'crash' and skipped. `torch_threads`: torch threads per worker (default: the worker's
    thread count).

    `progress(event, payload)` receives ("plan", {"rows": n_todo, "total": N}) once, then
    ("samples", (ok, failed)) as batches (in-process) or partitions (cluster) finish; on a cluster also
    ("workers", n_alive), ("warning", text), ("crash", {"id", "start", "stop"}) and
    ("partition_failed", {start, stop, ids, reason}).
    """
    t0 = time.perf_counter()
    options = options or BuildOptions()
    catalog = catalog or load_catalog()
    ds_spec = catalog.dataset(dataset)
    key = KeyName(dataset, encoder_name, corruption)
    stored_cap = None if options.overwrite else stored_seq_cap(store, key)
    enc_spec = level_spec(catalog.encoder(encoder_name), level, seq_cap, stored_cap)
    check_frames(enc_spec)                          # a family without frames fails before any work
    _refuse_other_level(key, enc_spec, stored_cap)
    cor_spec = catalog.corruption(corruption)
    corruptor = None
    if cor_spec.kind != "none":
        if cor_spec.modality != enc_spec.modality:
            raise FeatstoreError(f"corruption {corruption} changes {cor_spec.modality} input; encoder {encoder_name} "
                                 f"reads {enc_spec.modality}")
        if client is not None and noise_bank is not None:
            noise_bank = os.path.abspath(noise_bank)   # workers have other working directories
        if cor_spec.kind != "variant":
            corruptor = make_corruptor(cor_spec, noise_bank)
    if root is None:
        if not store.has_dataset(dataset):
            raise FeatstoreError(f"dataset {dataset} is not in the store yet; pass --root with its release folder")
        root = store.dataset_attrs(dataset).get("source_root")
    index = load_index(dataset, root, catalog)  # type: ignore[arg-type]
    if progress:
        line, differs = counts_line(index, ds_spec)
        progress("warning" if differs else "info", line + ("" if differs else " (as the catalog expects)"
                                                           if ds_spec.expected_counts else ""))
    if cor_spec.kind == "variant":
        if corruption not in index.variants:
            raise FeatstoreError(f"corruption {corruption} is an input variant, and the {dataset} release read at "
                                 f"{root} provides none (variants: {', '.join(index.variants) or 'none'}); add it to the "
                                 f"release (e.g. a `subtitle@{corruption}` or `path@{corruption}` column for the csv "
                                 f"adapter) or bring its features with `featstore import mertools`")
        index = index.with_variant(corruption)
    if corruptor is not None and ds_spec.precorrupted:
        kept = protect(corruptor, index, ds_spec.precorrupted)
        if kept and progress:
            progress("warning", f"{kept} clip(s) of {', '.join(ds_spec.precorrupted)} already carry the release's "
                                f"corruption; they are encoded as they are")
    cluster = None
    if client is not None:
        from featstore.distributed import ClusterBuild

        cluster = ClusterBuild(client, store, key, catalog, enc_spec, model=model, device=device,
                               trust_remote_code=trust_remote_code, corruptor=corruptor, options=options,
                               torch_threads=torch_threads, progress=progress)
        cluster.check_workers()          # before anything is written (then the workers load the model)
    index_to_store(store, index, ds_spec.adapter)   # ids, labels, subsets: the same for every variant
    if cluster is not None:
        prov = cluster.provenance()      # loaded on a worker: the client never loads the model
        enc = None
    else:
        enc = load_encoder(enc_spec, model=model, device=device, trust_remote_code=trust_remote_code)
        prov = enc.provenance()
    cor_feature_spec = corruptor.feature_spec() if corruptor else cor_spec.feature_spec()
    spec = key_spec(enc_spec, cor_feature_spec, prov.get("weights"))
    failed_parts: list[dict[str, Any]] = []
    with store.lease(key, "build"):
        with dataset_lease(store, dataset):   # key groups are created under the dataset's lease
            _drop_half_created_key(store, key)
            fa = store.create_key(key, layers=enc_spec.n_stored_layers, dim=enc_spec.dim, dtype=enc_spec.dtype,
                                  spec=spec, spec_hash=spec_hash(spec), rows_per_chunk=options.rows_per_chunk,
                                  overwrite=options.overwrite, seq_cap=enc_spec.seq_cap)
        _drop_unfinished_records(fa)
        already = int(fa.done_mask().sum())
        parts = plan_partitions(fa, options)
        todo = sum(e - s for s, e in parts)
        if progress:
            progress("plan", {"rows": todo, "total": fa.n})
        if cluster is not None:
            written, failed_parts = cluster.run(fa, index, parts, spec_hash(spec), prov.get("weights"))
        else:
            on_sample = (lambda ok, bad: progress("samples", (ok, bad))) if progress else None
            results = [run_partition(fa, enc, index, s, e, options, on_sample, corruptor) for s, e in parts]
            written = sum(r.written for r in results)
        failed = fa.errors()
        # only this (coordinating) process writes attributes, and only its own key's
        fa.group.attrs.update({
            "encoder": enc_spec.name, "corruption": corruption, "dataset": dataset,
            "provenance": {**prov, "packages": package_versions(), "host": socket.gethostname(),
                           "device": device, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "rows_done": int(fa.done_mask().sum()), "n_errors": len(failed),
        })
    return BuildReport(str(key), fa.n, written, already, failed, len(parts), time.perf_counter() - t0,
                       failed_parts, cluster.n_workers if cluster else 0, fa.seq_cap)
