"""The feature store: a Zarr v3 hierarchy of (dataset, encoder, corruption) keys with ids, labels and subsets.

Layout (see DESIGN.md)::

    /                                 attrs: featstore_format
    /<dataset>/                       attrs: adapter, source root, n_samples, label space
    /<dataset>/ids                    [N] str, canonical order, never reordered
    /<dataset>/labels/<name>          [N] int16 codes (-1 = none; attrs.classes) or float32 (NaN = none)
    /<dataset>/subsets/<name>         [N] bool memberships
    /<dataset>/groups                 [N] str (optional; e.g. IEMOCAP sessions)
    /<dataset>/<encoder>/<corruption>/   attrs: spec, spec_hash, provenance, rows_per_chunk, ...
        utt    [N, L, D] chunks (rows_per_chunk, 1, D): one layer per chunk
        done   [N] bool, same row chunking: row i holds valid features
        seq    [N, T, D] (optional; frame-level keys: `featstore build --level frame` or an entry's `seq_cap` T):
               frame/token-level features padded after the real frames, pooled by an integer factor to fit T
               (featstore.sequence); row chunks divide utt's, so a partition stays whole chunks of both.
               The same key holds utt and seq (one encoder pass writes both); level and cap are in the spec
               hash, so adding frames to an utterance-only key is a rebuild (--overwrite). When utt keeps
               L > 1 layers, seq keeps their mean.
        seq_len [N] int32, utt's row chunking: real steps of each row in `seq` (0 = not written)
        errors/p<start>   one group per finished build partition; attrs.records = failures

A partition is a whole number of row chunks, so parallel writers never share a chunk and need no lock.
Only the coordinating process writes the key's attributes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from featstore.errors import (BadValuesError, LeaseError, MissingFramesError, MissingKeyError, SpecMismatchError,
                             StoreError)

FORMAT_VERSION = 1
DEFAULT_STORE = "featstore.zarr"
# Measured in benchmarks/store_read.py: fp16 embeddings compress by ~6% with zstd and reading them
# back is 2x slower on 2 cores; blosc-lz4 saves nothing. Uncompressed chunks read at memory speed.
DEFAULT_COMPRESSORS: Any = None
TARGET_CHUNK_BYTES = 4 << 20
SEQ_CHUNK_BYTES = 16 << 20   # the largest seq chunk (rows dividing utt's chunk rows)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
RESERVED = {"ids", "labels", "subsets", "groups", "ov"}


def default_store_path() -> str:
    """--store, else $FEATSTORE_STORE, else ./featstore.zarr."""
    return os.environ.get("FEATSTORE_STORE", DEFAULT_STORE)


def rows_per_chunk_for(dim: int, itemsize: int) -> int:
    """Rows per chunk for ~4 MiB chunks, clamped to 256..1024 rows (a power of two)."""
    rows = TARGET_CHUNK_BYTES // max(1, dim * itemsize)
    rows = 1 << max(0, int(rows).bit_length() - 1)
    return int(min(1024, max(256, rows)))


def seq_rows_per_chunk(rows_per_chunk: int, cap: int, dim: int, itemsize: int) -> int:
    """Rows per `seq` chunk: the largest divisor of utt's rows per chunk whose chunk stays <= SEQ_CHUNK_BYTES, so
    a build partition (whole utt chunks) is always whole seq chunks too."""
    per_row = max(1, cap * dim * itemsize)
    best = 1
    for d in range(1, rows_per_chunk + 1):
        if rows_per_chunk % d == 0 and d * per_row <= SEQ_CHUNK_BYTES:
            best = d
    return best


def _check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name) or name in RESERVED:
        raise StoreError(f"invalid {kind} name '{name}': use letters, digits and _.+- (not {', '.join(sorted(RESERVED))})")
    return name


@dataclass(frozen=True)
class KeyName:
    """A (dataset, encoder, corruption) triple; `str()` gives 'dataset/encoder/corruption'."""

    dataset: str
    encoder: str
    corruption: str = "clean"

    @classmethod
    def parse(cls, text: str) -> "KeyName":
        """Parse 'DATASET/ENCODER[/CORRUPTION]' (corruption defaults to clean)."""
        parts = text.strip("/").split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise StoreError(f"'{text}' is not DATASET/ENCODER[/CORRUPTION]")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.encoder}/{self.corruption}"


class FeatureArray:
    """One key's arrays: `utt` [N, L, D], the `done` mask and per-partition error records."""

    def __init__(self, store: "FeatureStore", key: KeyName, group: zarr.Group) -> None:
        self.store, self.key, self.group = store, key, group
        self.utt: zarr.Array = group["utt"]  # type: ignore[assignment]
        self.done: zarr.Array = group["done"]  # type: ignore[assignment]
        self.rows_per_chunk = int(self.utt.chunks[0])
        self.seq: zarr.Array | None = group["seq"] if "seq" in group else None  # type: ignore[assignment]
        self.seq_len: zarr.Array | None = group["seq_len"] if "seq_len" in group else None  # type: ignore[assignment]

    @property
    def has_seq(self) -> bool:
        """The key keeps frame/token-level features (`seq`, `seq_len`)."""
        return self.seq is not None

    @property
    def seq_cap(self) -> int:
        """T of `seq` (0 when the key keeps none)."""
        return int(self.seq.shape[1]) if self.seq is not None else 0

    @property
    def n(self) -> int:
        return int(self.utt.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.utt.shape)  # type: ignore[return-value]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def chunk_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) of every row chunk."""
        r = self.rows_per_chunk
        return [(s, min(s + r, self.n)) for s in range(0, self.n, r)]

    def _check_aligned(self, start: int, stop: int) -> None:
        r = self.rows_per_chunk
        if start < 0 or stop > self.n or start >= stop:
            raise StoreError(f"{self.key}: rows [{start}, {stop}) out of range for {self.n} rows")
        if start % r or (stop % r and stop != self.n):
            raise StoreError(f"{self.key}: rows [{start}, {stop}) are not aligned to chunks of {r} rows")

    def write_rows(self, start: int, values: np.ndarray, valid: np.ndarray | None = None,
                   seq: Sequence[np.ndarray | None] | None = None) -> None:
        """Write rows [start, start+len(values)) -- a whole number of chunks -- then mark valid rows done.

        values: [n, L, D] (or [n, D] when L == 1), any float dtype; cast to the stored dtype. Rows where
        `valid` is False (failed samples) are written as zeros and stay not-done. A non-finite valid row,
        or one that overflows the stored dtype, raises BadValuesError naming the sample.
        seq: for keys with `seq`, one [T_i, D] frame-level array per row (None for failed rows); pooled by an
        integer factor to fit the key's cap (never truncated). An empty sequence of a valid row is refused.
        """
        values = np.asarray(values)
        if values.ndim == 2 and self.utt.shape[1] == 1:
            values = values[:, None, :]
        stop = start + len(values)
        self._check_aligned(start, stop)
        if values.shape[1:] != self.utt.shape[1:]:
            raise BadValuesError(f"{self.key}: rows have shape {values.shape[1:]}, the key stores {self.utt.shape[1:]}")
        if not np.issubdtype(values.dtype, np.floating):
            raise BadValuesError(f"{self.key}: values of dtype {values.dtype} given; a float array is required")
        valid = np.ones(len(values), bool) if valid is None else np.asarray(valid, bool)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and reported just below
            stored = values.astype(self.utt.dtype, copy=False)
        finite = np.isfinite(stored).all(axis=(1, 2))
        bad = np.flatnonzero(valid & ~finite)
        if len(bad):
            ids = self.store.ids(self.key.dataset)
            i = start + int(bad[0])
            cause = "NaN/Inf" if not np.isfinite(values[bad[0]]).all() else f"values beyond {self.utt.dtype} range"
            raise BadValuesError(f"{self.key}: sample {ids[i]} (row {i}) has {cause}; nothing of this range was written")
        if not valid.all():
            stored = stored.copy()
            stored[~valid] = 0
        seq_block = None
        if self.seq is not None:
            if seq is None or len(seq) != len(values):
                raise BadValuesError(f"{self.key}: the key keeps frame-level features (seq); "
                                     f"{'none' if seq is None else len(seq)} sequences given for {len(values)} rows")
            seq_block = self._seq_block(start, seq, valid)
        elif seq is not None:
            raise BadValuesError(f"{self.key}: sequences given, but the key keeps no seq array")
        self.utt[start:stop] = stored
        if seq_block is not None and self.seq is not None and self.seq_len is not None:
            self.seq[start:stop] = seq_block[0]
            self.seq_len[start:stop] = seq_block[1]
        self.done[start:stop] = valid

    def _seq_block(self, start: int, seq: Sequence[np.ndarray | None], valid: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The padded [n, T, D] block and lengths [n] of the given rows' sequences (checked, pooled, cast)."""
        from featstore.sequence import pool_to_cap

        assert self.seq is not None
        cap, dim = int(self.seq.shape[1]), int(self.seq.shape[2])
        block = np.zeros((len(seq), cap, dim), dtype=self.seq.dtype)
        lengths = np.zeros(len(seq), dtype=np.int32)
        for i, x in enumerate(seq):
            if not valid[i]:
                continue
            sid = lambda: f"sample {self.store.ids(self.key.dataset)[start + i]} (row {start + i})"  # noqa: E731
            if x is None or np.asarray(x).ndim != 2 or len(x) == 0:
                raise BadValuesError(f"{self.key}: {sid()} has an empty or malformed sequence "
                                     f"(shape {None if x is None else np.asarray(x).shape}); nothing of this range was written")
            if np.asarray(x).shape[1] != dim:
                raise BadValuesError(f"{self.key}: {sid()} has sequence features of dim {np.asarray(x).shape[1]}, "
                                     f"the key stores {dim}")
            pooled = pool_to_cap(x, cap)
            with np.errstate(over="ignore", invalid="ignore"):
                cast = pooled.astype(self.seq.dtype)
            if not np.isfinite(cast).all():
                cause = "NaN/Inf" if not np.isfinite(pooled).all() else f"values beyond {self.seq.dtype} range"
                raise BadValuesError(f"{self.key}: {sid()} has {cause} in its sequence; nothing of this range was written")
            block[i, :len(cast)] = cast
            lengths[i] = len(cast)
        return block, lengths

    def finish_partition(self, start: int, stop: int, records: Sequence[dict[str, Any]],
                         drawn: dict[str, dict[str, Any]] | None = None) -> None:
        """Record a finished partition: its per-sample failures (id, stage, message) and, for corrupted
        keys, the corruption parameters drawn per sample (id -> params)."""
        attrs: dict[str, Any] = {"start": int(start), "stop": int(stop), "records": list(records), "finished": _now()}
        if drawn:
            attrs["drawn"] = drawn
        # one metadata write (attrs.update writes zarr.json once per key): a kill leaves the whole record or none
        self.group.require_group("errors").create_group(f"p{start:010d}", attributes=attrs, overwrite=True)

    def drawn_params(self) -> dict[str, dict[str, Any]]:
        """Sample id -> corruption parameters drawn for it (noise SNR and clips, blur factor, ...)."""
        out: dict[str, dict[str, Any]] = {}
        for _, rec in sorted(self.partition_records().items()):
            out.update(rec.get("drawn", {}))
        return out

    def partition_records(self) -> dict[int, dict[str, Any]]:
        """start row -> record of every finished partition."""
        if "errors" not in self.group:
            return {}
        errs = self.group["errors"]
        return {int(v.attrs["start"]): dict(v.attrs) for _, v in errs.groups() if _complete_record(v.attrs)}

    def unfinished_records(self) -> list[str]:
        """Names of record groups a kill left incomplete (not finished partitions: planned again)."""
        if "errors" not in self.group:
            return []
        return [name for name, v in self.group["errors"].groups() if not _complete_record(v.attrs)]

    def errors(self) -> list[dict[str, Any]]:
        """All per-sample failure records, in row order."""
        out: list[dict[str, Any]] = []
        for _, rec in sorted(self.partition_records().items()):
            out.extend(rec.get("records", []))
        return out

    def done_mask(self) -> np.ndarray:
        """[N] bool: rows holding valid features."""
        return np.asarray(self.done[:], bool)

    def pending_chunks(self, retry_failed: bool = False) -> list[tuple[int, int]]:
        """Chunks that still need work: not all rows done and (unless retry_failed) no finished-partition record."""
        done = self.done_mask()
        finished: list[tuple[int, int]] = []
        if not retry_failed:
            finished = [(s, int(r["stop"])) for s, r in self.partition_records().items()]
        todo = []
        for s, e in self.chunk_ranges():
            if done[s:e].all():
                continue
            if any(fs <= s and e <= fe for fs, fe in finished):
                continue
            todo.append((s, e))
        return todo

    def read(self, rows: np.ndarray | None = None, layers: Sequence[int] | None = None) -> np.ndarray:
        """[n, L', D] array of the given rows (all when None) and layers (all when None), stored dtype."""
        L = self.utt.shape[1]
        layer_idx = list(range(L)) if layers is None else [int(i) % L for i in layers]
        for i in ([] if layers is None else layers):
            if not -L <= int(i) < L:
                raise StoreError(f"{self.key}: layer {i} out of range; the key stores {L} layer(s)")
        if rows is None:
            if layer_idx == list(range(L)):
                return self.utt[:]
            return np.stack([self.utt[:, i, :] for i in layer_idx], axis=1)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), len(layer_idx), self.utt.shape[2]), dtype=self.utt.dtype)
        if len(rows) == 0:
            return out
        r = self.rows_per_chunk
        chunk_of = rows // r
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            s, e = int(c) * r, min(int(c) * r + r, self.n)
            for j, li in enumerate(layer_idx):
                block = self.utt[s:e, li, :]
                out[sel, j, :] = block[rows[sel] - s]
        return out

    def read_seq(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frame-level features of the given rows (all when None): ([n, T', D] stored dtype, [n] int32 lengths),
        T' the longest of those rows' sequences (the padding past it is dropped); rows not done have length 0."""
        if self.seq is None or self.seq_len is None:
            raise MissingFramesError(f"{self.key} keeps no frame-level features (seq); rebuild it with an encoder "
                                  f"entry that sets seq_cap, e.g. featstore build ... --level frame")
        if rows is None:
            lengths = np.asarray(self.seq_len[:], np.int32)
            t = int(lengths.max()) if len(lengths) else 0
            return np.asarray(self.seq[:, :max(t, 1), :]), lengths
        rows = np.asarray(rows, dtype=np.int64)
        all_len = np.asarray(self.seq_len[:], np.int32)
        lengths = all_len[rows] if len(rows) else np.zeros(0, np.int32)
        t = max(1, int(lengths.max()) if len(lengths) else 1)
        out = np.zeros((len(rows), t, int(self.seq.shape[2])), dtype=self.seq.dtype)
        r = int(self.seq.chunks[0])
        chunk_of = rows // r
        for c in np.unique(chunk_of):
            sel = np.flatnonzero(chunk_of == c)
            s, e = int(c) * r, min(int(c) * r + r, self.n)
            block = self.seq[s:e, :t, :]
            out[sel] = block[rows[sel] - s]
        return out, lengths

    def info(self) -> dict[str, Any]:
        """Shape, dtype, chunking, rows done, error count and provenance attributes; for keys with frames also
        seq_shape, seq_cap and the mean/max steps of done rows (seq_len_mean, seq_len_max)."""
        done = self.done_mask()
        out = {"key": str(self.key), "shape": list(self.shape), "dtype": str(self.utt.dtype),
               "rows_per_chunk": self.rows_per_chunk, "rows_done": int(done.sum()),
               "errors": self.errors(), "attrs": self.attrs}
        if self.seq is not None and self.seq_len is not None:
            lengths = np.asarray(self.seq_len[:], np.int64)[done]
            out.update({"seq_shape": list(self.seq.shape), "seq_cap": self.seq_cap,
                        "seq_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
                        "seq_len_max": int(lengths.max()) if len(lengths) else 0})
        return out


class FeatureStore:
    """A Zarr v3 feature store. Open with `FeatureStore(path)` (read) or `FeatureStore(path, create=True)`."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = False,
                 read_only: bool = False) -> None:
        self.path = str(path or default_store_path())
        local = "://" not in self.path
        exists = (Path(self.path) / "zarr.json").is_file() if local else True
        if not exists:
            if not create:
                if local and Path(self.path).exists():
                    raise StoreError(f"{self.path} is not a featstore store (no zarr.json)")
                raise StoreError(f"no store at {self.path}; build or import features first (featstore build ...)")
            root = zarr.open_group(self.path, mode="a", zarr_format=3)
            root.attrs.update({"featstore_format": FORMAT_VERSION, "created": _now()})
        else:
            try:
                root = zarr.open_group(self.path, mode="r" if read_only else "r+", zarr_format=3)
            except Exception as exc:  # zarr raises several types for non-stores
                raise StoreError(f"{self.path} is not a featstore store ({type(exc).__name__}: {exc})") from None
            if "featstore_format" not in root.attrs:
                raise StoreError(f"{self.path} is a Zarr group but not a featstore store (no featstore_format attribute)")
            if int(root.attrs["featstore_format"]) > FORMAT_VERSION:
                raise StoreError(f"{self.path} has store format {root.attrs['featstore_format']}; this featstore reads up to {FORMAT_VERSION}")
        self.root = root
        self.local = local
        self._ids_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ datasets
    def datasets(self) -> list[str]:
        """Names of the datasets in the store."""
        with warnings.catch_warnings():  # the .featstore/ lease folder is not a Zarr node; zarr warns about it
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            return sorted(name for name, _ in self.root.groups())

    def has_dataset(self, dataset: str) -> bool:
        return dataset in self.root and "ids" in self.root[dataset]

    def put_dataset(self, dataset: str, ids: Sequence[str], *, labels: dict[str, np.ndarray] | None = None,
                    label_classes: dict[str, list[str]] | None = None, subsets: dict[str, np.ndarray] | None = None,
                    groups: np.ndarray | None = None, attrs: dict[str, Any] | None = None) -> None:
        """Create a dataset's ids, labels and subsets, or update labels/subsets of one with the same ids.

        The id order is canonical and never changes: a dataset whose stored ids differ is refused.
        """
        _check_name("dataset", dataset)
        ids_arr = np.asarray([str(i) for i in ids], dtype=object)
        if len(set(ids_arr.tolist())) != len(ids_arr):
            raise StoreError(f"dataset {dataset}: duplicate sample ids")
        n = len(ids_arr)
        if self.has_dataset(dataset):
            old = self.ids(dataset)
            if len(old) != n or not np.array_equal(old, ids_arr.astype(str)):
                raise StoreError(f"dataset {dataset} is already stored with {len(old)} other ids; the id order never "
                                 f"changes (remove it with `featstore rm {dataset}` to start again)")
            g = self.root[dataset]
        else:
            g = self.root.require_group(dataset)
            a = g.create_array("ids", shape=(n,), dtype=str, chunks=(max(1, min(n, 1 << 17)),))
            a[:] = ids_arr
        for name, values in (labels or {}).items():
            _check_name("label", name)
            values = np.asarray(values)
            if len(values) != n:
                raise StoreError(f"dataset {dataset}: label '{name}' has {len(values)} rows for {n} ids")
            classes = (label_classes or {}).get(name)
            if classes is not None:
                arr = g.require_group("labels").create_array(name, shape=(n,), dtype="int16", chunks=(max(1, n),), overwrite=True)
                arr[:] = values.astype(np.int16)
                arr.attrs.update({"kind": "categorical", "classes": list(classes)})
            else:
                arr = g.require_group("labels").create_array(name, shape=(n,), dtype="float32", chunks=(max(1, n),), overwrite=True)
                arr[:] = values.astype(np.float32)
                arr.attrs.update({"kind": "continuous"})
        for name, member in (subsets or {}).items():
            _check_name("subset", name)
            member = np.asarray(member, bool)
            if len(member) != n:
                raise StoreError(f"dataset {dataset}: subset '{name}' has {len(member)} rows for {n} ids")
            arr = g.require_group("subsets").create_array(name, shape=(n,), dtype="bool", chunks=(max(1, n),), overwrite=True)
            arr[:] = member
        if groups is not None:
            arr = g.create_array("groups", shape=(n,), dtype=str, chunks=(max(1, n),), overwrite=True)
            arr[:] = np.asarray([str(x) for x in groups], dtype=object)
        g.attrs.update({**(attrs or {}), "n_samples": n, "updated": _now()})
        self._ids_cache.pop(dataset, None)

    def _dataset_group(self, dataset: str) -> zarr.Group:
        if not self.has_dataset(dataset):
            raise MissingKeyError(f"no dataset '{dataset}' in {self.path}; known: {', '.join(self.datasets()) or 'none'}")
        return self.root[dataset]  # type: ignore[return-value]

    def ids(self, dataset: str) -> np.ndarray:
        """[N] str array of sample ids in canonical order."""
        if dataset not in self._ids_cache:
            self._ids_cache[dataset] = _strings(self._dataset_group(dataset)["ids"][:])
        return self._ids_cache[dataset]

    def rows_of(self, dataset: str, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of the given ids (unknown ids are named in the error)."""
        index = {s: i for i, s in enumerate(self.ids(dataset).tolist())}
        missing = [s for s in ids if s not in index]
        if missing:
            raise StoreError(f"dataset {dataset}: {len(missing)} unknown id(s), e.g. {', '.join(missing[:3])}")
        return np.fromiter((index[s] for s in ids), dtype=np.int64, count=len(ids))

    def labels(self, dataset: str) -> dict[str, tuple[np.ndarray, list[str] | None]]:
        """label name -> (values, classes or None for continuous labels)."""
        g = self._dataset_group(dataset)
        if "labels" not in g:
            return {}
        return {name: (a[:], a.attrs.get("classes")) for name, a in g["labels"].arrays()}

    def subsets(self, dataset: str) -> dict[str, np.ndarray]:
        """subset name -> [N] bool membership."""
        g = self._dataset_group(dataset)
        if "subsets" not in g:
            return {}
        return {name: np.asarray(a[:], bool) for name, a in g["subsets"].arrays()}

    def groups(self, dataset: str) -> np.ndarray | None:
        """[N] group labels (e.g. sessions), or None."""
        g = self._dataset_group(dataset)
        return _strings(g["groups"][:]) if "groups" in g else None

    def dataset_attrs(self, dataset: str) -> dict[str, Any]:
        return dict(self._dataset_group(dataset).attrs)

    # ------------------------------------------------------------------ keys
    def keys(self, dataset: str | None = None) -> list[KeyName]:
        """Every (dataset, encoder, corruption) key, optionally of one dataset."""
        out = []
        for ds in ([dataset] if dataset else self.datasets()):
            if ds not in self.root:
                continue
            for enc, eg in self.root[ds].groups():
                if enc in RESERVED:
                    continue
                for cor, cg in eg.groups():
                    if "utt" in cg:
                        out.append(KeyName(ds, enc, cor))
        return sorted(out, key=str)

    def has_key(self, key: KeyName) -> bool:
        return key.dataset in self.root and f"{key.encoder}/{key.corruption}/utt" in self.root[key.dataset]

    def open_key(self, key: KeyName) -> FeatureArray:
        """The key's arrays; a missing key names the build command that makes it."""
        if not self.has_key(key):
            hint = f" --corruption {key.corruption}" if key.corruption != "clean" else ""
            raise MissingKeyError(f"no features for {key}; run: featstore build --dataset {key.dataset} "
                                  f"--encoder {key.encoder}{hint}")
        return FeatureArray(self, key, self.root[key.dataset][key.encoder][key.corruption])  # type: ignore[arg-type]

    def create_key(self, key: KeyName, *, layers: int, dim: int, dtype: str, spec: dict[str, Any], spec_hash: str,
                   rows_per_chunk: int | None = None, attrs: dict[str, Any] | None = None,
                   overwrite: bool = False, seq_cap: int | None = None) -> FeatureArray:
        """Create a key's arrays for every row of its dataset, or reopen one made with the same spec hash.

        An existing key with another spec hash is refused (never mix two models' outputs under one key)
        unless overwrite=True, which deletes it first. seq_cap: also keep frame-level features, `seq`
        [N, seq_cap, D] and `seq_len` [N] (the cap belongs in the spec hash: the caller's spec includes it).
        """
        for kind, name in (("encoder", key.encoder), ("corruption", key.corruption)):
            _check_name(kind, name)
        n = len(self.ids(key.dataset))
        if self.has_key(key):
            if overwrite:
                self.delete_key(key)
            else:
                fa = self.open_key(key)
                old = fa.attrs.get("spec_hash")
                if old != spec_hash:
                    raise SpecMismatchError(
                        f"{key} was built with spec {old}, not {spec_hash} (another model, revision, recipe or "
                        f"corruption); refusing to mix them -- use --overwrite to rebuild the key")
                return fa
        itemsize = np.dtype(dtype).itemsize
        r = rows_per_chunk or rows_per_chunk_for(dim, itemsize)
        g = self.root.require_group(key.dataset).require_group(key.encoder).require_group(key.corruption)
        g.create_array("utt", shape=(n, layers, dim), dtype=dtype, chunks=(r, 1, dim),
                       compressors=DEFAULT_COMPRESSORS, fill_value=0, overwrite=True)
        g.create_array("done", shape=(n,), dtype="bool", chunks=(r,), compressors=DEFAULT_COMPRESSORS,
                       fill_value=False, overwrite=True)
        if seq_cap:
            if seq_cap < 1:
                raise StoreError(f"{key}: seq_cap must be >= 1, got {seq_cap}")
            g.create_array("seq", shape=(n, int(seq_cap), dim), dtype=dtype,
                           chunks=(seq_rows_per_chunk(r, int(seq_cap), dim, itemsize), int(seq_cap), dim),
                           compressors=DEFAULT_COMPRESSORS, fill_value=0, overwrite=True)
            g.create_array("seq_len", shape=(n,), dtype="int32", chunks=(r,), compressors=DEFAULT_COMPRESSORS,
                           fill_value=0, overwrite=True)
        g.require_group("errors")
        g.attrs.update({**(attrs or {}), "spec": spec, "spec_hash": spec_hash, "created": _now()})
        return self.open_key(key)

    def delete_key(self, key: KeyName) -> None:
        """Delete one key (only that key)."""
        if not self.has_key(key):
            self.open_key(key)  # raises the MissingKeyError with its hint
        enc = self.root[key.dataset][key.encoder]
        del enc[key.corruption]
        if not list(enc.group_keys()):
            del self.root[key.dataset][key.encoder]

    def delete_dataset(self, dataset: str) -> None:
        """Delete a dataset with every key under it."""
        self._dataset_group(dataset)
        del self.root[dataset]
        self._ids_cache.pop(dataset, None)

    def read(self, dataset: str, encoder: str, corruption: str = "clean", *, ids: Sequence[str] | None = None,
             layers: Sequence[int] | None = None) -> np.ndarray:
        """[n, L', D] features of a key: every row (canonical order) or the given ids, all or chosen layers."""
        fa = self.open_key(KeyName(dataset, encoder, corruption))
        rows = None if ids is None else self.rows_of(dataset, ids)
        return fa.read(rows, layers)

    # ------------------------------------------------------------------ leases
    def _lease_path(self, key: KeyName | str) -> Path:
        return Path(self.path) / ".featstore" / "leases" / (str(key).replace("/", "+") + ".lease")

    @contextmanager
    def lease(self, key: KeyName | str, purpose: str = "build") -> Iterator[None]:
        """Hold the per-key lease for the duration (one build or import per key at a time).

        A lease left by a dead process on this host is taken over; a live one is refused. Leases are
        files beside the arrays, so they work on local and shared filesystems, not object stores.
        """
        if not self.local:
            yield
            return
        path = self._lease_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "purpose": purpose}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_json(path)
                if holder and _lease_is_stale(holder):
                    path.unlink(missing_ok=True)
                    continue
                who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder else "another process"
                raise LeaseError(f"{key} is locked by a running {holder.get('purpose', 'build') if holder else 'build'} "
                                 f"({who}); wait for it, or remove {path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        try:
            yield
        finally:
            if _read_json(path).get("pid") == me["pid"]:
                path.unlink(missing_ok=True)

    def lease_holder(self, key: KeyName | str) -> dict[str, Any] | None:
        """The live holder of a key's lease (pid, host, since, purpose), or None when free or stale."""
        if not self.local:
            return None
        path = self._lease_path(key)
        if not path.exists():
            return None
        holder = _read_json(path)
        return None if _lease_is_stale(holder) else holder

    def stale_leases(self) -> list[Path]:
        """Lease files whose process is gone (this host only)."""
        d = Path(self.path) / ".featstore" / "leases"
        return [p for p in sorted(d.glob("*.lease")) if _lease_is_stale(_read_json(p))] if d.is_dir() else []

    def chunk_files(self, key: KeyName) -> set[int]:
        """Row-chunk indices of `utt` that have data written (for finding leftovers of interrupted writes)."""
        fa = self.open_key(key)
        prefix = f"{key.dataset}/{key.encoder}/{key.corruption}/utt/c/"
        store = fa.utt.store
        found: set[int] = set()

        async def _collect() -> None:
            async for k in store.list_prefix(prefix):
                found.add(int(k[len(prefix):].split("/")[0]))

        sync(_collect())
        return found


def _strings(values: np.ndarray) -> np.ndarray:
    """A fixed-width unicode array from zarr's variable-length strings."""
    return np.array(values.tolist(), dtype=str) if len(values) else np.array([], dtype=str)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _lease_is_stale(holder: dict[str, Any]) -> bool:
    if not holder or holder.get("host") != socket.gethostname():
        return not holder  # unreadable leases are stale; other hosts' leases are trusted
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError):
        return False
    return False


RECORD_KEYS = ("start", "stop", "records", "finished")


def _complete_record(attrs: Any) -> bool:
    """A finished-partition record holds every key finish_partition writes (older stores wrote them one by one)."""
    return all(k in attrs for k in RECORD_KEYS)
