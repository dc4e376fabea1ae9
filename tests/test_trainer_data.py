"""trainer.data: features into memory once; masks for failed rows; train/test corruptions; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featstore.errors import BadValuesError, MissingKeyError, StoreError, UnknownNameError
from featstore.store import FeatureStore, KeyName
from trainer.data import load_features
from trainer.synthetic import make_store

DIMS = {"aud": ("audio", 6), "txt": ("text", 10), "vid": ("visual", 4)}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "s.zarr"
    make_store(p, n_train=40, n_test=12, dims=DIMS, corruptions=("clean", "noisy"), dtype="float16")
    return p


def test_loads_every_key_as_float32_with_labels_and_subsets(store_path: Path) -> None:
    fs = load_features(store_path, "synth", audio="aud", text=["txt"], video=["vid"])
    assert fs.n == 52 and [b.name for b in fs.branches] == ["aud", "txt", "vid"]
    f = fs.features["txt"]
    assert f.x.dtype == torch.float32 and f.x.shape == (52, 10) and f.x_test is f.x and f.modality == "text"
    raw = FeatureStore(store_path).read("synth", "txt")[:, 0, :].astype(np.float32)
    assert np.array_equal(f.x.numpy(), raw)
    assert fs.emotion.dtype == torch.int64 and fs.classes[:2] == ["neutral", "angry"] and fs.valence_name == "valence"
    assert set(fs.subsets) == {"train", "test1"} and fs.subsets["train"].sum() == 40
    assert fs.describe() == {"audio": ["aud/clean"], "text": ["txt/clean"], "visual": ["vid/clean"]}
    assert set(fs.spec_hashes()) == {"aud/clean", "txt/clean", "vid/clean"}
    assert bool(fs.complete().all())


def test_train_and_test_corruptions_are_independent(store_path: Path) -> None:
    fs = load_features(store_path, "synth", audio=["aud"], corruption="clean", test_corruption="noisy")
    f = fs.features["aud"]
    train, test = fs.subsets["train"], fs.subsets["test1"]
    st = FeatureStore(store_path)
    clean, noisy = st.read("synth", "aud", "clean")[:, 0].astype(np.float32), st.read("synth", "aud", "noisy")[:, 0].astype(np.float32)
    assert np.array_equal(f.x.numpy()[train], clean[train]) and np.array_equal(f.x_test.numpy()[test], noisy[test])
    assert f.avail[train].all() and f.avail_test[test].all()
    assert set(fs.spec_hashes()) == {"aud/clean", "aud/noisy"}


def test_rows_not_done_are_masked_zero_and_counted(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s.zarr", n_train=30, n_test=10, dims=DIMS)
    fa = st.open_key(KeyName("synth", "txt"))
    x = fa.read()
    valid = np.ones(40, bool)
    valid[[3, 35]] = False  # a training row and a test row whose extraction failed
    fa.write_rows(0, x.astype(np.float32), valid=valid)
    fs = load_features(st, "synth", audio=["aud"], text=["txt"])
    assert not fs.features["txt"].avail[3] and not fs.features["txt"].avail_test[35]
    assert float(fs.features["txt"].x[3].abs().sum()) == 0.0
    assert (~fs.complete()).sum() == 2 and any("1 training-role row" in w for w in fs.warnings)


def test_nan_in_a_done_row_names_the_sample(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s.zarr", n_train=30, n_test=10, dims=DIMS)
    fa = st.open_key(KeyName("synth", "vid"))
    fa.utt[7, 0, 2] = np.nan  # corrupted on disk behind the store's back
    with pytest.raises(BadValuesError, match=r"sample s00007 \(row 7\) has NaN/Inf"):
        load_features(st, "synth", video=["vid"])


def test_bad_names_and_missing_keys(store_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean txt"):
        load_features(store_path, "synth", text=["txtt"])
    with pytest.raises(UnknownNameError, match="unknown dataset 'synthh'.*synth"):
        load_features(store_path, "synthh", text=["txt"])
    with pytest.raises(MissingKeyError, match="featstore build --dataset synth --encoder hubert-large"):
        load_features(store_path, "synth", audio=["hubert-large"])  # a catalog encoder not built here
    with pytest.raises(MissingKeyError, match="--corruption blur"):
        load_features(store_path, "synth", video=["vid"], test_corruption="blur")
    with pytest.raises(StoreError, match="is a text encoder"):
        load_features(store_path, "synth", audio=["minilm-l6"])
    with pytest.raises(StoreError, match="no features chosen"):
        load_features(store_path, "synth")


def test_branch_layouts_concat_and_replicate(store_path: Path) -> None:
    fs = load_features(store_path, "synth", audio=["aud"], text=["txt", "txt"], concat=["text"])
    assert [b.parts for b in fs.branches] == [("aud",), ("txt", "txt#2")]
    rep = load_features(store_path, "synth", audio=["aud"]).replicate(3)
    assert [b.name for b in rep.branches] == ["aud", "aud#2", "aud#3"] and set(rep.features) == {"aud"}


def test_subsets_restrict_the_rows_loaded(store_path: Path) -> None:
    fs = load_features(store_path, "synth", audio=["aud"], subsets=["train"])
    assert fs.n == 40 and set(fs.subsets) == {"train"}


def test_a_corruption_applies_to_its_own_modality_only(tmp_path: Path) -> None:
    """Speech noise changes the audio features; visual features stay on their clean key (MERBench's noise tests)."""
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=40, n_test=20, dims={"a1": ("audio", 6), "v1": ("visual", 4)},
                       corruptions=("clean", "snr5"))
    fs = load_features(store, "synth", audio=["a1"], video=["v1"], test_corruption="snr5")
    assert fs.describe() == {"audio": ["a1/clean"], "visual": ["v1/clean"]}
    assert fs.features["a1"].test_key == "a1/snr5" and fs.features["v1"].test_key == "v1/clean"
    assert not torch.equal(fs.features["a1"].x_test, fs.features["a1"].x)
    assert fs.features["v1"].x_test is fs.features["v1"].x
    both = load_features(store, "synth", audio=["a1"], video=["v1"], corruption="snr5")
    assert both.describe() == {"audio": ["a1/snr5"], "visual": ["v1/clean"]}


def test_punctuation_corruptions_change_only_text_features(tmp_path: Path) -> None:
    """MERBench Table 13: punctuation removal is a text corruption; audio and video stay on their clean keys."""
    from trainer.synthetic import make_store

    store = make_store(tmp_path / "s.zarr", n_train=40, n_test=20, dims={"a1": ("audio", 6), "t1": ("text", 5)},
                       corruptions=("clean", "punc-e", "punc-all"))
    fs = load_features(store, "synth", audio=["a1"], text=["t1"], corruption="punc-all", test_corruption="punc-e")
    assert fs.describe() == {"audio": ["a1/clean"], "text": ["t1/punc-all"]}
    assert fs.features["t1"].test_key == "t1/punc-e" and fs.features["a1"].test_key == "a1/clean"


def test_synthetic_encoders_of_one_width_carry_their_own_vectors(tmp_path: Path) -> None:
    """A synthetic Top-N set needs N different encoders, not N copies of one (same modality, width, name length)."""
    make_store(tmp_path / "s.zarr", n_train=30, n_test=10, dims={f"audio-{i}": ("audio", 16) for i in range(3)})
    store = FeatureStore(tmp_path / "s.zarr")
    xs = [store.read("synth", f"audio-{i}") for i in range(3)]
    assert not np.array_equal(xs[0], xs[1]) and not np.array_equal(xs[1], xs[2])
    again = make_store(tmp_path / "t.zarr", n_train=30, n_test=10, dims={"audio-1": ("audio", 16)})
    assert np.array_equal(again.read("synth", "audio-1"), xs[1])      # an encoder's vectors depend on its name only
