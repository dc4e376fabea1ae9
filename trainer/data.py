"""Load the chosen features of one dataset from the store into memory once, with labels, subsets and masks.

One `Feature` per (encoder, corruption) key: float32 tensors of the rows the trainer uses, a train-corruption
copy (`x`) and a test-corruption copy (`x_test`; the same tensor when both corruptions are the same), and
per-row availability (`done` in the key). Branches say which features each model branch reads: by default
each feature is its own branch (MERTools' attention_topn); `concat` joins a modality's features into one
branch; `replicate(3)` gives MERTools' unimodal protocol (the attention model over three copies of one feature).

Sequence models read frame-level features (`level='seq'`): per feature `seq` [n, T, D] padded after the real
steps, with `lengths` [n], next to the utterance vectors. Unaligned (each modality its own length, pooled by an
integer factor to fit `steps`) or aligned (every modality of a sample resampled to the same number of steps:
its text length as MERTools' `frm_align` does, capped at `steps`; see featstore.sequence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featstore.catalog import Catalog, load_catalog
from featstore.errors import BadValuesError, MissingFramesError, StoreError, UnknownNameError
from featstore.store import FeatureStore, KeyName

MODALITY_ARGS = {"audio": "audio", "text": "text", "video": "visual"}  # load_features argument -> catalog modality
ARG_OF_MODALITY = {v: k for k, v in MODALITY_ARGS.items()}               # catalog modality -> argument name


def encoder_modality(catalog: Catalog, encoder: str, arg: str) -> str:
    """The catalog modality of `encoder` (an encoder the catalog does not know takes its argument's: `video` ->
    visual)."""
    spec = catalog.encoders.get(encoder)
    return spec.modality if spec is not None else MODALITY_ARGS[arg]


@dataclass
class Feature:
    """One loaded key: rows of the FeatureSet in its order; rows not done are zeros and unavailable."""

    name: str                     # unique within the set (the encoder name, '#2' appended for a repeat)
    encoder: str
    modality: str                 # audio | text | visual
    corruption: str
    test_corruption: str
    dim: int
    x: torch.Tensor               # [n, dim] float32, train corruption
    x_test: torch.Tensor          # [n, dim] float32, test corruption (x itself when the corruptions match)
    avail: torch.Tensor           # [n] bool: row done in the train-corruption key
    avail_test: torch.Tensor      # [n] bool: row done in the test-corruption key
    spec_hash: str = ""
    test_spec_hash: str = ""
    layers: str = "all"           # which stored layers were averaged
    seq: torch.Tensor | None = None           # [n, T, D] float32 frame-level values (level 'seq'), train corruption
    seq_test: torch.Tensor | None = None      # [n, T, D] test corruption (seq itself when the corruptions match)
    lengths: torch.Tensor | None = None       # [n] int64 real steps of `seq` (>= 1; rows not available: 1)
    lengths_test: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """'encoder/corruption' (the train key)."""
        return f"{self.encoder}/{self.corruption}"

    @property
    def test_key(self) -> str:
        return f"{self.encoder}/{self.test_corruption}"


@dataclass(frozen=True)
class Branch:
    """One model branch: its name, modality and the features concatenated into its input (usually one)."""

    name: str
    modality: str
    parts: tuple[str, ...]


@dataclass
class FeatureSet:
    """Everything the trainer needs from the store, in memory. Row i of every tensor is sample `ids[i]`."""

    dataset: str
    ids: np.ndarray                              # [n] str, canonical store order (a subset of the dataset)
    rows: np.ndarray                             # [n] int64 row numbers in the store
    features: dict[str, Feature]
    branches: list[Branch]
    emotion: torch.Tensor | None                 # [n] int64 codes, -1 = unlabelled (None: no emotion labels)
    classes: list[str]
    valence: torch.Tensor | None                 # [n] float32, NaN = unlabelled (valence, or sentiment)
    valence_name: str | None                     # 'valence' | 'sentiment' | None
    subsets: dict[str, np.ndarray]               # name -> [n] bool
    groups: np.ndarray | None                    # [n] str (e.g. IEMOCAP sessions) or None
    selection: str = "waf"                       # the dataset's selection rule (catalog), see trainer.metrics
    train_subset: str = "train"
    val_subset: str = "val"
    warnings: list[str] = field(default_factory=list)
    extra_train: np.ndarray | None = None        # [n] bool: rows every fold model also trains on (pseudo-labels)
    level: str = "utt"                           # 'seq': every feature also holds frame-level values
    aligned: bool = False                        # level 'seq': every modality of a row has the same length

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def sentiment(self) -> bool:
        """A sentiment dataset: a regression head only, scored by the sign (MERTools' CMU/SIMS)."""
        return self.selection == "sentiment"

    def available(self, branch: Branch, test: bool = False) -> torch.Tensor:
        """[n] bool: rows holding every part of a branch (train or test corruption)."""
        out = torch.ones(self.n, dtype=torch.bool)
        for p in branch.parts:
            f = self.features[p]
            out &= f.avail_test if test else f.avail
        return out

    def complete(self, test: bool = False) -> torch.Tensor:
        """[n] bool: rows that have every branch (the only rows the trainer trains on)."""
        out = torch.ones(self.n, dtype=torch.bool)
        for b in self.branches:
            out &= self.available(b, test)
        return out

    def describe(self) -> dict[str, list[str]]:
        """{modality: ['encoder/corruption', ...]} in branch order (for result rows)."""
        out: dict[str, list[str]] = {}
        for b in self.branches:
            for p in b.parts:
                out.setdefault(self.features[p].modality, []).append(self.features[p].key)
        return out

    def spec_hashes(self) -> dict[str, str]:
        """{'encoder/corruption': store spec hash} of every key read (train and test corruption)."""
        out: dict[str, str] = {}
        for f in self.features.values():
            out[f.key] = f.spec_hash
            out[f.test_key] = f.test_spec_hash
        return out

    def replicate(self, times: int) -> "FeatureSet":
        """Every branch repeated `times` times (shared tensors, separate model branches).

        MERTools' unimodal protocol trains its 3-branch attention model on three copies of one feature
        (`--audio_feature=X --text_feature=X --video_feature=X`); `features.replicate(3)` reproduces it.
        """
        if times < 1:
            raise ValueError("replicate: times must be >= 1")
        branches = []
        for i in range(times):
            for b in self.branches:
                branches.append(Branch(b.name if i == 0 else f"{b.name}#{i + 1}", b.modality, b.parts))
        return dataclasses.replace(self, branches=branches)

    def concat(self, modalities: Iterable[str] | bool = True) -> "FeatureSet":
        """One branch per listed modality (all when True) whose input concatenates its features."""
        mods = {MODALITY_ARGS.get(m, m) for m in (MODALITY_ARGS.values() if modalities is True else modalities or ())}
        parts: dict[str, list[str]] = {}
        for b in self.branches:
            if b.modality in mods:
                parts.setdefault(b.modality, []).extend(b.parts)
        branches: list[Branch] = []
        for b in self.branches:
            if b.modality not in mods:
                branches.append(b)
            elif b.modality in parts:  # the modality's first branch stands for all of them
                p = parts.pop(b.modality)
                branches.append(Branch(f"{b.modality}:" + "+".join(p), b.modality, tuple(p)))
        return dataclasses.replace(self, branches=branches)

    def with_pseudo_labels(self, rows: np.ndarray, codes: np.ndarray) -> "FeatureSet":
        """A copy in which `rows` carry emotion `codes` and join every fold's training rows (never a held-out
        fold, a selection split or a test split's labels: their subsets are unchanged)."""
        if self.emotion is None:
            raise ValueError("pseudo-labels need an emotion label")
        emotion = self.emotion.clone()
        emotion[torch.from_numpy(np.asarray(rows, np.int64))] = torch.from_numpy(np.asarray(codes, np.int64))
        extra = np.zeros(self.n, bool)
        extra[rows] = True
        return dataclasses.replace(self, emotion=emotion, extra_train=extra)

    def to(self, device: str | torch.device) -> "FeatureSet":
        """A copy whose tensors live on `device` (e.g. 'cuda')."""
        def move(a: torch.Tensor | None, same_as: torch.Tensor | None = None,
                 moved: torch.Tensor | None = None) -> torch.Tensor | None:
            if a is None:
                return None
            return moved if (same_as is not None and a is same_as) else a.to(device)

        feats = {}
        for k, f in self.features.items():
            x = f.x.to(device)
            seq = move(f.seq)
            ln = move(f.lengths)
            feats[k] = dataclasses.replace(f, x=x, x_test=move(f.x_test, f.x, x), seq=seq,
                                           seq_test=move(f.seq_test, f.seq, seq), lengths=ln,
                                           lengths_test=move(f.lengths_test, f.lengths, ln))
        return dataclasses.replace(self, features=feats)


def key_corruption(catalog: Catalog, modality: str, corruption: str) -> str:
    """The corruption an encoder of `modality` reads under `corruption`: a catalog corruption that changes another
    modality's input (speech noise for a text or visual encoder, blur for audio, ...) leaves it on `clean`."""
    spec = catalog.corruptions.get(corruption)
    if spec is not None and spec.modality and spec.modality != modality:
        return "clean"
    return corruption


def load_features(store: FeatureStore | str, dataset: str, audio: Sequence[str] | str = (),
                  text: Sequence[str] | str = (), video: Sequence[str] | str = (), *, corruption: str = "clean",
                  test_corruption: str | None = None, layers: Sequence[int] | dict[str, Sequence[int]] | None = None,
                  subsets: Sequence[str] | None = None, concat: Iterable[str] | bool = (),
                  train_subset: str = "train", val_subset: str = "val",
                  catalog: Catalog | None = None, level: str = "utt", steps: int | None = None,
                  aligned: bool = False) -> FeatureSet:
    """Read the chosen keys of `dataset` into float32 tensors, once.

    audio/text/video: encoder names (a comma-separated string works too); each becomes one branch, in
    audio, text, video order. corruption: the key variant used for training rows; test_corruption (default:
    the same) for test rows (rows outside the train/val subsets; every row when the dataset has groups,
    since leave-one-group-out scores the held-out group on it, as MERTools does). layers: stored layers to
    average (None = all stored layers; a dict per encoder works). subsets: which subsets' rows to load
    (default all). concat: modalities whose features become one concatenated branch. A corruption applies
    to the encoders of its own modality; the others read their clean key (`key_corruption`), so
    `--test-corruption snr5-10` on an audio+text+video set makes the audio noisy and nothing else.
    level='seq' also reads each key's frame-level `seq` (see the module docstring; steps: the cap, aligned:
    one time axis per row).

    Errors: unknown dataset/encoder/corruption names -> UnknownNameError with the closest names; a key that
    is not built -> the store's MissingKeyError (it names the `featstore build` command); NaN/Inf in a done
    row -> BadValuesError naming the sample.
    """
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, read_only=True)
    cat = catalog or load_catalog()
    if level not in ("utt", "seq"):
        raise StoreError(f"unknown feature level '{level}'; expected utt or seq")
    if steps is not None and steps < 1:
        raise StoreError(f"steps must be >= 1, got {steps}")
    test_corruption = test_corruption or corruption
    chosen = {arg: _names(v) for arg, v in (("audio", audio), ("text", text), ("video", video))}
    if not any(chosen.values()):
        raise StoreError("no features chosen: give at least one encoder (audio, text or video)")

    if not fs.has_dataset(dataset) and dataset not in cat.datasets:
        raise UnknownNameError("dataset", dataset, set(cat.datasets) | set(fs.datasets()))
    ids_all = fs.ids(dataset)  # a catalog dataset that is not in the store: the store's MissingKeyError
    ds_spec = cat.datasets.get(dataset)
    stored_keys = fs.keys(dataset)
    for cor in {corruption, test_corruption}:
        if cor not in cat.corruptions and all(k.corruption != cor for k in stored_keys):
            raise UnknownNameError("corruption", cor, set(cat.corruptions) | {k.corruption for k in stored_keys})
    stored_encoders = {k.encoder for k in stored_keys}
    for arg, encs in chosen.items():
        for enc in encs:
            if enc not in cat.encoders and enc not in stored_encoders:
                raise UnknownNameError("encoder", enc, set(cat.encoders) | stored_encoders)
            spec = cat.encoders.get(enc)
            if spec is not None and spec.modality != MODALITY_ARGS[arg]:
                raise StoreError(f"encoder {enc} is a {spec.modality} encoder, not {MODALITY_ARGS[arg]}; "
                                 f"pass it as --{'video' if spec.modality == 'visual' else spec.modality}")

    # rows: the union of the chosen subsets (all rows when the dataset has no subsets)
    all_subsets = fs.subsets(dataset)
    if subsets is not None:
        missing = [s for s in subsets if s not in all_subsets]
        if missing:
            raise UnknownNameError("subset", missing[0], all_subsets)
        keep_names = list(subsets)
        for s in (train_subset, val_subset):  # training and validation rows always come along
            if s in all_subsets and s not in keep_names:
                keep_names.append(s)
        member = np.zeros(len(ids_all), bool)
        for s in keep_names:
            member |= all_subsets[s]
    else:
        keep_names = list(all_subsets)
        member = np.ones(len(ids_all), bool)
    rows = np.flatnonzero(member).astype(np.int64)
    n = len(rows)
    sub = {s: all_subsets[s][rows] for s in keep_names}
    groups_all = fs.groups(dataset)
    groups = groups_all[rows] if groups_all is not None else None

    # which rows need which corruption
    if train_subset in sub:
        train_role = sub[train_subset] | sub.get(val_subset, np.zeros(n, bool))
    else:
        train_role = np.ones(n, bool)
    test_role = np.ones(n, bool) if groups is not None else ~train_role

    features: dict[str, Feature] = {}
    branches: list[Branch] = []
    for arg, encs in chosen.items():
        for enc in encs:
            name = enc
            i = 2
            while name in features:
                name, i = f"{enc}#{i}", i + 1
            lay = layers.get(enc) if isinstance(layers, dict) else layers
            modality = encoder_modality(cat, enc, arg)
            cor, test_cor = key_corruption(cat, modality, corruption), key_corruption(cat, modality, test_corruption)
            same = test_cor == cor
            x, avail, h, dim = read_key_rows(fs, KeyName(dataset, enc, cor), rows,
                                     (train_role | test_role) if same else train_role, lay, ids_all)
            seqs: tuple[torch.Tensor, torch.Tensor] | None = None
            seqs_t: tuple[torch.Tensor, torch.Tensor] | None = None
            if level == "seq":
                seqs = read_key_seq(fs, KeyName(dataset, enc, cor), rows,
                                    (train_role | test_role) if same else train_role, ids_all,
                                    None if aligned else steps)
                seqs_t = seqs if same else read_key_seq(fs, KeyName(dataset, enc, test_cor), rows, test_role,
                                                        ids_all, None if aligned else steps)
            if same:
                xt, avail_t, ht = x, avail, h
            else:
                xt, avail_t, ht, dim_t = read_key_rows(fs, KeyName(dataset, enc, test_cor), rows, test_role, lay,
                                                       ids_all)
                if dim_t != dim:
                    raise StoreError(f"{dataset}/{enc}: {cor} has dim {dim}, {test_cor} has {dim_t}")
                # a row's train values serve where it is a training row, its test values where it is a test row
                avail = avail & torch.from_numpy(train_role)
                avail_t = avail_t & torch.from_numpy(test_role)
            features[name] = Feature(name=name, encoder=enc, modality=modality, corruption=cor,
                                     test_corruption=test_cor, dim=dim, x=x, x_test=xt, avail=avail,
                                     avail_test=avail_t, spec_hash=h, test_spec_hash=ht,
                                     layers="all" if lay is None else ",".join(str(int(v)) for v in lay),
                                     seq=seqs[0] if seqs else None, lengths=seqs[1] if seqs else None,
                                     seq_test=seqs_t[0] if seqs_t else None,
                                     lengths_test=seqs_t[1] if seqs_t else None)
            branches.append(Branch(name, modality, (name,)))

    labels = fs.labels(dataset)
    emotion = classes = None
    if "emotion" in labels:
        values, classes = labels["emotion"]
        emotion = torch.from_numpy(np.asarray(values, np.int64)[rows])
    if classes is None:
        classes = list(ds_spec.emotions) if ds_spec is not None and ds_spec.emotions else []
    valence = valence_name = None
    sentiment = bool(ds_spec.sentiment) if ds_spec is not None else ("sentiment" in labels and "emotion" not in labels)
    for name in (("sentiment", "valence") if sentiment else ("valence",)):
        if name in labels and labels[name][1] is None:
            valence = torch.from_numpy(np.asarray(labels[name][0], np.float32)[rows].copy())
            valence_name = name
            break
    selection = ds_spec.selection if ds_spec is not None else ("sentiment" if sentiment else "waf")
    if selection == "sentiment" and valence is None:
        raise StoreError(f"dataset {dataset} is scored on sentiment, but the store holds no sentiment labels")
    if selection != "sentiment" and emotion is None:
        raise StoreError(f"dataset {dataset} has no emotion labels in the store")
    fset = FeatureSet(dataset=dataset, ids=ids_all[rows], rows=rows, features=features, branches=branches,
                      emotion=emotion if selection != "sentiment" else None, classes=list(classes or []),
                      valence=valence, valence_name=valence_name, subsets=sub, groups=groups, selection=selection,
                      train_subset=train_subset, val_subset=val_subset)
    if level == "seq":
        fset = dataclasses.replace(fset, level="seq", aligned=bool(aligned))
        if aligned:
            align_sequences(fset, steps)
    if concat:
        if level == "seq" and not aligned:
            raise StoreError("concatenating a modality's features into one branch needs aligned sequences "
                             "(--aligned) at frame level")
        fset = fset.concat(concat)
    missing = int((~fset.complete()).logical_and(torch.from_numpy(train_role)).sum())
    if missing:
        fset.warnings.append(f"{missing} training-role row(s) lack a feature (extraction failed): they are not "
                             f"trained on, and are predicted from the features they have")
    return fset


def _names(value: Sequence[str] | str | None) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def read_key_seq(fs: FeatureStore, key: KeyName, rows: np.ndarray, needed: np.ndarray, ids_all: np.ndarray,
                 steps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-level values of `rows` as (float32 [n, T, D] padded, int64 lengths [n]); each sequence pooled by an
    integer factor to fit `steps` when given; rows not needed or not done get one zero step."""
    from featstore.sequence import pool_to_cap

    fa = fs.open_key(key)
    if not fa.has_seq:
        raise MissingFramesError(f"{key} keeps no frame-level features, which sequence models need: build them with "
                         f"featstore build --dataset {key.dataset} --encoder {key.encoder}"
                         f"{'' if key.corruption == 'clean' else ' --corruption ' + key.corruption} --level frame")
    done = fa.done_mask()
    want = rows[needed]
    vals, lens = fa.read_seq(want)
    ok = done[want]
    zero = np.flatnonzero(ok & (lens < 1))
    if len(zero):
        r = int(want[zero[0]])
        raise BadValuesError(f"{key}: sample {ids_all[r]} (row {r}) is done but has a sequence of length 0; "
                             f"rebuild it with --level frame --overwrite")
    seqs: list[np.ndarray] = []
    for i in range(len(want)):
        x = vals[i, :lens[i]].astype(np.float32) if ok[i] else np.zeros((1, vals.shape[2]), np.float32)
        if ok[i] and not np.isfinite(x).all():
            r = int(want[i])
            raise BadValuesError(f"{key}: sample {ids_all[r]} (row {r}) has NaN/Inf frame-level features")
        seqs.append(pool_to_cap(x, steps) if steps else x)
    T = max([len(x) for x in seqs], default=1)
    out = np.zeros((len(rows), T, vals.shape[2]), np.float32)
    lengths = np.ones(len(rows), np.int64)
    for j, i in enumerate(np.flatnonzero(needed)):
        out[i, :len(seqs[j])] = seqs[j]
        lengths[i] = len(seqs[j])
    return torch.from_numpy(out), torch.from_numpy(lengths)


def align_sequences(fset: FeatureSet, steps: int | None) -> None:
    """Resample, in place, every feature's sequences of a row to one length: the row's text length when a text
    feature is loaded (the first; else the shortest modality), capped at `steps` (featstore.sequence.resample)."""
    from featstore.sequence import resample

    feats = list(fset.features.values())
    ref = next((f for f in feats if f.modality == "text"), None)
    shared = all(f.seq_test is f.seq for f in feats)
    for test in ((False,) if shared else (False, True)):
        srcs = [((f.seq_test, f.lengths_test) if test else (f.seq, f.lengths)) for f in feats]
        if ref is not None:
            target = (ref.lengths_test if test else ref.lengths).numpy().copy()
        else:
            target = np.min(np.stack([ln.numpy() for _, ln in srcs]), axis=0)
        if steps:
            target = np.minimum(target, steps)
        target = np.maximum(target, 1)
        T = int(target.max()) if fset.n else 1
        for f, (x, ln) in zip(feats, srcs):
            assert x is not None and ln is not None
            xn, lnn = x.numpy(), ln.numpy()
            out = np.zeros((fset.n, T, x.shape[2]), np.float32)
            for i in range(fset.n):
                out[i, :target[i]] = resample(xn[i, :lnn[i]], int(target[i]))
            new = (torch.from_numpy(out), torch.from_numpy(target.astype(np.int64)))
            if test:
                f.seq_test, f.lengths_test = new
            else:
                f.seq, f.lengths = new
                if shared:
                    f.seq_test, f.lengths_test = new


def read_key_rows(fs: FeatureStore, key: KeyName, rows: np.ndarray, needed: np.ndarray,
          layers: Sequence[int] | None, ids_all: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """float32 [n, D] of `rows` (rows not `needed` or not done: zeros), availability [n], spec hash, D."""
    fa = fs.open_key(key)  # MissingKeyError naming the build command
    done_all = fa.done_mask()
    D = int(fa.shape[2])
    want = rows[needed]
    out = np.zeros((len(rows), D), np.float32)
    if len(want):
        raw = fa.read(want if len(want) < fa.n else None, layers)  # [m, L', D] stored dtype
        # float32 straight into `out` when every row is wanted: one fresh 4-byte copy, not two (their page
        # faults were a third of `trainer run`'s loading time)
        block = out if len(want) == len(rows) else np.empty((len(want), D), np.float32)
        if raw.shape[1] == 1:
            np.copyto(block, raw[:, 0, :])
        else:
            block[:] = raw.astype(np.float32).mean(axis=1)
        del raw
        done = done_all[want]
        finite = np.isfinite(block).all(axis=1)
        bad = np.flatnonzero(done & ~finite)
        if len(bad):
            r = int(want[bad[0]])
            raise BadValuesError(f"{key}: sample {ids_all[r]} (row {r}) has NaN/Inf features; rebuild it "
                                 f"(featstore build --dataset {key.dataset} --encoder {key.encoder}"
                                 f"{'' if key.corruption == 'clean' else ' --corruption ' + key.corruption}"
                                 f" --overwrite) or re-import it")
        block[~done] = 0.0
        if block is not out:
            out[needed] = block
    avail = np.zeros(len(rows), bool)
    avail[needed] = done_all[want]
    return torch.from_numpy(out), torch.from_numpy(avail), str(fa.attrs.get("spec_hash", "")), D
