"""The `csv` adapter: any folder of clips described by one CSV (ids, paths, subtitles, labels, splits, groups)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from featstore.catalog import load_catalog
from featstore.datasets import load_index
from featstore.datasets import csv as csv_adapter
from featstore.errors import FeatstoreError

HEADER = "id,path,subtitle,emotion,valence,split,group\n"


def _write(root: Path, body: str, header: str = HEADER, raw: bytes = b"") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "clips").mkdir(exist_ok=True)
    for name in ("a.mp4", "b.mp4"):
        (root / "clips" / name).write_bytes(b"\0")
    (root / "labels.csv").write_bytes((header + body).encode("utf-8") + raw)
    return root


def test_reads_ids_media_text_labels_splits_and_groups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write(tmp_path / "corpus", "a,clips/a.mp4,Hello there,happy,1.5,train,s1\n"
                                       "b,clips/b.mp4,,sad,,test,s2\n"
                                       "c,clips/c.mp4,Where is it,,-0.5,train,s1\n")
    with caplog.at_level(logging.WARNING):
        idx = load_index("csv", root)
    assert idx.ids == ["a", "b", "c"]
    assert idx.media[0] == str((root / "clips" / "a.mp4").resolve()) and idx.media[2] is None
    assert "1 of 3 clips missing (first: c)" in caplog.text
    assert idx.text == ["Hello there", None, "Where is it"]
    assert idx.label_classes["emotion"] == ["happy", "sad"]             # the catalog lists none: from the file
    assert idx.labels["emotion"].tolist() == [0, 1, -1]
    assert np.isnan(idx.labels["valence"][1]) and idx.labels["valence"][2] == pytest.approx(-0.5)
    assert {k: v.tolist() for k, v in idx.subsets.items()} == {"test": [False, True, False], "train": [True, False, True]}
    assert idx.groups.tolist() == ["s1", "s2", "s1"]
    assert load_index("csv", root / "labels.csv").ids == idx.ids        # the CSV itself works as the root


def test_minimal_csv_and_bad_rows(tmp_path: Path) -> None:
    idx = load_index("csv", _write(tmp_path / "min", "x\ny\n", header="id\n"))
    assert idx.ids == ["x", "y"] and idx.labels == {} and idx.subsets == {} and idx.groups is None
    with pytest.raises(FeatstoreError, match=r"line 3: duplicate id 'a'"):
        load_index("csv", _write(tmp_path / "dup", "a,,,,,,\na,,,,,,\n"))
    with pytest.raises(FeatstoreError, match=r"lacks column 'id'"):
        load_index("csv", _write(tmp_path / "noid", "a\n", header="name\n"))
    with pytest.raises(FeatstoreError, match=r"line 2: valence 'high' is not a number"):
        load_index("csv", _write(tmp_path / "val", "a,,,happy,high,,\n"))
    with pytest.raises(FeatstoreError, match=r"no labels.csv"):
        load_index("csv", tmp_path / "nowhere")


def test_unknown_emotions_are_listed_when_the_catalog_fixes_the_classes(tmp_path: Path) -> None:
    root = _write(tmp_path / "c", "a,,,joy,,,\nb,,,angry,,,\nc,,,bored,,,\n")
    spec = load_catalog().dataset("demo")                              # a label space: neutral..surprise
    with pytest.raises(FeatstoreError, match=r"emotions not in the catalog's label space: bored, joy") as err:
        csv_adapter.load(root, spec)
    assert "\n" not in str(err.value)


def test_a_subtitle_that_is_not_utf8_is_a_per_sample_text_error(tmp_path: Path) -> None:
    root = _write(tmp_path / "u", "a,clips/a.mp4,fine,happy,,train,\n", raw=b"b,clips/b.mp4,caf\xe9,sad,,train,\n")
    idx = load_index("csv", root)
    assert idx.text == ["fine", None] and idx.text_errors == {1: "subtitle is not valid UTF-8"}


def test_a_text_only_csv_corpus_builds_with_an_offline_encoder(tmp_path: Path) -> None:
    from featstore.build import BuildOptions, build
    from featstore.store import FeatureStore

    root = _write(tmp_path / "t", "a,,I am so happy today,happy,,train,\nb,,,sad,,train,\nc,,This is awful,sad,,test,\n")
    store = FeatureStore(tmp_path / "s.zarr", create=True)
    report = build(store, "csv", "minilm-l6", root=root, options=BuildOptions(rows_per_chunk=2))
    assert report.written == 2 and [f["id"] for f in report.failed] == ["b"]
    x = store.read("csv", "minilm-l6")
    assert x.shape[0] == 3 and np.abs(x[0]).sum() > 0


def test_an_input_variant_column_builds_its_own_key(tmp_path: Path) -> None:
    """`subtitle@lang-eng` gives the lang-eng variant: `featstore build --corruption lang-eng` encodes it."""
    from featstore.build import BuildOptions, build
    from featstore.store import FeatureStore, KeyName

    root = _write(tmp_path / "v", "a,,我很高兴,happy,,train,,I am happy\nb,,太糟糕了,sad,,test,,\n",
                  header="id,path,subtitle,emotion,valence,split,group,subtitle@lang-eng\n")
    idx = load_index("csv", root)
    assert idx.variants == {"lang-eng": {"text": ["I am happy", None]}}
    store = FeatureStore(tmp_path / "s.zarr", create=True)
    opts = BuildOptions(rows_per_chunk=2)
    build(store, "csv", "minilm-l6", root=root, options=opts)
    rep = build(store, "csv", "minilm-l6", "lang-eng", options=opts)
    assert rep.written == 1 and [f["id"] for f in rep.failed] == ["b"]          # no English subtitle for b
    zh, en = store.read("csv", "minilm-l6"), store.read("csv", "minilm-l6", "lang-eng")
    assert not np.array_equal(zh[0], en[0])
    assert store.open_key(KeyName("csv", "minilm-l6", "lang-eng")).done_mask().tolist() == [True, False]
    with pytest.raises(FeatstoreError, match="provides none"):
        build(store, "csv", "egemaps", "tts", options=opts)
