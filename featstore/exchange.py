"""HDF5 exchange: export a store (or some keys) to one HDF5 file and import it back bit-exactly.

File layout (mirrors the store; every node's Zarr attributes are kept as one JSON string in the
HDF5 attribute `featstore_attrs`, so nested dicts and lists survive unchanged)::

    /                                   attrs: featstore_export (file format), featstore_format,
                                               exported, source_store, featstore_attrs (root attrs)
    /<dataset>/                         attrs: featstore_kind="dataset", featstore_attrs
    /<dataset>/ids                      [N] variable-length UTF-8 strings
    /<dataset>/labels/<name>            same dtype as the store; attrs kind/classes (plain, for readers)
    /<dataset>/subsets/<name>, groups   (and any other reserved dataset-level node, e.g. ov/)
    /<dataset>/<encoder>/<corruption>/  attrs: featstore_kind="key", featstore_attrs, rows_per_chunk
        utt     [N, L, D], stored dtype, HDF5 chunks (rows_per_chunk, 1, D)
        seq     [N, T, D] stored dtype, HDF5 chunks as the store's (keys with frame-level features only)
        seq_len [N] int32 (with seq)
        done    [N] bool
        errors  attrs: p<start> = JSON of that finished partition's record (start, stop, records, finished)

Both directions copy one (row chunk, layer) block of utt and one seq chunk at a time, so memory stays at
one chunk.
An import holds the key's lease, writes `done` after the rows of each chunk and the final attributes
last; until then the key's attrs say `import_state: in-progress`, and rerunning the same import
resumes it (chunks already done are skipped).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from featstore.errors import StoreError
from featstore.store import FORMAT_VERSION, RESERVED, FeatureStore, KeyName

EXPORT_VERSION = 1
ATTRS = "featstore_attrs"
IN_PROGRESS = "in-progress"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------------------------------------- export
def _select(store: FeatureStore, keys: Sequence[KeyName | str] | None,
            datasets: Sequence[str] | None) -> tuple[list[str], list[KeyName]]:
    """The datasets and keys to export: all, those of `datasets`, and/or exactly `keys`."""
    for ds in datasets or []:
        store.ids(ds)  # raises MissingKeyError naming the known datasets
    if keys is not None:
        chosen = [k if isinstance(k, KeyName) else KeyName.parse(k) for k in keys]
        for k in chosen:
            store.open_key(k)  # raises MissingKeyError with the build hint
        if datasets is not None:
            chosen = [k for k in chosen if k.dataset in datasets]
        names = sorted({k.dataset for k in chosen} | set(datasets or []))
        return names, chosen
    names = sorted(datasets) if datasets is not None else store.datasets()
    names = [d for d in names if store.has_dataset(d)]
    return names, [k for d in names for k in store.keys(d)]


def _export_node(node: zarr.Array | zarr.Group, parent: h5py.Group, name: str) -> None:
    """Copy a dataset-level node (ids, labels/*, subsets/*, groups, ...) with its attributes."""
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Group):
        h = parent.create_group(name)
        for child_name, child in sorted(node.members(), key=lambda m: m[0]):
            _export_node(child, h, child_name)
    else:
        values = node[:]
        if values.dtype.kind in "OUT" or str(values.dtype).startswith("StringDType"):
            data = np.array([str(v) for v in values.tolist()], dtype=object)
            h = parent.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))
        else:
            h = parent.create_dataset(name, data=np.asarray(values))
        h.attrs["zarr_chunks"] = list(node.chunks)
        for plain in ("kind", "classes"):  # readable without featstore; ignored on import
            if plain in attrs:
                h.attrs[plain] = attrs[plain] if plain == "kind" else np.array(attrs[plain], dtype=h5py.string_dtype("utf-8"))
    h.attrs[ATTRS] = _dumps(attrs)


def _export_key(store: FeatureStore, key: KeyName, parent: h5py.Group, compression: str | None) -> int:
    fa = store.open_key(key)
    n, L, D = fa.shape
    r = fa.rows_per_chunk
    g = parent.require_group(key.encoder).create_group(key.corruption)
    g.attrs["featstore_kind"] = "key"
    g.attrs["rows_per_chunk"] = r
    g.attrs[ATTRS] = _dumps(fa.attrs)
    chunks = (min(r, n), 1, D) if n and D else None
    utt = g.create_dataset("utt", shape=(n, L, D), dtype=fa.utt.dtype, chunks=chunks,
                           compression=compression if chunks else None)
    done = g.create_dataset("done", shape=(n,), dtype=bool, chunks=(min(r, n),) if n else None)
    seq = seq_len = None
    if fa.seq is not None and fa.seq_len is not None:
        T = fa.seq_cap
        seq = g.create_dataset("seq", shape=(n, T, D), dtype=fa.seq.dtype,
                               chunks=(min(int(fa.seq.chunks[0]), n), T, D) if n else None,
                               compression=compression if n else None)
        seq_len = g.create_dataset("seq_len", shape=(n,), dtype=np.int32, chunks=(min(r, n),) if n else None)
    for s, e in fa.chunk_ranges():
        for layer in range(L):
            utt[s:e, layer, :] = fa.utt[s:e, layer, :]
        if seq is not None and seq_len is not None:
            for a, b in _seq_blocks(fa.seq, s, e):
                seq[a:b] = fa.seq[a:b]
            seq_len[s:e] = fa.seq_len[s:e]
        done[s:e] = fa.done[s:e]
    eg = g.create_group("errors")
    if "errors" in fa.group:
        for pname, pg in sorted(fa.group["errors"].groups()):
            eg.attrs[pname] = _dumps(dict(pg.attrs))
    seq_bytes = n * fa.seq_cap * D * fa.seq.dtype.itemsize if fa.seq is not None else 0
    return n * L * D * fa.utt.dtype.itemsize + seq_bytes


def _seq_blocks(seq: Any, start: int, stop: int) -> list[tuple[int, int]]:
    """[a, b) of each seq chunk within rows [start, stop) (seq chunks divide the utt chunks)."""
    r = int(seq.chunks[0])
    return [(a, min(a + r, stop)) for a in range(start, stop, r)]


def export_hdf5(store: FeatureStore, out_path: str | os.PathLike[str], keys: Sequence[KeyName | str] | None = None,
                datasets: Sequence[str] | None = None, *, compression: str | None = None) -> dict[str, Any]:
    """Write datasets (ids, labels, subsets, groups, attrs) and keys (utt, seq/seq_len when the key has frames,
    done, errors, attrs) to one HDF5 file.

    keys=None and datasets=None export everything; `datasets` exports those datasets with all their keys;
    `keys` exports exactly those keys with their datasets. `compression` is an HDF5 filter for utt
    ("gzip", "lzf" or None: embeddings barely compress, see benchmarks/RESULTS.md). The file is written
    beside `out_path` and renamed into place when complete.
    Returns {"path", "datasets", "keys", "bytes"}.
    """
    names, chosen = _select(store, keys, datasets)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".partial")
    feature_bytes = 0
    try:
        with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
            f.attrs["featstore_export"] = EXPORT_VERSION
            f.attrs["featstore_format"] = FORMAT_VERSION
            f.attrs["exported"] = _now()
            f.attrs["source_store"] = str(store.path)
            f.attrs[ATTRS] = _dumps(dict(store.root.attrs))
            for ds in names:
                dg = store.root[ds]
                h = f.create_group(ds)
                h.attrs["featstore_kind"] = "dataset"
                h.attrs[ATTRS] = _dumps(dict(dg.attrs))
                for child_name, child in sorted(dg.members(), key=lambda m: m[0]):
                    if child_name in RESERVED:
                        _export_node(child, h, child_name)
                for k in chosen:
                    if k.dataset == ds:
                        feature_bytes += _export_key(store, k, h, compression)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "datasets": names, "keys": [str(k) for k in chosen],
            "feature_bytes": feature_bytes, "bytes": out.stat().st_size}


# ---------------------------------------------------------------------------------------------- import
def _open_export(path: Path) -> h5py.File:
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path} is not a featstore HDF5 export (not an HDF5 file: {str(exc).splitlines()[0]})") from None
    version = f.attrs.get("featstore_export")
    if version is None:
        f.close()
        raise StoreError(f"{path} is an HDF5 file but not a featstore export (no featstore_export attribute); "
                         f"write one with `featstore export`")
    if int(version) > EXPORT_VERSION:
        f.close()
        raise StoreError(f"{path} is a featstore export of format {int(version)}; this featstore reads up to {EXPORT_VERSION}")
    return f


def _json_attrs(h: h5py.HLObject) -> dict[str, Any]:
    raw = h.attrs.get(ATTRS)
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _file_keys(f: h5py.File) -> dict[str, list[KeyName]]:
    """dataset -> keys held in the file."""
    out: dict[str, list[KeyName]] = {}
    for ds, dg in f.items():
        if not isinstance(dg, h5py.Group) or "ids" not in dg:
            raise StoreError(f"{f.filename}: group /{ds} has no ids; the file is not a complete featstore export")
        out[ds] = []
        for enc, eg in dg.items():
            if enc in RESERVED or not isinstance(eg, h5py.Group):
                continue
            for cor, cg in eg.items():
                if isinstance(cg, h5py.Group) and "utt" in cg:
                    out[ds].append(KeyName(ds, enc, cor))
    return out


def _h5_strings(d: h5py.Dataset) -> np.ndarray:
    return np.array(d.asstr()[:].tolist(), dtype=str) if d.shape[0] else np.array([], dtype=str)


def _import_node(h: h5py.Dataset | h5py.Group, parent: zarr.Group, name: str, replace: bool) -> None:
    """Create a dataset-level node; existing nodes are kept as they are unless `replace`."""
    if isinstance(h, h5py.Group):
        existed = name in parent
        g = parent.require_group(name)
        for child_name, child in h.items():
            _import_node(child, g, child_name, replace)
        if replace or not existed:
            g.attrs.put(_json_attrs(h))
        return
    if name in parent and not replace:
        return
    is_str = h5py.check_string_dtype(h.dtype) is not None or h.dtype.kind == "O"
    chunks = tuple(max(1, int(c)) for c in h.attrs.get("zarr_chunks", h.shape))
    a = parent.create_array(name, shape=h.shape, dtype=str if is_str else h.dtype, chunks=chunks or "auto",
                            overwrite=True)
    if h.shape and h.shape[0]:
        a[...] = np.asarray(h.asstr()[:], dtype=object) if is_str else h[:]
    a.attrs.put(_json_attrs(h))


def _import_dataset(store: FeatureStore, ds: str, h: h5py.Group) -> str:
    """Create the dataset (or check that its ids equal the stored ones) and add missing labels/subsets."""
    ids = _h5_strings(h["ids"])
    created = not store.has_dataset(ds)
    if created:
        store.put_dataset(ds, ids.tolist(), attrs={"import_state": IN_PROGRESS})
    g = store.root[ds]
    replace = created or g.attrs.get("import_state") == IN_PROGRESS
    for name, node in h.items():
        if name in RESERVED and name != "ids":
            _import_node(node, g, name, replace)
    src = _json_attrs(h)
    if replace:
        g.attrs.put(src)  # last: drops import_state
    else:
        missing = {k: v for k, v in src.items() if k not in g.attrs}
        if missing:
            g.attrs.update(missing)
    return "created" if replace else "existing"


def _import_key(store: FeatureStore, key: KeyName, h: h5py.Group, src_path: Path, overwrite: bool) -> tuple[int, bool]:
    """Copy one key chunk by chunk under its lease; returns (rows done, resumed)."""
    src_attrs = _json_attrs(h)
    utt_h, done_h = h["utt"], h["done"]
    n, L, D = utt_h.shape
    if n != len(store.ids(key.dataset)):
        raise StoreError(f"{src_path}: {key} has {n} rows but dataset {key.dataset} has {len(store.ids(key.dataset))} ids")
    r = int(h.attrs.get("rows_per_chunk", max(1, n)))
    dtype = np.dtype(utt_h.dtype)
    seq_h, seq_len_h = h.get("seq"), h.get("seq_len")
    cap = int(seq_h.shape[1]) if seq_h is not None else 0
    if seq_h is not None and (seq_len_h is None or tuple(seq_h.shape) != (n, cap, D) or seq_h.dtype != dtype
                              or tuple(seq_len_h.shape) != (n,)):
        raise StoreError(f"{src_path}: {key} has frame-level arrays that do not fit its utt [{n}, {L}, {D}] {dtype} "
                         f"(seq {tuple(seq_h.shape)} {seq_h.dtype}); the file is damaged")
    with store.lease(key, "import"):
        resume = False
        if store.has_key(key) and not overwrite:
            old = store.open_key(key)
            if old.attrs.get("import_state") != IN_PROGRESS:
                raise StoreError(f"{key} already exists in {store.path}; import with --overwrite to replace it")
            if old.shape != (n, L, D) or old.utt.dtype != dtype or old.rows_per_chunk != r or old.seq_cap != cap:
                raise StoreError(f"{key}: an interrupted import with another shape/dtype/chunking is in the store; "
                                 f"import with --overwrite to replace it")
            resume = True
        fa = store.create_key(key, layers=L, dim=D, dtype=dtype.name, spec=src_attrs.get("spec", {}),
                              spec_hash=src_attrs.get("spec_hash", ""), rows_per_chunk=r,
                              attrs={"import_state": IN_PROGRESS, "import_source": str(src_path)},
                              overwrite=overwrite and store.has_key(key), seq_cap=cap or None)
        done_src = np.asarray(done_h[:], bool) if n else np.zeros(0, bool)
        done_dst = fa.done_mask() if resume else np.zeros(n, bool)
        for s, e in fa.chunk_ranges():
            if resume and done_src[s:e].all() and done_dst[s:e].all():
                continue  # copied before the interruption: done is written after the rows
            for layer in range(L):
                fa.utt[s:e, layer, :] = utt_h[s:e, layer, :]
            if fa.seq is not None and fa.seq_len is not None and seq_h is not None and seq_len_h is not None:
                for a, b in _seq_blocks(fa.seq, s, e):
                    fa.seq[a:b] = seq_h[a:b]
                fa.seq_len[s:e] = seq_len_h[s:e]
            fa.done[s:e] = done_src[s:e]
        errors = fa.group.require_group("errors")
        if "errors" in h:
            for pname, raw in h["errors"].attrs.items():
                errors.require_group(pname).attrs.put(json.loads(raw))
        fa.group.attrs.put(src_attrs)  # last: drops import_state
    return int(done_src.sum()), resume


def import_hdf5(store: FeatureStore, in_path: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Any]:
    """Import a `featstore export` file into the store, bit-exactly (arrays, ids, labels, errors, attributes).

    A dataset already in the store must have identical ids (its missing labels/subsets are added); a key
    already in the store is refused unless overwrite=True. An interrupted import is resumed by rerunning it.
    Returns {"datasets_created", "datasets_existing", "keys", "resumed", "rows_done"}.
    """
    path = Path(in_path)
    with _open_export(path) as f:
        layout = _file_keys(f)
        # Check everything before writing anything.
        for ds in layout:
            if store.has_dataset(ds):
                ids = _h5_strings(f[ds]["ids"])
                old = store.ids(ds)
                if len(old) != len(ids) or not np.array_equal(old, ids):
                    diff = (f"{len(old)} ids in the store, {len(ids)} in the file" if len(old) != len(ids) else
                            f"first difference at row {int(np.flatnonzero(old != ids)[0])}")
                    raise StoreError(f"dataset {ds} exists in {store.path} with other ids ({diff}); the id order "
                                     f"never changes -- import into another store or remove the dataset first")
        existing = []
        for keys in layout.values():
            for k in keys:
                if store.has_key(k) and not overwrite:
                    try:
                        state = store.open_key(k).attrs.get("import_state")
                    except KeyError:  # a damaged key (e.g. no done array): treat as existing
                        state = None
                    if state != IN_PROGRESS:
                        existing.append(str(k))
        if existing:
            raise StoreError(f"{len(existing)} key(s) already in {store.path}: {', '.join(existing[:3])}"
                             f"{' ...' if len(existing) > 3 else ''}; import with --overwrite to replace them")
        summary: dict[str, Any] = {"datasets_created": [], "datasets_existing": [], "keys": [], "resumed": [],
                                   "rows_done": 0}
        for ds, keys in layout.items():
            state = _import_dataset(store, ds, f[ds])
            summary[f"datasets_{state}"].append(ds)
            for k in keys:
                rows, resumed = _import_key(store, k, f[ds][k.encoder][k.corruption], path, overwrite)
                summary["keys"].append(str(k))
                summary["rows_done"] += rows
                if resumed:
                    summary["resumed"].append(str(k))
    return summary
