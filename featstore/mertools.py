"""`featstore import mertools`: copy a MERTools processed folder (labels + per-sample .npy features) into the store.

A MERTools dataset folder (MER2023/MER2024/MERBench, `*-process/`) holds::

    label-6way.npz                    train_corpus, test1_corpus, ... : {sample: {'emo': str, 'val': float}}
    features/<model>-UTT/<sample>.npy one utterance vector (D,) per sample   (also <model>_UTT, e.g. eGeMAPS_UTT)
    features/<model>-FRA/<sample>.npy frame-level (T, D) arrays              (skipped: no sequence store yet)
    features/<model>-<variant>-UTT/   the same encoder on a varied input: -noisesnr5 / -noisesnrmix (noisy
                                      audio), -punccase1..3 (punctuation cases), -langeng (English subtitles),
                                      -ttschi / -ttseng (TTS audio)

Each feature folder becomes one (dataset, encoder, corruption) key: the encoder is found through the
catalog's `mertools_names` (or `mapping`), the variant through the catalog's corruptions. Rows are
written a whole chunk at a time, each chunk's .npy files read by a small thread pool, so an import
killed mid-way is finished by running it again. Labels are read without unpickling foreign classes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from featstore.catalog import Catalog, CorruptionSpec, DatasetSpec, EncoderSpec, load_catalog, spec_hash
from featstore.errors import FeatstoreError, StoreError, UnknownNameError
from featstore.safe_pickle import load_npz_dicts, read_npy_header
from featstore.store import NAME_RE, RESERVED, FeatureArray, FeatureStore, KeyName

__all__ = ["ImportReport", "KeyImport", "SkippedFolder", "LabelTable", "FolderPlan", "import_mertools",
           "read_mertools_labels", "parse_folder_name", "match_variant", "parse_mapping"]

ADAPTER = "mertools-import"
LABEL_FILES = ("label-6way.npz", "label_6way.npz", "label-4way.npz", "label_4way.npz", "label.npz")
MISSING_VAL = -10.0           # MERTools writes val = -10 where a sample has no valence
FP16_MAX = float(np.finfo(np.float16).max)
LEVEL_RE = re.compile(r"^(?P<base>.+?)[-_](?P<level>UTT|FRA)$", re.IGNORECASE)
# MERTools' variant folders: <model>-noise<case>-UTT (and eGeMAPS_noisesnrmix_UTT), <model>-punc<case>-UTT,
# <model>-langeng-UTT, <model>-tts<lang[:3]>-UTT (see its extract_*_huggingface.py and toolkit/data/feat_data.py).
VARIANT_RE = re.compile(r"^(?P<enc>.+?)[-_](?P<var>noise[0-9a-z]*|punc[0-9a-z]+|lang(?:eng|en|chi|zh)|tts(?:chi|eng|zh|en)?)$",
                        re.IGNORECASE)
LANGS = {"eng": ("eng", "en", "english"), "en": ("eng", "en", "english"),
         "chi": ("chi", "zh", "chinese", "mandarin"), "zh": ("chi", "zh", "chinese", "mandarin")}
DIM_PROBES = 64               # files tried for the first readable vector of a folder
RANGE_PROBES = 32             # files spread over a folder whose values decide float16 vs float32
PLACEHOLDER_MIN = 10          # a test corpus this big with one emotion and no valence holds placeholders
TASK_ROWS = 64                # rows per thread-pool task


# --------------------------------------------------------------------------- report
@dataclass
class SkippedFolder:
    """A feature folder that was not imported; `error` marks the ones that need the user's attention."""

    folder: str
    reason: str
    error: bool = False


@dataclass
class KeyImport:
    """What the import did for one key."""

    key: str
    folder: str
    encoder: str
    corruption: str
    catalog_encoder: bool          # False: unknown folder stored under its own name (attrs: imported=true)
    catalog_corruption: bool       # False: a variant kept under its raw MERTools suffix
    dim: int
    dtype: str
    rows: int
    rows_written: int = 0          # rows marked done by this run
    rows_done: int = 0             # rows done after this run (earlier runs included)
    chunks_written: int = 0
    chunks_already_done: int = 0
    status: str = "imported"       # imported | resumed | recreated | already imported
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ImportReport:
    """Outcome of `import_mertools`: subsets, labels, keys with rows written, per-sample errors, skipped folders."""

    dataset: str
    root: str
    label_file: str
    n_samples: int
    subsets: dict[str, int]                     # subset -> samples
    labelled: dict[str, int]                    # label -> samples holding it
    predict_only: list[str]                     # subsets without labels
    keys: list[KeyImport] = field(default_factory=list)
    skipped: list[SkippedFolder] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)   # per-sample: key, id, stage, message
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_written(self) -> dict[str, int]:
        return {k.key: k.rows_written for k in self.keys}

    @property
    def ok(self) -> bool:
        """False when any sample failed or a folder could not be imported (the CLI exits non-zero)."""
        return not self.errors and not any(s.error for s in self.skipped)


# --------------------------------------------------------------------------- labels
@dataclass
class LabelTable:
    """Ids, subsets and labels read from a MERTools label file."""

    path: str
    ids: list[str]
    subsets: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    label_classes: dict[str, list[str]]
    predict_only: list[str]
    warnings: list[str]


def _find_label_file(root: Path, label_file: str | os.PathLike[str] | None) -> Path:
    if label_file is not None:
        p = Path(label_file)
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.is_file():
            raise FeatstoreError(f"no label file {p}")
        return p
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    found = sorted(p.name for p in root.glob("label*.npz"))
    if len(found) == 1:
        return root / found[0]
    if found:
        raise FeatstoreError(f"{root}: several label files ({', '.join(found)}); name one")
    raise FeatstoreError(f"{root}: no label-6way.npz (or label*.npz) -- is this a MERTools processed dataset folder?")


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, str) and not v.strip())


def _valence(v: Any) -> float:
    if not _present(v):
        return float("nan")
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return float("nan") if (not np.isfinite(x) or x == MISSING_VAL) else x


def _emo_key(v: Any) -> str | int:
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    return str(v).strip()


def _subset_name(corpus: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", corpus).strip("-_.+") or "subset"
    return name if name not in RESERVED else f"{name}-set"


def read_mertools_labels(path: str | os.PathLike[str], ds_spec: DatasetSpec | None = None) -> LabelTable:
    """Read a MERTools label file: every `<name>_corpus` is a subset; `emo` -> emotion, `val` -> valence.

    Ids are the union of the corpora in file order, `train` first. A corpus whose samples carry no
    `emo` (an empty dict, or entries without it) is predict-only; so is a test corpus in which every
    sample has the same emotion and none a valence (MERTools writes 'neutral' for every unlabelled
    MER2024 test sample). Classes come from the catalog's dataset entry when it lists emotions
    (integer codes index into them), else from the sorted union.
    """
    path = str(path)
    members = load_npz_dicts(path)
    corpora = [(k[: -len("_corpus")], v) for k, v in members.items() if k.endswith("_corpus")]
    if not corpora:
        raise FeatstoreError(f"{path}: no '<subset>_corpus' arrays (found: {', '.join(members) or 'none'})")
    corpora.sort(key=lambda kv: kv[0] != "train")  # stable: train first, the rest in file order
    warnings: list[str] = []
    index: dict[str, int] = {}
    id_list: list[str] = []
    conflicts: list[str] = []
    emo: list[Any] = []
    val: list[float] = []
    member_rows: dict[str, list[int]] = {}
    predict_only: list[str] = []
    for corpus, table in corpora:
        if not isinstance(table, dict):
            raise FeatstoreError(f"{path}: {corpus}_corpus holds a {type(table).__name__}, not a dict of samples")
        subset = _subset_name(corpus)
        rows: list[int] = []
        c_emos: list[Any] = []
        c_vals: list[float] = []
        for sid, entry in table.items():
            sid = str(sid)
            if sid not in index:
                index[sid] = len(emo)
                id_list.append(sid)
                emo.append(None)
                val.append(float("nan"))
            rows.append(index[sid])
            e = entry.get("emo") if isinstance(entry, dict) else None
            v = _valence(entry.get("val")) if isinstance(entry, dict) else float("nan")
            c_emos.append(_emo_key(e) if _present(e) else None)
            c_vals.append(v)
        labelled = [e for e in c_emos if e is not None]
        has_val = any(np.isfinite(v) for v in c_vals)
        placeholder = (corpus != "train" and len(labelled) >= PLACEHOLDER_MIN and len(labelled) == len(c_emos)
                       and len(set(labelled)) == 1 and not has_val)
        if placeholder:
            warnings.append(f"{subset}: every sample is labelled '{labelled[0]}' and none has a valence (MERTools' "
                            f"placeholder for an unlabelled test set); stored as predict-only")
        if (not labelled and not has_val) or placeholder:
            predict_only.append(subset)
        else:
            for r, e, v in zip(rows, c_emos, c_vals):
                if emo[r] is None and e is not None:
                    emo[r] = e
                elif e is not None and emo[r] != e:
                    conflicts.append(f"{id_list[r]} ('{emo[r]}', then '{e}' in {subset})")
                if not np.isfinite(val[r]) and np.isfinite(v):
                    val[r] = v
        member_rows[subset] = rows
    if conflicts:
        warnings.append(f"{len(conflicts)} sample(s) carry different emotions in two corpora; kept the first, "
                        f"e.g. {conflicts[0]}")
    ids = id_list
    n = len(ids)
    subsets = {}
    for subset, rows in member_rows.items():
        m = np.zeros(n, bool)
        m[rows] = True
        subsets[subset] = m

    labels: dict[str, np.ndarray] = {}
    classes: dict[str, list[str]] = {}
    present = [e for e in emo if e is not None]
    if present:
        catalog_classes = list(ds_spec.emotions) if ds_spec is not None else []
        if ds_spec is not None and not catalog_classes:
            warnings.append(f"the catalog lists no emotions for dataset {ds_spec.name}; the 'emo' entries were not stored")
        elif catalog_classes:
            codes = np.full(n, -1, np.int16)
            pos = {c: i for i, c in enumerate(catalog_classes)}
            unknown = sorted({str(e) for e in present if not (e in pos or (isinstance(e, int) and 0 <= e < len(pos)))})
            if unknown:
                raise FeatstoreError(f"{path}: emotion(s) {', '.join(unknown)} not in the classes of dataset "
                                     f"{ds_spec.name} ({', '.join(catalog_classes)})")
            for i, e in enumerate(emo):
                if e is not None:
                    codes[i] = pos[e] if e in pos else int(e)
            labels["emotion"], classes["emotion"] = codes, catalog_classes
        else:
            names = sorted({str(e) for e in present})
            if len(names) == 1 and any(np.isfinite(val)):
                warnings.append(f"every labelled sample has emotion '{names[0]}' (a placeholder); the 'emo' entries "
                                f"were not stored")
            else:
                pos = {c: i for i, c in enumerate(names)}
                labels["emotion"] = np.array([pos[str(e)] if e is not None else -1 for e in emo], np.int16)
                classes["emotion"] = names
    val_arr = np.asarray(val, np.float32)
    if np.isfinite(val_arr).any():
        name = "sentiment" if ds_spec is not None and ds_spec.sentiment and not ds_spec.valence else "valence"
        labels[name] = val_arr
    return LabelTable(path, ids, subsets, labels, classes, predict_only, warnings)


# --------------------------------------------------------------------------- folders -> keys
def _sanitise(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-_.+")
    out = out or "imported"
    if not NAME_RE.match(out):
        out = "x" + out
    return out if out not in RESERVED else f"{out}-import"


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def parse_folder_name(folder: str) -> tuple[str, str, str | None]:
    """(encoder part, level 'UTT'|'FRA'|'', variant suffix or None) of a MERTools feature folder name.

    'chinese-hubert-large-noisesnr5-UTT' -> ('chinese-hubert-large', 'UTT', 'noisesnr5');
    'eGeMAPS_UTT' -> ('eGeMAPS', 'UTT', None).
    """
    m = LEVEL_RE.match(folder)
    base, level = (m["base"], m["level"].upper()) if m else (folder, "")
    v = VARIANT_RE.match(base)
    if v:
        return v["enc"], level, v["var"]
    return base, level, None


def _variant_candidates(token: str) -> tuple[list[str], str | None]:
    """Catalog names a MERTools variant suffix may be called, best first, and its language (tts/lang)."""
    t = token.lower()
    if t.startswith("noise"):
        case = t[len("noise"):]
        return ([t, f"noise-{case}", case, case.replace("snr", "snr-")] if case else [t]), None
    if t.startswith("punc"):
        case = t[len("punc"):]
        num = case[len("case"):] if case.startswith("case") else case
        return [t, f"punc-{case}", f"punc-{num}", f"punctuation-{case}", f"punctuation-{num}"], None
    if t.startswith("lang"):
        lang = t[len("lang"):]
        return [t] + [f"lang-{x}" for x in LANGS.get(lang, (lang,))] + [f"subtitles-{x}" for x in LANGS.get(lang, (lang,))], lang
    if t.startswith("tts"):
        lang = t[len("tts"):]
        return [t] + [f"tts-{x}" for x in LANGS.get(lang, (lang,))], lang or None
    return [t], None


def match_variant(token: str, catalog: Catalog) -> str | None:
    """The catalog corruption a MERTools variant suffix stands for, or None when none fits.

    Tried in order: a corruption whose params list the suffix (`params: {mertools: [...]}`), a name equal
    to one of the suffix's spellings ignoring case and punctuation ('langeng' ~ 'lang-eng', 'punccase1' ~
    'punc-case1', 'noisesnr5' ~ 'snr5', 'ttseng' ~ 'tts-en'), then -- for tts/lang suffixes -- a bare
    'tts'/'lang' entry whose note or params name the same language. Nothing is guessed beyond that:
    MERBench's 'noisesnrmix' is not MER2024's 'snr5-10', say.
    """
    t = token.lower()
    for c in catalog.corruptions.values():
        aliases = c.params.get("mertools") or c.params.get("mertools_names") or ()
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        if t in {str(a).lower() for a in aliases}:
            return c.name
    by_norm = {_norm(c.name): c.name for c in catalog.corruptions.values()}
    cands, lang = _variant_candidates(token)
    for cand in cands:
        if _norm(cand) in by_norm:
            return by_norm[_norm(cand)]
    if lang is not None:
        family = "tts" if t.startswith("tts") else "lang"
        words = LANGS.get(lang, (lang,))
        for c in catalog.corruptions.values():
            if _norm(c.name) != family:
                continue
            text = f"{c.note} {c.params}".lower()
            if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words):
                return c.name
    return None


def parse_mapping(mapping: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """`{'FEATURE_DIR': 'ENCODER[/CORRUPTION]'}` from a dict or from CLI items 'FEATURE_DIR=ENCODER[/CORRUPTION]'."""
    if mapping is None:
        return {}
    if isinstance(mapping, Mapping):
        return {str(k): str(v) for k, v in mapping.items()}
    out: dict[str, str] = {}
    for item in mapping:
        if "=" not in item:
            raise FeatstoreError(f"--map {item!r}: expected FEATURE_DIR=ENCODER (e.g. chinese-hubert-large-UTT=hubert-large)")
        k, v = item.split("=", 1)
        if not k.strip() or not v.strip():
            raise FeatstoreError(f"--map {item!r}: expected FEATURE_DIR=ENCODER")
        out[k.strip()] = v.strip()
    return out


@dataclass
class FolderPlan:
    """One feature folder and the key it goes to."""

    folder: str
    path: Path
    encoder: str
    corruption: str
    encoder_spec: EncoderSpec | None
    corruption_spec: CorruptionSpec | None
    variant: str | None
    via: str                               # how the encoder was found: map | catalog | unknown
    files: dict[str, str] = field(default_factory=dict)   # sample id -> file name
    extra_files: int = 0                   # .npy files named after no sample
    fingerprint: str = ""
    dim: int = 0
    first_id: str = ""
    dtype: str = "float16"
    dtype_reason: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.encoder, self.corruption


def _scan_folder(path: Path, ids: set[str]) -> tuple[dict[str, str], int, str]:
    files: dict[str, str] = {}
    extra = 0
    h = hashlib.sha256()
    entries = []
    with os.scandir(path) as it:
        for e in it:
            if not e.name.endswith(".npy"):
                continue
            stem = e.name[:-4]
            if stem not in ids:
                extra += 1
                continue
            files[stem] = e.name
            try:
                st = e.stat()
                entries.append((e.name, st.st_size, st.st_mtime_ns))
            except OSError:
                entries.append((e.name, -1, -1))
    for name, size, mtime in sorted(entries):
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return files, extra, h.hexdigest()[:16]


class _NpyReader:
    """Reads small .npy files fast: one read per file, headers parsed once per distinct header."""

    def __init__(self) -> None:
        self._headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}

    def read(self, path: str) -> np.ndarray:
        with open(path, "rb") as f:
            data = f.read()
        if data[:6] != b"\x93NUMPY" or len(data) < 10:
            raise ValueError("not a .npy file (no NUMPY magic)")
        major = data[6]
        if major == 1:
            hlen = 10 + int.from_bytes(data[8:10], "little")
        elif major in (2, 3):
            hlen = 12 + int.from_bytes(data[8:12], "little")
        else:
            raise ValueError(f"unknown .npy format version {major}")
        head = data[:hlen]
        info = self._headers.get(head)
        if info is None:
            info = read_npy_header(io.BytesIO(head))
            if info[2].hasobject:
                raise ValueError("holds a pickled object array (refused)")
            if len(self._headers) < 64:
                self._headers[head] = info
        shape, fortran, dtype = info
        count = int(np.prod(shape, dtype=np.int64))
        if len(data) - hlen < count * dtype.itemsize:
            raise ValueError(f"truncated: {len(data) - hlen} of {count * dtype.itemsize} data bytes")
        return np.frombuffer(data, dtype=dtype, count=count, offset=hlen).reshape(shape, order="F" if fortran else "C")


def _as_vector(arr: np.ndarray) -> np.ndarray:
    """The (D,) vector of a (D,) or (1, ..., D) array; raises ValueError naming any other shape."""
    if arr.ndim == 0 or any(s != 1 for s in arr.shape[:-1]):
        raise ValueError(f"expected an utterance vector, got shape {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"array of dtype {arr.dtype} is not real numbers")
    return arr.reshape(-1)


def _probe(plan: FolderPlan, ids: Sequence[str], reader: _NpyReader) -> str | None:
    """Fill plan.dim/first_id from the first readable vector and the value range; a reason when nothing reads."""
    present = [sid for sid in ids if sid in plan.files]
    first_err = ""
    for sid in present[:DIM_PROBES]:
        try:
            vec = _as_vector(reader.read(str(plan.path / plan.files[sid])))
        except (OSError, ValueError) as exc:
            first_err = first_err or f"{sid}: {exc}"
            continue
        plan.dim, plan.first_id = int(vec.shape[0]), sid
        break
    if not plan.dim:
        return f"no readable utterance vector among its first {min(len(present), DIM_PROBES)} files ({first_err})"
    spread = [present[int(i)] for i in np.linspace(0, len(present) - 1, min(RANGE_PROBES, len(present)))]
    peak = 0.0
    for sid in spread:
        try:
            vec = _as_vector(reader.read(str(plan.path / plan.files[sid])))
        except (OSError, ValueError):
            continue
        finite = vec[np.isfinite(vec)] if np.issubdtype(vec.dtype, np.floating) else vec
        if finite.size:
            peak = max(peak, float(np.abs(finite.astype(np.float64)).max()))
    base = plan.encoder_spec.dtype if plan.encoder_spec is not None else "float16"
    if base == "float16" and peak > FP16_MAX / 2:
        plan.dtype = "float32"
        plan.dtype_reason = f"values reach {peak:.4g}, beyond what float16 holds safely"
    else:
        plan.dtype = base
        plan.dtype_reason = "catalog" if plan.encoder_spec is not None else "default (values fit float16)"
    return None


def _plan_folders(features: Path, ids: list[str], catalog: Catalog, mapping: dict[str, str],
                  skipped: list[SkippedFolder], warnings: list[str]) -> list[FolderPlan]:
    folders = sorted(p.name for p in features.iterdir() if p.is_dir()) if features.is_dir() else []
    parsed = {f: parse_folder_name(f) for f in folders}
    # explicit mapping: validate every entry before anything else happens
    resolved_map: dict[str, tuple[EncoderSpec, CorruptionSpec | None]] = {}
    for src, target in mapping.items():
        enc_name, _, cor_name = target.partition("/")
        enc = catalog.encoder(enc_name)
        cor = catalog.corruption(cor_name) if cor_name else None
        if not any(src in (f, LEVEL_RE.sub(r"\g<base>", f), parsed[f][0]) for f in folders):
            raise UnknownNameError("feature folder", src, folders)
        resolved_map[src] = (enc, cor)
    by_mt = catalog.by_mertools_name()
    by_mt_lower = {k.lower(): v for k, v in by_mt.items()}
    enc_lower = {k.lower(): k for k in catalog.encoders}
    id_set = set(ids)
    cands: list[FolderPlan] = []
    plans: list[FolderPlan] = []
    taken: dict[tuple[str, str], str] = {}
    for folder in folders:
        enc_part, level, variant = parsed[folder]
        if level == "FRA":
            skipped.append(SkippedFolder(folder, "frame-level features ((T, D) per sample); stored once sequence "
                                                 "features exist"))
            continue
        base = LEVEL_RE.sub(r"\g<base>", folder)
        explicit = next((resolved_map[k] for k in (folder, base, enc_part) if k in resolved_map), None)
        enc_spec: EncoderSpec | None
        cor_spec: CorruptionSpec | None = None
        if explicit is not None:
            enc_spec, cor_spec = explicit
            via = "map"
        else:
            name = (by_mt.get(enc_part) or (enc_part if enc_part in catalog.encoders else None)
                    or by_mt_lower.get(enc_part.lower()) or enc_lower.get(enc_part.lower()))
            enc_spec = catalog.encoders[name] if name else None
            via = "catalog" if enc_spec is not None else "unknown"
        if cor_spec is not None:
            corruption = cor_spec.name
        elif variant is None:
            corruption, cor_spec = "clean", catalog.corruptions.get("clean")
        else:
            matched = match_variant(variant, catalog)
            cor_spec = catalog.corruptions[matched] if matched else None
            corruption = matched or _sanitise(variant)
        encoder = enc_spec.name if enc_spec is not None else _sanitise(enc_part)
        if enc_spec is not None and cor_spec is not None and cor_spec.modality and cor_spec.modality != enc_spec.modality:
            warnings.append(f"{folder}: corruption {corruption} changes {cor_spec.modality} input but encoder "
                            f"{encoder} reads {enc_spec.modality}")
        cands.append(FolderPlan(folder, features / folder, encoder, corruption, enc_spec, cor_spec, variant, via))
    # explicitly mapped folders claim their keys first; a second folder for a claimed key is an error
    for plan in sorted(cands, key=lambda p: p.via != "map"):
        if plan.key in taken:
            skipped.append(SkippedFolder(plan.folder, f"goes to the same key {plan.encoder}/{plan.corruption} as "
                                                      f"folder {taken[plan.key]}; use --map to tell them apart", True))
            continue
        taken[plan.key] = plan.folder
        plan.files, plan.extra_files, plan.fingerprint = _scan_folder(plan.path, id_set)
        if not plan.files:
            reason = (f"none of its {plan.extra_files} .npy files is named after a sample of the label file"
                      if plan.extra_files else "no .npy files")
            skipped.append(SkippedFolder(plan.folder, reason, error=bool(plan.extra_files)))
            continue
        if plan.extra_files:
            warnings.append(f"{plan.folder}: {plan.extra_files} .npy file(s) named after no sample were ignored")
        plans.append(plan)
    plans.sort(key=lambda p: p.folder)
    return plans


def _key_spec(plan: FolderPlan) -> dict[str, Any]:
    """What changes the key's features: the encoder/corruption specs (when catalogued) and the source folder."""
    cor: dict[str, Any] | None
    if plan.corruption_spec is not None:
        cor = plan.corruption_spec.feature_spec()
    else:
        cor = {"kind": "variant", "name": plan.corruption, "mertools_variant": plan.variant, "imported": True}
    return {"source": "mertools", "folder": plan.folder,
            "encoder": plan.encoder_spec.feature_spec() if plan.encoder_spec is not None else None,
            "corruption": cor}


# --------------------------------------------------------------------------- rows
def _load_rows(reader: _NpyReader, plan: FolderPlan, ids: Sequence[str], rows: range,
               buf: np.ndarray, base: int) -> list[tuple[int, str]]:
    """Load rows into buf[row - base]; return (row, message) for every row that failed."""
    failures: list[tuple[int, str]] = []
    dim = buf.shape[1]
    for r in rows:
        sid = ids[r]
        fname = plan.files.get(sid)
        if fname is None:
            failures.append((r, f"missing file {plan.folder}/{sid}.npy"))
            continue
        try:
            vec = _as_vector(reader.read(str(plan.path / fname)))
        except OSError as exc:
            failures.append((r, f"unreadable {plan.folder}/{fname}: {exc.strerror or exc}"))
            continue
        except ValueError as exc:
            msg = str(exc)
            prefix = "" if msg.startswith("expected") else f"unreadable {plan.folder}/{fname}: "
            failures.append((r, f"{prefix}{msg}"))
            continue
        if vec.shape[0] != dim:
            failures.append((r, f"vector has dimension {vec.shape[0]}, expected {dim} (the dimension of the first "
                                f"readable sample, {plan.first_id})"))
            continue
        if np.issubdtype(vec.dtype, np.floating) and not np.isfinite(vec).all():
            failures.append((r, "vector has NaN/Inf values"))
            continue
        with np.errstate(over="ignore"):
            row = vec.astype(buf.dtype)
        if not np.isfinite(row).all():
            peak = float(np.abs(vec.astype(np.float64)).max())
            failures.append((r, f"values beyond the {buf.dtype} range of the key (max |x| = {peak:.4g})"))
            continue
        buf[r - base] = row
    return failures


def _import_key(fa: FeatureArray, plan: FolderPlan, ids: Sequence[str], pool: ThreadPoolExecutor,
                workers: int, progress: Callable[[str, Any], None] | None) -> tuple[int, int, int]:
    """Write every pending chunk of the key; returns (rows written, chunks written, chunks already done)."""
    chunks = fa.pending_chunks()
    already = len(fa.chunk_ranges()) - len(chunks)
    dim, dtype = int(fa.utt.shape[2]), fa.utt.dtype
    reader = _NpyReader()

    def submit(s: int, e: int) -> tuple[np.ndarray, list[Future[list[tuple[int, str]]]]]:
        buf = np.zeros((e - s, dim), dtype)
        step = max(1, min(TASK_ROWS, -(-(e - s) // workers)))
        futs = [pool.submit(_load_rows, reader, plan, ids, range(a, min(a + step, e)), buf, s)
                for a in range(s, e, step)]
        return buf, futs

    written = 0
    nxt = submit(*chunks[0]) if chunks else None
    try:
        for k, (s, e) in enumerate(chunks):
            assert nxt is not None
            buf, futs = nxt
            nxt = submit(*chunks[k + 1]) if k + 1 < len(chunks) else None   # read ahead while this one is written
            valid = np.ones(e - s, bool)
            records: list[dict[str, Any]] = []
            for f in futs:
                for r, msg in f.result():
                    valid[r - s] = False
                    records.append({"id": ids[r], "stage": "import", "message": msg})
            fa.write_rows(s, buf, valid)
            fa.finish_partition(s, e, records)
            written += int(valid.sum())
            if progress:
                progress("rows", {"key": str(fa.key), "rows": e - s, "failed": len(records)})
    finally:
        if nxt is not None:
            for f in nxt[1]:
                f.cancel()
    return written, len(chunks), already


def _versions() -> dict[str, str]:
    out = {}
    for name in ("featstore", "numpy", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- entry point
def import_mertools(store: FeatureStore, root: str | os.PathLike[str], dataset: str,
                    mapping: Mapping[str, str] | Sequence[str] | None = None, catalog: Catalog | None = None,
                    overwrite: bool = False, progress: Callable[[str, Any], None] | None = None, *,
                    label_file: str | os.PathLike[str] | None = None, workers: int = 8,
                    rows_per_chunk: int | None = None) -> ImportReport:
    """Import a MERTools processed folder: labels and subsets, then one key per `features/*-UTT` folder.

    mapping: {FEATURE_DIR: 'ENCODER[/CORRUPTION]'} (or CLI items 'FEATURE_DIR=ENCODER'); FEATURE_DIR is a
    folder name, with or without -UTT, or its encoder part (then its variants follow it). It wins over
    the catalog's `mertools_names`; unknown encoders/corruptions/folders raise UnknownNameError.

    Keys: a new key is created; one with pending chunks and the same spec and files is resumed (an
    interrupted import finishes by running it again); one already complete is left as it is when other
    keys still need work. Refused with StoreError unless overwrite=True, before anything is written:
    a key made from another spec or folder, one whose folder changed since, and a rerun with nothing
    left to import.

    Per-sample failures (missing/unreadable .npy, wrong shape or dimension, NaN/Inf, values beyond
    the key's dtype) are recorded in the key's errors and in `report.errors`; the row stays not-done.

    label_file: the label .npz (default: label-6way.npz, else the one label*.npz in root); workers: file
    readers; rows_per_chunk: row chunking of new keys (default ~4 MiB chunks) -- neither changes features.

    progress(event, payload): ("labels", {"samples", "subsets"}), ("plan", {"keys", "rows"}),
    ("key", {"key", "rows"}) before each key, ("rows", {"key", "rows", "failed"}) after each chunk.
    """
    t0 = time.perf_counter()
    catalog = catalog or load_catalog()
    root = Path(root)
    if not root.is_dir():
        raise FeatstoreError(f"{root} is not a folder (expected a MERTools processed dataset folder)")
    if not NAME_RE.match(dataset) or dataset in RESERVED:
        raise StoreError(f"invalid dataset name '{dataset}': use letters, digits and _.+- (not {', '.join(sorted(RESERVED))})")
    ds_spec = catalog.datasets.get(dataset) or next(
        (d for n, d in catalog.datasets.items() if n.lower() == dataset.lower()), None)
    mapping = parse_mapping(mapping)
    table = read_mertools_labels(_find_label_file(root, label_file), ds_spec)
    ids = table.ids
    skipped: list[SkippedFolder] = []
    warnings = list(table.warnings)
    features = root / "features"
    if not features.is_dir():
        warnings.append(f"{root} has no features/ folder; only labels were imported")
    plans = _plan_folders(features, ids, catalog, mapping, skipped, warnings)
    report = ImportReport(dataset, str(root.resolve()), Path(table.path).name, len(ids),
                          {k: int(v.sum()) for k, v in table.subsets.items()},
                          {k: int((v >= 0).sum() if k in table.label_classes else np.isfinite(v).sum())
                           for k, v in table.labels.items()},
                          list(table.predict_only), skipped=skipped, warnings=warnings)
    if progress:
        progress("labels", {"samples": len(ids), "subsets": report.subsets})

    # probe dims/dtypes, then decide every key's fate before writing anything
    reader = _NpyReader()
    ready: list[tuple[FolderPlan, dict[str, Any], str, str]] = []
    refused: list[str] = []
    complete: list[str] = []
    have_dataset = store.has_dataset(dataset)
    if have_dataset:
        old = store.ids(dataset)
        if len(old) != len(ids) or not np.array_equal(old, np.asarray(ids, dtype=str)):
            raise StoreError(f"dataset {dataset} is already stored with {len(old)} other ids; the id order never "
                             f"changes (remove it with `featstore rm {dataset}` to start again)")
    for plan in plans:
        reason = _probe(plan, ids, reader)
        if reason is None and plan.encoder_spec is not None:
            spec = plan.encoder_spec
            if spec.n_stored_layers != 1:
                reason = (f"catalog encoder {spec.name} stores {spec.n_stored_layers} layers; a MERTools folder "
                          f"holds one vector per sample")
            elif spec.dim != plan.dim:
                reason = (f"vectors have dimension {plan.dim} but catalog encoder {spec.name} has dim {spec.dim} "
                          f"(map the folder to another encoder with --map {plan.folder}=ENCODER)")
        if reason is not None:
            skipped.append(SkippedFolder(plan.folder, reason, error=True))
            continue
        kspec = _key_spec(plan)
        h = spec_hash(kspec)
        key = KeyName(dataset, plan.encoder, plan.corruption)
        status = "imported"
        if have_dataset and store.has_key(key) and not overwrite:
            fa = store.open_key(key)
            attrs = fa.attrs
            if attrs.get("spec_hash") is None and not fa.done_mask().any():
                status = "recreated"      # killed inside create_key, before its attributes were written
            elif attrs.get("spec_hash") != h:
                src = attrs.get("mertools_folder")
                refused.append(f"{key} (made from {'folder ' + src if src else 'another spec'}, spec {attrs.get('spec_hash')})")
                continue
            elif attrs.get("mertools_fingerprint") != plan.fingerprint:
                refused.append(f"{key} (folder {plan.folder} changed since it was imported)")
                continue
            elif fa.pending_chunks():
                status = "resumed"
            else:
                status = "already imported"
                complete.append(str(key))
        ready.append((plan, kspec, h, status))
    if refused:
        raise StoreError(f"refusing to import into existing keys: {'; '.join(refused)}; pass overwrite=True "
                         f"(--overwrite) to replace them")
    if ready and all(st == "already imported" for *_, st in ready):
        raise StoreError(f"{dataset}: already imported ({', '.join(complete)}); nothing left to do -- pass "
                         f"overwrite=True (--overwrite) to import again")

    # dataset: ids, labels, subsets (labels from another adapter are kept)
    attrs = {"adapter": ADAPTER, "source_root": report.root, "label_space": dict(table.label_classes),
             "mertools": {"label_file": report.label_file, "subsets": list(table.subsets),
                          "predict_only": list(table.predict_only)}}
    prev_adapter = store.dataset_attrs(dataset).get("adapter") if have_dataset else None
    if prev_adapter not in (None, ADAPTER):
        warnings.append(f"dataset {dataset} was stored by adapter '{prev_adapter}' with the same ids; its labels "
                        f"and subsets were kept")
    else:
        store.put_dataset(dataset, ids, labels=table.labels, label_classes=table.label_classes,
                          subsets=table.subsets, attrs=attrs)

    if progress:
        todo = {f"{dataset}/{p.encoder}/{p.corruption}": st for p, _, _, st in ready if st != "already imported"}
        rows = sum(sum(e - s for s, e in store.open_key(KeyName.parse(k)).pending_chunks()) if st == "resumed"
                   else len(ids) for k, st in todo.items())
        progress("plan", {"keys": list(todo), "rows": rows})
    workers = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mertools-import") as pool:
        for plan, kspec, h, status in ready:
            key = KeyName(dataset, plan.encoder, plan.corruption)
            item = KeyImport(str(key), plan.folder, plan.encoder, plan.corruption, plan.encoder_spec is not None,
                             plan.corruption_spec is not None, plan.dim, plan.dtype, len(ids), status=status)
            if status == "already imported":
                fa = store.open_key(key)
                item.rows_done, item.errors = int(fa.done_mask().sum()), fa.errors()
                item.dim, item.dtype = int(fa.utt.shape[2]), str(fa.utt.dtype)
                skipped.append(SkippedFolder(plan.folder, f"already imported into {key}"))
                report.keys.append(item)
                continue
            tk = time.perf_counter()
            key_attrs = {
                "dataset": dataset, "encoder": plan.encoder, "corruption": plan.corruption, "source": "mertools",
                "source_root": report.root, "source_folder": plan.folder, "mertools_folder": plan.folder,
                "mertools_variant": plan.variant, "mertools_fingerprint": plan.fingerprint,
                "imported": plan.encoder_spec is None, "imported_corruption": plan.corruption_spec is None,
                "encoder_spec": kspec["encoder"], "corruption_spec": kspec["corruption"],
                "dtype_reason": plan.dtype_reason, "mapped_by": plan.via,
            }
            with store.lease(key, "import"):
                fa = store.create_key(key, layers=1, dim=plan.dim, dtype=plan.dtype, spec=kspec, spec_hash=h,
                                      rows_per_chunk=rows_per_chunk, attrs=key_attrs,
                                      overwrite=overwrite or status == "recreated")
                item.dim, item.dtype = int(fa.utt.shape[2]), str(fa.utt.dtype)
                if progress:
                    progress("key", {"key": str(key), "rows": sum(e - s for s, e in fa.pending_chunks())})
                item.rows_written, item.chunks_written, item.chunks_already_done = _import_key(
                    fa, plan, ids, pool, workers, progress)
                item.rows_done = int(fa.done_mask().sum())
                item.errors = fa.errors()
                fa.group.attrs.update({
                    "rows_done": item.rows_done, "n_errors": len(item.errors), "import_complete": True,
                    "provenance": {"packages": _versions(), "host": socket.gethostname(),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                })
            item.seconds = time.perf_counter() - tk
            report.keys.append(item)
    for item in report.keys:
        report.errors.extend({"key": item.key, **rec} for rec in item.errors)
    report.seconds = time.perf_counter() - t0
    return report
