"""`featstore import mertools`: a real-shaped MERTools folder (label-6way.npz + features/*-UTT/<id>.npy) into the store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from featstore.catalog import load_catalog, parse_catalog
from featstore.errors import FeatstoreError, StoreError, UnknownNameError
from featstore.mertools import import_mertools, match_variant, parse_folder_name, parse_mapping, read_mertools_labels
from featstore.safe_pickle import UnsafePickleError, load_npz_dicts
from featstore.store import FeatureStore, KeyName

EMOS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
DS = "mer-test"

CATALOG = {
    "encoders": {
        "hubert-large": {"modality": "audio", "family": "hf-audio", "model": "TencentGameMate/chinese-hubert-large",
                         "dim": 1024, "mertools_names": ["chinese-hubert-large"]},
        "egemaps": {"modality": "audio", "family": "opensmile", "dim": 88, "pooling": "functionals",
                    "dtype": "float32", "availability": "offline", "mertools_names": ["eGeMAPS"]},
        "macbert-large": {"modality": "text", "family": "hf-text", "model": "hfl/chinese-macbert-large", "dim": 32,
                          "mertools_names": ["chinese-macbert-large"]},
        "manet-rafdb": {"modality": "visual", "family": "import-only", "availability": "import-only", "dim": 24},
    },
    "datasets": {DS: {"adapter": "mer2024", "emotions": EMOS, "valence": True}},
    "corruptions": {
        "clean": {"kind": "none"},
        "lang-eng": {"kind": "variant", "modality": "text", "note": "English subtitles"},
        "snr5-10": {"kind": "audio-noise", "modality": "audio", "params": {"snr": [5, 10]}},
        "tts": {"kind": "variant", "modality": "audio", "note": "English TTS audio of the subtitles"},
        "punc-case1": {"kind": "punctuation", "modality": "text"},
    },
}


@pytest.fixture
def catalog():
    return parse_catalog(CATALOG, "test")


def _ids(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}_{i:08d}" for i in range(start, start + n)]


def make_mertools(root: Path, n_train: int = 30, n_test1: int = 12, n_test2: int = 6, *, dims=None,
                  savez=np.savez_compressed) -> dict:
    """A MERTools `*-process` folder; returns what was written (ids per corpus, labels, vectors per folder)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    train, test1, test2 = _ids("sample", n_train), _ids("sample", n_test1, 10_000), _ids("test2", n_test2)
    train_c = {sid: {"emo": EMOS[i % 6], "val": float(rng.uniform(-5, 5))} for i, sid in enumerate(train)}
    train_c[train[3]]["val"] = -10      # MERTools' "no valence"
    train_c[train[4]]["val"] = ""
    train_c[train[5]]["val"] = np.float64(1.25)   # a numpy scalar, as pandas would give
    test1_c = {sid: {"emo": EMOS[(i + 2) % 6], "val": float(i) / 4} for i, sid in enumerate(test1)}
    test2_c = {sid: {} for sid in test2}   # unlabelled test set
    # MERTools saves with np.savez_compressed(path, train_corpus=..., test1_corpus=...); test1 first checks train-first order
    savez(root / "label-6way.npz", test1_corpus=test1_c, train_corpus=train_c, test2_corpus=test2_c)
    ids = train + test1 + test2
    feats = root / "features"
    written: dict[str, dict[str, np.ndarray]] = {}

    def folder(name: str, dim: int, dtype=np.float32, scale: float = 1.0, frame: bool = False) -> Path:
        d = feats / name
        d.mkdir(parents=True)
        written[name] = {}
        for i, sid in enumerate(ids):
            shape = (5 + i % 3, dim) if frame else ((1, dim) if i % 7 == 0 else (dim,))
            v = (rng.standard_normal(shape) * scale).astype(dtype)
            np.save(d / f"{sid}.npy", v)
            written[name][sid] = v
        return d

    dims = dims or {}
    hub = folder("chinese-hubert-large-UTT", dims.get("hubert", 1024))
    folder("eGeMAPS_UTT", 88, np.float64, scale=1e5)                 # openSMILE functionals leave float16's range
    folder("chinese-hubert-large-FRA", 16, frame=True)
    folder("manet_UTT", 24)                                           # no mertools_names -> unknown
    folder("chinese-hubert-large-noisesnrmix-UTT", dims.get("hubert", 1024))  # MERBench noise variant: not snr5-10
    folder("chinese-macbert-large-langeng-UTT", 32)
    # per-sample damage in the hubert folder
    os.remove(hub / f"{train[1]}.npy")
    (hub / f"{train[2]}.npy").write_bytes(b"this is not a numpy file at all")
    np.save(hub / f"{train[6]}.npy", rng.standard_normal(1000).astype(np.float32))
    bad = rng.standard_normal(dims.get("hubert", 1024)).astype(np.float32)
    bad[7] = np.nan
    np.save(hub / f"{train[8]}.npy", bad)
    np.save(hub / f"{train[9]}.npy", rng.standard_normal((4, dims.get("hubert", 1024))).astype(np.float32))
    np.save(hub / "not_a_sample.npy", np.zeros(3))
    return {"train": train, "test1": test1, "test2": test2, "ids": ids, "train_c": train_c, "test1_c": test1_c,
            "written": written, "damaged": {"missing": train[1], "garbage": train[2], "dim": train[6],
                                            "nan": train[8], "frames": train[9]}}


def _errors_by_id(report, key: str) -> dict[str, str]:
    return {e["id"]: e["message"] for e in report.errors if e["key"] == key}


# ---------------------------------------------------------------------------------------------- labels
def test_import_labels_subsets_and_order(tmp_path, catalog):
    src = make_mertools(tmp_path / "mer")
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    assert fs.ids(DS).tolist() == src["ids"]                          # train first, then file order
    subsets = fs.subsets(DS)
    assert rep.subsets == {"train": 30, "test1": 12, "test2": 6}
    assert subsets["train"].tolist() == [s in src["train"] for s in src["ids"]]
    assert subsets["test2"].sum() == 6 and rep.predict_only == ["test2"]
    labels = fs.labels(DS)
    codes, classes = labels["emotion"]
    assert classes == EMOS
    expect = [EMOS.index(src["train_c"][s]["emo"]) if s in src["train_c"] else
              EMOS.index(src["test1_c"][s]["emo"]) if s in src["test1_c"] else -1 for s in src["ids"]]
    assert codes.tolist() == expect
    val, vclasses = labels["valence"]
    assert vclasses is None
    t = src["train"]
    assert np.isnan(val[3]) and np.isnan(val[4])                     # -10 and '' mean "no valence"
    assert val[5] == np.float32(1.25)
    assert val[0] == np.float32(src["train_c"][t[0]]["val"])
    assert np.isnan(val[-6:]).all()                                   # test2: predict-only
    attrs = fs.dataset_attrs(DS)
    assert attrs["adapter"] == "mertools-import" and attrs["source_root"] == str((tmp_path / "mer").resolve())
    assert rep.labelled == {"emotion": 42, "valence": 40}


def test_emotion_outside_the_catalog_classes_is_named(tmp_path, catalog):
    root = tmp_path / "mer"
    root.mkdir()
    np.savez(root / "label-6way.npz", train_corpus={"a": {"emo": "happy"}, "b": {"emo": "bored"}, "c": {"emo": "meh"}})
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    with pytest.raises(FeatstoreError, match=r"bored, meh not in the classes of dataset mer-test \(neutral, angry"):
        import_mertools(fs, root, DS, catalog=catalog)
    # a dataset the catalog does not know takes the sorted union
    rep = import_mertools(fs, root, "other", catalog=catalog)
    assert fs.labels("other")["emotion"][1] == ["bored", "happy", "meh"]
    assert "valence" not in fs.labels("other") and rep.keys == []


def test_placeholder_test_labels_become_predict_only(tmp_path, catalog):
    """MER2024's label file writes 'neutral' for every (unlabelled) test1 sample."""
    root = tmp_path / "mer"
    root.mkdir()
    train = {f"s{i}": {"emo": EMOS[i % 6]} for i in range(12)}
    test1 = {f"t{i}": {"emo": "neutral"} for i in range(12)}
    np.savez_compressed(root / "label-6way.npz", train_corpus=train, test1_corpus=test1)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    rep = import_mertools(fs, root, DS, catalog=catalog)
    assert rep.predict_only == ["test1"] and any("placeholder" in w for w in rep.warnings)
    assert (fs.labels(DS)["emotion"][0][12:] == -1).all()


# ---------------------------------------------------------------------------------------------- features
def test_import_features_values_keys_and_errors(tmp_path, catalog):
    src = make_mertools(tmp_path / "mer")
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    events = []
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, progress=lambda e, p: events.append(e))
    keys = {str(k) for k in fs.keys(DS)}
    assert keys == {f"{DS}/hubert-large/clean", f"{DS}/egemaps/clean", f"{DS}/manet/clean",
                    f"{DS}/hubert-large/noisesnrmix", f"{DS}/macbert-large/lang-eng"}
    assert {"labels", "plan", "key", "rows"} <= set(events)
    by_key = {k.key: k for k in rep.keys}
    # catalog mapping and provenance
    hub = fs.open_key(KeyName(DS, "hubert-large"))
    assert hub.attrs["spec"]["encoder"] == catalog.encoder("hubert-large").feature_spec()
    assert hub.attrs["spec"]["folder"] == "chinese-hubert-large-UTT" and hub.attrs["imported"] is False
    assert by_key[f"{DS}/hubert-large/clean"].catalog_encoder
    # an unknown folder keeps its own name, marked imported
    manet = fs.open_key(KeyName(DS, "manet"))
    assert manet.attrs["imported"] is True and manet.attrs["source_folder"] == "manet_UTT"
    assert manet.attrs["spec"]["encoder"] is None
    # variants: langeng -> the catalog's lang-eng; MERBench's snrmix is no catalog corruption -> raw suffix
    noisy = fs.open_key(KeyName(DS, "hubert-large", "noisesnrmix"))
    assert noisy.attrs["imported_corruption"] is True and noisy.attrs["spec"]["corruption"]["imported"] is True
    assert fs.open_key(KeyName(DS, "macbert-large", "lang-eng")).attrs["imported_corruption"] is False
    # frame-level folders are recognised and skipped
    fra = [s for s in rep.skipped if s.folder == "chinese-hubert-large-FRA"]
    assert fra and "sequence features" in fra[0].reason and not fra[0].error
    # values: bit-equal to the .npy after the cast to the key's dtype
    ids = src["ids"]
    damaged = set(src["damaged"].values())
    for folder, key, dtype in [("chinese-hubert-large-UTT", KeyName(DS, "hubert-large"), np.float16),
                               ("eGeMAPS_UTT", KeyName(DS, "egemaps"), np.float32),
                               ("manet_UTT", KeyName(DS, "manet"), np.float16),
                               ("chinese-macbert-large-langeng-UTT", KeyName(DS, "macbert-large", "lang-eng"), np.float16)]:
        fa = fs.open_key(key)
        assert fa.utt.dtype == dtype
        got = fa.read()[:, 0, :]
        done = fa.done_mask()
        for i, sid in enumerate(ids):
            if folder == "chinese-hubert-large-UTT" and sid in damaged:
                assert not done[i] and not got[i].any()
                continue
            want = np.load(tmp_path / "mer" / "features" / folder / f"{sid}.npy").reshape(-1).astype(dtype)
            assert done[i]
            assert got[i].tobytes() == want.tobytes(), (folder, sid)
    # per-sample errors, in the key and in the report
    errs = _errors_by_id(rep, f"{DS}/hubert-large/clean")
    d = src["damaged"]
    assert set(errs) == damaged
    assert "missing" in errs[d["missing"]]
    assert "unreadable" in errs[d["garbage"]]
    assert "1000" in errs[d["dim"]] and "1024" in errs[d["dim"]]
    assert "NaN" in errs[d["nan"]]
    assert "expected an utterance vector, got shape (4, 1024)" in errs[d["frames"]]
    assert {e["id"] for e in hub.errors()} == damaged and all(e["stage"] == "import" for e in hub.errors())
    assert by_key[f"{DS}/hubert-large/clean"].rows_written == len(ids) - len(damaged)
    assert rep.rows_written[f"{DS}/manet/clean"] == len(ids)
    assert not rep.ok
    assert any("named after no sample" in w for w in rep.warnings)


def test_unknown_encoder_dtype_follows_the_values(tmp_path, catalog):
    root = tmp_path / "mer"
    root.mkdir()
    ids = [f"s{i}" for i in range(20)]
    np.savez(root / "label-6way.npz", train_corpus={s: {"emo": "happy"} for s in ids})
    d = root / "features" / "IS10_UTT"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for s in ids:
        np.save(d / f"{s}.npy", rng.standard_normal(12) * 2e5)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    rep = import_mertools(fs, root, DS, catalog=catalog)
    fa = fs.open_key(KeyName(DS, "IS10"))
    assert fa.utt.dtype == np.float32 and rep.ok
    assert fa.read()[3, 0].tobytes() == np.load(d / "s3.npy").astype(np.float32).tobytes()


# ---------------------------------------------------------------------------------------------- safety
class Canary:
    """A foreign class in a label pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_foreign_pickle_is_refused_and_runs_nothing(tmp_path, catalog):
    root = tmp_path / "mer"
    root.mkdir()
    canary = tmp_path / "canary"
    np.savez(root / "label-6way.npz", train_corpus={"a": {"emo": "happy", "val": Canary(str(canary))}})
    with pytest.raises(UnsafePickleError) as exc:
        load_npz_dicts(root / "label-6way.npz")
    msg = str(exc.value)
    assert "label-6way.npz" in msg and ("posix.system" in msg or "nt.system" in msg) and "\n" not in msg
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    with pytest.raises(UnsafePickleError):
        import_mertools(fs, root, DS, catalog=catalog)
    assert not canary.exists()
    assert fs.datasets() == []


class Custom:
    pass


def test_custom_class_is_refused(tmp_path):
    path = tmp_path / "label.npz"
    np.savez(path, train_corpus={"a": Custom()})
    with pytest.raises(UnsafePickleError, match=r"label.npz.*refusing to unpickle .*Custom"):
        load_npz_dicts(path)


def test_safe_loader_reads_what_mertools_writes(tmp_path):
    path = tmp_path / "l.npz"
    corpus = {"s1": {"emo": "happy", "val": np.float64(-1.5)}, "s2": {"emo": "sad", "val": 2}}
    np.savez_compressed(path, train_corpus=corpus, test1_corpus={}, grid=np.arange(6.0).reshape(2, 3))
    got = load_npz_dicts(path)
    assert got["train_corpus"] == corpus and got["test1_corpus"] == {}
    assert np.array_equal(got["grid"], np.arange(6.0).reshape(2, 3))


# ---------------------------------------------------------------------------------------------- reruns
def test_existing_keys_are_refused_without_overwrite(tmp_path, catalog):
    make_mertools(tmp_path / "mer", n_train=12, n_test1=3, n_test2=2)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    with pytest.raises(StoreError, match="already imported"):
        import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    # another folder onto an existing key: another spec
    with pytest.raises(StoreError, match=r"mer-test/hubert-large/clean \(made from folder chinese-hubert-large-UTT"):
        import_mertools(fs, tmp_path / "mer", DS, catalog=catalog,
                        mapping={"chinese-hubert-large-noisesnrmix-UTT": "hubert-large/clean"})
    # overwrite replaces them
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, overwrite=True)
    assert rep.rows_written[f"{DS}/manet/clean"] == 17


def test_changed_folder_is_not_resumed(tmp_path, catalog):
    src = make_mertools(tmp_path / "mer", n_train=40, n_test1=3, n_test2=2)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, rows_per_chunk=16)
    fa = fs.open_key(KeyName(DS, "manet"))
    fa.done[0:16] = False
    del fa.group["errors"]["p0000000000"]
    np.save(tmp_path / "mer" / "features" / "manet_UTT" / f"{src['ids'][0]}.npy", np.ones(24, np.float32) * 3)
    with pytest.raises(StoreError, match="manet_UTT changed since it was imported"):
        import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)


def test_interrupted_import_is_completed_by_rerunning(tmp_path, catalog):
    src = make_mertools(tmp_path / "mer", n_train=40, n_test1=5, n_test2=3)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    first = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, rows_per_chunk=16)
    key = KeyName(DS, "hubert-large")
    before = fs.open_key(key).read()
    n_errors = len(fs.open_key(key).errors())
    # simulate a kill while chunk [16, 32) was being written: rows not done, no finished record, rows zeroed
    fa = fs.open_key(key)
    fa.utt[16:32] = 0
    fa.done[16:32] = False
    del fa.group["errors"]["p0000000016"]
    assert fa.pending_chunks() == [(16, 32)]
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    item = {k.key: k for k in rep.keys}[str(key)]
    assert item.status == "resumed" and item.chunks_written == 1 and item.chunks_already_done == 2
    assert item.rows_written == 16                   # the damaged samples are rows 1..9
    others = [k for k in rep.keys if k.key != str(key)]
    assert all(k.status == "already imported" and k.rows_written == 0 for k in others)
    after = fs.open_key(key)
    assert after.read().tobytes() == before.tobytes()
    assert len(after.errors()) == n_errors and after.pending_chunks() == []
    assert first.rows_written[str(key)] == len(src["ids"]) - 5


# ---------------------------------------------------------------------------------------------- --map
def test_map_overrides_and_unknown_names(tmp_path, catalog):
    make_mertools(tmp_path / "mer", n_train=12, n_test1=3, n_test2=2)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    with pytest.raises(UnknownNameError, match=r"unknown encoder 'hubert-larg'; did you mean hubert-large"):
        import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, mapping=["manet_UTT=hubert-larg"])
    with pytest.raises(UnknownNameError, match=r"unknown feature folder 'manet-UTT'; did you mean manet_UTT"):
        import_mertools(fs, tmp_path / "mer", DS, catalog=catalog, mapping={"manet-UTT": "manet-rafdb"})
    assert fs.datasets() == []                        # nothing written before the mapping was checked
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog,
                          mapping=parse_mapping(["manet=manet-rafdb", "chinese-hubert-large-noisesnrmix-UTT=hubert-large/snr5-10"]))
    keys = {str(k) for k in fs.keys(DS)}
    assert f"{DS}/manet-rafdb/clean" in keys and f"{DS}/hubert-large/snr5-10" in keys
    assert f"{DS}/manet/clean" not in keys
    manet = fs.open_key(KeyName(DS, "manet-rafdb"))
    assert manet.attrs["imported"] is False and manet.attrs["mapped_by"] == "map"
    assert manet.attrs["spec"]["encoder"] == catalog.encoder("manet-rafdb").feature_spec()
    assert {k.key: k.catalog_corruption for k in rep.keys}[f"{DS}/hubert-large/snr5-10"]


def test_catalog_dim_mismatch_is_a_folder_error(tmp_path, catalog):
    make_mertools(tmp_path / "mer", n_train=12, n_test1=3, n_test2=2, dims={"hubert": 768})
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    bad = {s.folder: s for s in rep.skipped if s.error}
    assert "dimension 768" in bad["chinese-hubert-large-UTT"].reason and "dim 1024" in bad["chinese-hubert-large-UTT"].reason
    assert not rep.ok and not fs.has_key(KeyName(DS, "hubert-large"))


# ---------------------------------------------------------------------------------------------- names
def test_folder_names_and_variants(catalog):
    assert parse_folder_name("chinese-hubert-large-UTT") == ("chinese-hubert-large", "UTT", None)
    assert parse_folder_name("eGeMAPS_UTT") == ("eGeMAPS", "UTT", None)
    assert parse_folder_name("eGeMAPS_noisesnrmix_UTT") == ("eGeMAPS", "UTT", "noisesnrmix")
    assert parse_folder_name("Baichuan-13B-Base-punccase2-UTT") == ("Baichuan-13B-Base", "UTT", "punccase2")
    assert parse_folder_name("chinese-hubert-large-ttseng-FRA") == ("chinese-hubert-large", "FRA", "ttseng")
    assert parse_folder_name("chinese-macbert-large-4-UTT") == ("chinese-macbert-large-4", "UTT", None)
    assert match_variant("langeng", catalog) == "lang-eng"
    assert match_variant("punccase1", catalog) == "punc-case1"
    assert match_variant("punccase2", catalog) is None
    assert match_variant("ttseng", catalog) == "tts"         # its note says English
    assert match_variant("ttschi", catalog) is None
    assert match_variant("noisesnrmix", catalog) is None     # not MER2024's snr5-10


def test_labels_reader_keeps_int_codes_and_sentinels(tmp_path, catalog):
    path = tmp_path / "label.npz"
    np.savez(path, train_corpus={"a": {"emo": 2, "val": -10}, "b": {"emo": 0, "val": "1.5"}}, test_corpus={"c": {}})
    table = read_mertools_labels(path, catalog.dataset(DS))
    assert table.ids == ["a", "b", "c"] and table.predict_only == ["test"]
    assert table.labels["emotion"].tolist() == [2, 0, -1]
    assert np.isnan(table.labels["valence"][0]) and table.labels["valence"][1] == 1.5


def test_repo_catalog_maps_mertools_names(tmp_path):
    """With the repository's catalog (whatever its encoder names are today)."""
    cat = load_catalog()
    by = cat.by_mertools_name()
    if "eGeMAPS" not in by:
        pytest.skip("the repository catalog maps no eGeMAPS folder")
    root = tmp_path / "mer"
    root.mkdir()
    ids = [f"s{i}" for i in range(10)]
    np.savez(root / "label-6way.npz", train_corpus={s: {"emo": "happy", "val": 0.5} for s in ids})
    d = root / "features" / "eGeMAPS_UTT"
    d.mkdir(parents=True)
    dim = cat.encoder(by["eGeMAPS"]).dim
    for s in ids:
        np.save(d / f"{s}.npy", np.linspace(0, 1, dim))
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    rep = import_mertools(fs, root, "mertools-demo", catalog=cat)
    assert [k.key for k in rep.keys] == [f"mertools-demo/{by['eGeMAPS']}/clean"] and rep.ok


def test_key_killed_inside_create_is_recreated(tmp_path, catalog):
    make_mertools(tmp_path / "mer", n_train=12, n_test1=3, n_test2=2)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    fa = fs.open_key(KeyName(DS, "manet"))
    fa.done[:] = False
    for name in ("spec", "spec_hash"):     # as if killed between creating the arrays and writing their attributes
        del fa.group.attrs[name]
    del fa.group["errors"]
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    item = {k.key: k for k in rep.keys}[f"{DS}/manet/clean"]
    assert item.status == "recreated" and item.rows_written == 17
    assert fs.open_key(KeyName(DS, "manet")).attrs["spec_hash"]


def test_labels_of_another_adapter_are_kept(tmp_path, catalog):
    src = make_mertools(tmp_path / "mer", n_train=12, n_test1=3, n_test2=2)
    fs = FeatureStore(tmp_path / "fs.zarr", create=True)
    fs.put_dataset(DS, src["ids"], labels={"valence": np.zeros(17)}, subsets={"train": np.ones(17, bool)},
                   attrs={"adapter": "mer2024"})
    rep = import_mertools(fs, tmp_path / "mer", DS, catalog=catalog)
    assert fs.dataset_attrs(DS)["adapter"] == "mer2024" and set(fs.labels(DS)) == {"valence"}
    assert any("labels" in w and "kept" in w for w in rep.warnings)
    assert fs.has_key(KeyName(DS, "manet"))
    fs2 = FeatureStore(tmp_path / "fs2.zarr", create=True)
    fs2.put_dataset(DS, src["ids"][::-1])
    with pytest.raises(StoreError, match="other ids"):
        import_mertools(fs2, tmp_path / "mer", DS, catalog=catalog)
