"""Check a store's datasets and keys for inconsistencies and leftovers of interrupted writes; optionally repair.

Checks per dataset: ids present; labels, subsets and groups have one row per id; categorical codes
are within their classes; n_samples agrees. Checks per key: utt is [N, L, D] with N == len(ids) and a
float16/float32 dtype; done is [N] with the same row chunking; no NaN/Inf in done rows; spec and
spec_hash present (and spec_hash == catalog.spec_hash(spec), as build computes it); provenance present;
rows neither done nor recorded as failed (an unfinished build); an import left `in-progress`; chunk
files of chunks with no row done and no finished-partition record (written by a partition that was
interrupted before marking anything done). Keys with frame-level features: seq is [N, T, D] (D and dtype of
utt) with seq_len [N] int32 beside it, both chunked so that every utt chunk is whole seq chunks; done rows
have 0 < seq_len <= T, finite steps and zeros past their length; rows not done have seq_len 0 (a warning
where an unfinished partition left them, an error in a finished one). Stale leases (dead processes on this
host) are listed.

Nothing is deleted unless repair=True, and repair deletes only those leftover chunk files (utt's and the
seq/seq_len chunks of the same rows, under the key's lease) and stale lease files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.core.sync import sync

from featstore.catalog import spec_hash as compute_spec_hash
from featstore.errors import LeaseError
from featstore.store import FeatureArray, FeatureStore, KeyName

SEVERITIES = ("error", "warning", "info")
FLOAT_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Finding:
    """One result of `verify`: the key (or dataset, or lease) it concerns, error|warning|info, and what."""

    key: str
    severity: str
    message: str


def _ids_preview(ids: np.ndarray, rows: np.ndarray, n: int = 3) -> str:
    shown = ", ".join(str(ids[i]) for i in rows[:n])
    return shown + (f" (+{len(rows) - n} more)" if len(rows) > n else "")


# ---------------------------------------------------------------------------------------------- datasets
def _check_dataset(store: FeatureStore, ds: str) -> list[Finding]:
    out: list[Finding] = []
    if not store.has_dataset(ds):
        return [Finding(ds, "error", "dataset group has no ids array; its keys cannot be read")]
    ids = store.ids(ds)
    n = len(ids)
    if len(set(ids.tolist())) != n:
        out.append(Finding(ds, "error", "duplicate sample ids"))
    declared = store.dataset_attrs(ds).get("n_samples")
    if declared is not None and int(declared) != n:
        out.append(Finding(ds, "warning", f"attrs say n_samples={declared} but ids has {n} rows"))
    for name, (values, classes) in store.labels(ds).items():
        if len(values) != n:
            out.append(Finding(ds, "error", f"label '{name}' has {len(values)} rows for {n} ids"))
        elif classes is not None:
            codes = np.asarray(values)
            bad = np.flatnonzero((codes < -1) | (codes >= len(classes)))
            if len(bad):
                out.append(Finding(ds, "error", f"label '{name}' has {len(bad)} code(s) outside -1..{len(classes) - 1}, "
                                                f"e.g. sample {_ids_preview(ids, bad)}"))
    for name, member in store.subsets(ds).items():
        if len(member) != n:
            out.append(Finding(ds, "error", f"subset '{name}' has {len(member)} rows for {n} ids"))
    groups = store.groups(ds)
    if groups is not None and len(groups) != n:
        out.append(Finding(ds, "error", f"groups has {len(groups)} rows for {n} ids"))
    return out


# ---------------------------------------------------------------------------------------------- keys
def _check_provenance(name: str, attrs: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    missing = [a for a in ("spec", "spec_hash") if a not in attrs]
    if missing:
        out.append(Finding(name, "error", f"provenance attribute(s) {', '.join(missing)} missing; the key does not say "
                                          f"what produced it -- rebuild it (featstore build ... --overwrite)"))
    else:
        spec = attrs["spec"]
        candidates = {compute_spec_hash(spec)}
        if isinstance(spec, list):  # a spec stored as its parts
            candidates.add(compute_spec_hash(*spec))
        if attrs["spec_hash"] not in candidates:
            out.append(Finding(name, "error", f"spec_hash {attrs['spec_hash']} does not match the stored spec "
                                              f"(hash {compute_spec_hash(spec)}): the attributes were edited or mixed"))
    if "provenance" not in attrs and attrs.get("import_state") is None:
        out.append(Finding(name, "warning", "no provenance attribute (resolved model revision, packages): the build "
                                            "did not finish (rerun it) or the key was written by other means"))
    return out


def _scan_values(fa: FeatureArray, done: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows marked done that hold NaN/Inf, read one (row chunk, layer) at a time."""
    bad: list[np.ndarray] = []
    for s, e in fa.chunk_ranges():
        d = done[s:e]
        if not d.any():
            continue
        finite = np.ones(e - s, bool)
        for layer in range(fa.shape[1]):
            finite &= np.isfinite(fa.utt[s:e, layer, :]).all(axis=1)
        bad.append(s + np.flatnonzero(d & ~finite))
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def _check_seq(fa: FeatureArray, done: np.ndarray, ids: np.ndarray) -> list[Finding]:
    """Shapes, chunking and lengths of a key's frame-level arrays (see the module docstring)."""
    name = str(fa.key)
    if fa.seq is None or fa.seq_len is None:
        if (fa.seq is None) != (fa.seq_len is None):
            have, lack = ("seq", "seq_len") if fa.seq is not None else ("seq_len", "seq")
            return [Finding(name, "error", f"the key has {have} but no {lack}; rebuild it with --overwrite")]
        return []
    out: list[Finding] = []
    seq, seq_len = fa.seq, fa.seq_len
    if seq.ndim != 3 or seq.shape[0] != fa.n or seq.shape[2] != fa.shape[2] or seq.shape[1] < 1:
        return [Finding(name, "error", f"seq has shape {tuple(seq.shape)}; expected [{fa.n}, T, {fa.shape[2]}]")]
    if seq.dtype != fa.utt.dtype:
        out.append(Finding(name, "error", f"seq has dtype {seq.dtype}, utt {fa.utt.dtype}"))
    if tuple(seq_len.shape) != (fa.n,) or str(seq_len.dtype) != "int32":
        return out + [Finding(name, "error", f"seq_len has shape {tuple(seq_len.shape)} and dtype {seq_len.dtype}; "
                                             f"expected ({fa.n},) int32")]
    if fa.rows_per_chunk % int(seq.chunks[0]) or int(seq_len.chunks[0]) != fa.rows_per_chunk:
        out.append(Finding(name, "error", f"seq chunks of {seq.chunks[0]} rows (seq_len {seq_len.chunks[0]}) do not "
                                          f"divide utt's {fa.rows_per_chunk}: parallel partitions would share chunks"))
        return out
    cap = fa.seq_cap
    lengths = np.asarray(seq_len[:], np.int64)
    bad_len = np.flatnonzero(done & ((lengths < 1) | (lengths > cap)))
    if len(bad_len):
        out.append(Finding(name, "error", f"{len(bad_len)} done row(s) have seq_len outside 1..{cap}, e.g. sample "
                                          f"{_ids_preview(ids, bad_len)} (seq_len {int(lengths[bad_len[0]])})"))
    stray = np.flatnonzero(~done & (lengths != 0))
    if len(stray):
        finished = [(s, int(rec["stop"])) for s, rec in fa.partition_records().items()]
        recorded = np.array([any(fs <= i < fe for fs, fe in finished) for i in stray], bool)
        if recorded.any():
            out.append(Finding(name, "error", f"{int(recorded.sum())} row(s) not done have seq_len > 0 in finished "
                                              f"partitions, e.g. sample {_ids_preview(ids, stray[recorded])}"))
        if (~recorded).any():
            out.append(Finding(name, "warning", f"{int((~recorded).sum())} row(s) not done have seq_len > 0 (left by "
                                                f"an interrupted partition; a rerun rewrites them), e.g. sample "
                                                f"{_ids_preview(ids, stray[~recorded])}"))
    nonfinite, padded = [], []
    r = int(seq.chunks[0])
    steps = np.arange(cap)
    for s in range(0, fa.n, r):
        e = min(s + r, fa.n)
        d = done[s:e]
        if not d.any():
            continue
        block = np.asarray(seq[s:e])
        real = steps[None, :] < np.clip(lengths[s:e], 0, cap)[:, None]                    # [rows, T]
        finite = np.where(real[:, :, None], np.isfinite(block), True).all(axis=(1, 2))
        zero_pad = np.where(real[:, :, None], True, block == 0).all(axis=(1, 2))
        nonfinite.append(s + np.flatnonzero(d & ~finite))
        padded.append(s + np.flatnonzero(d & ~zero_pad))
    for rows, what in ((nonfinite, "NaN/Inf in their steps"), (padded, "non-zero values past seq_len")):
        rows_ = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if len(rows_):
            out.append(Finding(name, "error", f"{len(rows_)} done row(s) have {what}, e.g. sample {_ids_preview(ids, rows_)}"))
    return out


def _leftover_chunks(store: FeatureStore, key: KeyName, fa: FeatureArray, done: np.ndarray) -> list[int]:
    """Row chunks with a utt chunk file but no row done and no finished-partition record."""
    r = fa.rows_per_chunk
    finished = [(s, int(rec["stop"])) for s, rec in fa.partition_records().items()]
    out = []
    for c in sorted(store.chunk_files(key)):
        s, e = c * r, min(c * r + r, fa.n)
        if s >= fa.n or done[s:e].any():
            continue
        if any(fs <= s and e <= fe for fs, fe in finished):
            continue
        out.append(c)
    return out


def _delete_chunks(fa: FeatureArray, chunks: list[int]) -> None:
    """Delete utt's chunk files of these row chunks, and seq's and seq_len's of the same rows."""
    store = fa.utt.store
    r = fa.rows_per_chunk
    for c in chunks:
        sync(store.delete_dir(f"{fa.utt.path}/c/{c}"))
        if fa.seq is not None and fa.seq_len is not None:
            sync(store.delete_dir(f"{fa.seq_len.path}/c/{c}"))
            rs = int(fa.seq.chunks[0])
            for sc in range(c * r // rs, -(-min(c * r + r, fa.n) // rs)):
                sync(store.delete_dir(f"{fa.seq.path}/c/{sc}"))


def _check_key(store: FeatureStore, key: KeyName, repair: bool) -> list[Finding]:
    name = str(key)
    try:
        fa = store.open_key(key)
    except KeyError as exc:  # the group has utt but not done (or the reverse)
        return [Finding(name, "error", f"key is missing an array ({exc}); rebuild it with --overwrite")]
    out: list[Finding] = []
    attrs = fa.attrs
    try:
        ids = store.ids(key.dataset)
    except KeyError:
        return [Finding(name, "error", f"dataset {key.dataset} has no ids")]
    n = len(ids)
    shape_ok = True
    if fa.utt.ndim != 3:
        return [Finding(name, "error", f"utt has shape {fa.utt.shape}; expected [N, L, D]")]
    if fa.n != n:
        out.append(Finding(name, "error", f"utt has {fa.n} rows but dataset {key.dataset} has {n} ids"))
        shape_ok = False
    if tuple(fa.done.shape) != (fa.n,):
        out.append(Finding(name, "error", f"done has shape {tuple(fa.done.shape)}; expected ({fa.n},)"))
        shape_ok = False
    elif fa.done.chunks[0] != fa.rows_per_chunk:
        out.append(Finding(name, "error", f"done is chunked by {fa.done.chunks[0]} rows, utt by {fa.rows_per_chunk}"))
        shape_ok = False
    if str(fa.utt.dtype) not in FLOAT_DTYPES:
        out.append(Finding(name, "error", f"utt has dtype {fa.utt.dtype}; expected float16 or float32"))
    out.extend(_check_provenance(name, attrs))
    if not shape_ok:
        return out  # the row-wise checks below need consistent shapes
    done = fa.done_mask()
    if np.issubdtype(fa.utt.dtype, np.floating):
        bad = _scan_values(fa, done, ids)
        if len(bad):
            out.append(Finding(name, "error", f"{len(bad)} done row(s) hold NaN/Inf, e.g. sample {_ids_preview(ids, bad)}"))
    out.extend(_check_seq(fa, done, ids))
    if attrs.get("import_state") == "in-progress":
        src = attrs.get("import_source", "the export file")
        out.append(Finding(name, "warning", f"an import was interrupted (import_state: in-progress); rerun "
                                            f"`featstore import hdf5 {src}` to finish it"))
    failed_ids = {str(rec.get("id")) for rec in fa.errors()}
    pending = np.flatnonzero(~done & ~np.isin(ids, list(failed_ids)))
    if len(pending):
        out.append(Finding(name, "warning", f"incomplete: {len(pending)} rows pending; rerun the build "
                                            f"(first: {_ids_preview(ids, pending)})"))
    if failed_ids:
        first = fa.errors()[0]
        out.append(Finding(name, "info", f"{len(failed_ids)} sample(s) failed and are recorded in errors, e.g. "
                                         f"{first.get('id')}: {first.get('stage')}: {first.get('message')}"))
    holder = store.lease_holder(key)
    if holder:
        out.append(Finding(name, "info", f"a {holder.get('purpose', 'build')} holds the lease (pid {holder.get('pid')}); "
                                         f"leftovers of interrupted writes not checked"))
        return out
    leftovers = _leftover_chunks(store, key, fa, done)
    if leftovers:
        r = fa.rows_per_chunk
        spans = ", ".join(f"[{c * r}, {min(c * r + r, fa.n)})" for c in leftovers[:3])
        out.append(Finding(name, "warning", f"{len(leftovers)} chunk file(s) of an interrupted write with no row done "
                                            f"(rows {spans}{' ...' if len(leftovers) > 3 else ''}); "
                                            f"{'deleting them' if repair else 'featstore verify --repair deletes them'}"))
        if repair:
            try:
                with store.lease(key, "repair"):
                    again = set(_leftover_chunks(store, key, fa, fa.done_mask()))
                    gone = [c for c in leftovers if c in again]
                    _delete_chunks(fa, gone)
                out.append(Finding(name, "info", f"repaired: deleted {len(gone)} leftover chunk file(s)"))
            except LeaseError as exc:
                out.append(Finding(name, "warning", f"not repaired: {exc}"))
    return out


# ---------------------------------------------------------------------------------------------- store
def verify(store: FeatureStore, keys: Sequence[KeyName] | None = None, repair: bool = False) -> list[Finding]:
    """Check datasets and keys (all, or the given keys and their datasets); repair=True deletes only leftovers.

    Findings are ordered datasets, keys, then leases; severities are error|warning|info.
    """
    if keys is None:
        datasets = store.datasets()
        chosen = store.keys()
    else:
        chosen = [k if isinstance(k, KeyName) else KeyName.parse(k) for k in keys]
        for k in chosen:
            store.open_key(k)  # unknown keys: MissingKeyError with the build hint
        datasets = sorted({k.dataset for k in chosen})
    findings: list[Finding] = []
    for ds in datasets:
        findings.extend(_check_dataset(store, ds))
    for k in chosen:
        findings.extend(_check_key(store, k, repair))
    wanted = None if keys is None else {str(k).replace("/", "+") for k in chosen}
    for path in store.stale_leases():
        stem = path.name[: -len(".lease")]
        if wanted is not None and stem not in wanted:
            continue
        label = stem.replace("+", "/")
        findings.append(Finding(label, "warning", f"stale lease {path} (its process is gone)"
                                                  f"{'; deleted' if repair else '; featstore verify --repair deletes it'}"))
        if repair:
            path.unlink(missing_ok=True)
    return findings
