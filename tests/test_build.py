"""featstore.build: partitioned extraction into the store, resume, per-sample failures, provenance."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from featstore import build as build_mod
from featstore.build import BuildOptions, build, make_batches
from featstore.catalog import load_catalog, parse_catalog
from featstore.errors import FeatstoreError, LeaseError, SpecMismatchError
from featstore.store import FeatureStore, KeyName

OPTS = BuildOptions(rows_per_chunk=4, batch_size=4)


def _rewrite_subtitle(corpus: Path, row: int, text: str) -> str:
    path = corpus / "labels.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    rows[row]["subtitle"] = text
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows[row]["name"]


def test_build_egemaps_fills_every_row_with_provenance(store: FeatureStore, demo_corpus: Path) -> None:
    report = build(store, "demo", "egemaps", root=demo_corpus, options=OPTS)
    assert report.ok and report.written == 12 and report.partitions == 3
    x = store.read("demo", "egemaps")
    assert x.shape == (12, 1, 88) and x.dtype == np.float32 and np.isfinite(x).all()
    assert len(np.unique(x[:, 0, :], axis=0)) == 12  # every clip gets its own vector
    attrs = store.open_key(KeyName("demo", "egemaps")).attrs
    assert attrs["spec"]["encoder"]["params"]["feature_set"] == "eGeMAPSv02"
    assert "opensmile" in attrs["provenance"]["packages"] and attrs["spec_hash"]
    assert store.dataset_attrs("demo")["source_root"] == str(demo_corpus.resolve())
    # labels and subsets come from the adapter
    codes, classes = store.labels("demo")["emotion"]
    assert classes == ["neutral", "angry", "happy", "sad", "worried", "surprise"] and set(codes) == set(range(6))


def test_rerun_does_only_what_is_missing(store: FeatureStore, demo_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(store, "demo", "egemaps", root=demo_corpus, options=OPTS)
    first = store.read("demo", "egemaps").copy()
    calls: list[tuple[int, int]] = []
    real = build_mod.run_partition
    monkeypatch.setattr(build_mod, "run_partition", lambda fa, enc, idx, s, e, *a, **k: calls.append((s, e)) or real(fa, enc, idx, s, e, *a, **k))
    report = build(store, "demo", "egemaps", options=OPTS)  # root remembered in the store
    assert report.written == 0 and report.already_done == 12 and calls == []
    np.testing.assert_array_equal(store.read("demo", "egemaps"), first)


def test_crash_mid_build_then_rerun_gives_identical_array(tmp_path: Path, demo_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = FeatureStore(tmp_path / "ref.zarr", create=True)
    build(ref, "demo", "egemaps", root=demo_corpus, options=OPTS)
    crashed = FeatureStore(tmp_path / "crash.zarr", create=True)
    real = build_mod.run_partition
    seen = []

    def dying(fa, enc, idx, s, e, *a, **k):  # noqa: ANN001, ANN202
        if seen:
            raise KeyboardInterrupt  # the process dies during the second partition
        seen.append(s)
        return real(fa, enc, idx, s, e, *a, **k)

    monkeypatch.setattr(build_mod, "run_partition", dying)
    with pytest.raises(KeyboardInterrupt):
        build(crashed, "demo", "egemaps", root=demo_corpus, options=OPTS)
    assert crashed.open_key(KeyName("demo", "egemaps")).done_mask().sum() == 4
    monkeypatch.setattr(build_mod, "run_partition", real)
    report = build(crashed, "demo", "egemaps", options=OPTS)
    assert report.written == 8 and report.already_done == 4
    a, b = ref.open_key(KeyName("demo", "egemaps")), crashed.open_key(KeyName("demo", "egemaps"))
    np.testing.assert_array_equal(a.utt[:], b.utt[:])
    np.testing.assert_array_equal(a.done[:], b.done[:])


def test_bad_clips_are_recorded_and_the_build_goes_on(store: FeatureStore, corpus_copy: Path) -> None:
    clips = sorted((corpus_copy / "clips").glob("*.mp4"))
    clips[1].write_bytes(b"")                                    # 0-byte file
    data = clips[5].read_bytes()
    clips[5].write_bytes(data[: len(data) // 3])                 # truncated mp4
    clips[9].unlink()                                            # missing file
    report = build(store, "demo", "egemaps", root=corpus_copy, options=OPTS)
    failed = {r["id"]: r for r in report.failed}
    assert set(failed) == {clips[1].stem, clips[5].stem, clips[9].stem}
    assert all(r["stage"] == "decode" for r in failed.values())
    assert "0-byte" in failed[clips[1].stem]["message"] or "empty" in failed[clips[1].stem]["message"]
    assert "missing" in failed[clips[9].stem]["message"] or "no such file" in failed[clips[9].stem]["message"].lower()
    fa = store.open_key(KeyName("demo", "egemaps"))
    done = fa.done_mask()
    assert done.sum() == 9 and not done[[1, 5, 9]].any()
    assert np.isfinite(fa.read()[done]).all()
    # a rerun does not retry recorded failures; --retry-failed does (and they fail again)
    assert build(store, "demo", "egemaps", options=OPTS).written == 0
    again = build(store, "demo", "egemaps", options=BuildOptions(rows_per_chunk=4, retry_failed=True))
    assert {r["id"] for r in again.failed} == set(failed) and again.written == 9


def test_text_encoder_records_empty_subtitles(store: FeatureStore, corpus_copy: Path) -> None:
    bad = _rewrite_subtitle(corpus_copy, 2, "   ")
    report = build(store, "demo", "minilm-l6", root=corpus_copy, options=OPTS)
    assert [(r["id"], r["stage"]) for r in report.failed] == [(bad, "text")]
    x = store.read("demo", "minilm-l6")
    assert x.shape == (12, 1, 384) and x.dtype == np.float16
    done = store.open_key(KeyName("demo", "minilm-l6")).done_mask()
    np.testing.assert_allclose(np.linalg.norm(x[done, 0].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_resume_with_another_spec_is_refused(store: FeatureStore, demo_corpus: Path) -> None:
    build(store, "demo", "egemaps", root=demo_corpus, options=OPTS)
    raw = load_catalog()
    import dataclasses
    changed = dataclasses.replace(raw.encoders["egemaps"], params={"feature_set": "eGeMAPSv01b", "feature_level": "Functionals"})
    cat = dataclasses.replace(raw, encoders={**raw.encoders, "egemaps": changed})
    with pytest.raises(SpecMismatchError, match="refusing to mix"):
        build(store, "demo", "egemaps", options=OPTS, catalog=cat)
    report = build(store, "demo", "egemaps", options=BuildOptions(rows_per_chunk=4, overwrite=True), catalog=cat)
    assert report.written == 12
    assert store.open_key(KeyName("demo", "egemaps")).attrs["spec"]["encoder"]["params"]["feature_set"] == "eGeMAPSv01b"


def test_second_build_of_the_same_key_is_refused_while_one_runs(store: FeatureStore, demo_corpus: Path) -> None:
    build(store, "demo", "egemaps", root=demo_corpus, options=OPTS)
    with store.lease(KeyName("demo", "egemaps")):
        with pytest.raises(LeaseError, match="locked"):
            build(store, "demo", "egemaps", options=OPTS)


def test_unknown_dataset_root_and_modality_mismatch(store: FeatureStore) -> None:
    with pytest.raises(FeatstoreError, match="pass --root"):
        build(store, "demo", "egemaps")
    with pytest.raises(FeatstoreError, match="changes visual input"):
        build(store, "demo", "egemaps", corruption="blur")


def test_make_batches_buckets_by_length_and_caps_padding() -> None:
    lengths = [5, 100, 7, 98, 6, 99, 50]
    batches = make_batches(lengths, batch_size=3, max_units=300)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 300
    assert [sorted(lengths[i] for i in b) for b in batches][0] == [5, 6, 7]  # short clips travel together


class _RecordingEncoder:
    """An audio 'encoder' that records, for each batch, its clips' lengths and how many clips had been decoded."""

    def __init__(self, decoded: list[str]) -> None:
        self.spec = load_catalog().encoder("egemaps")
        self.device = "cpu"
        self.decoded, self.calls = decoded, []

    def encode(self, batch: list[np.ndarray]) -> np.ndarray:
        self.calls.append(([len(x) for x in batch], len(self.decoded)))
        return np.ones((len(batch), self.spec.n_stored_layers, self.spec.dim), np.float32)


def test_decoding_overlaps_encoding_in_batches_planned_from_metadata(demo_corpus: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from featstore import media
    from featstore.datasets import load_index

    index = load_index("demo", demo_corpus, load_catalog())
    decoded: list[str] = []
    real = build_mod.prepare_input
    monkeypatch.setattr(build_mod, "prepare_input", lambda enc, idx, r, c=None: decoded.append(idx.ids[r]) or real(enc, idx, r, c))
    enc = _RecordingEncoder(decoded)
    rows = list(range(len(index.ids)))
    planned = [build_mod.planned_length(enc.spec, index, r) for r in rows]
    for r in rows:      # metadata lengths are the decoded lengths, give or take an AAC frame
        assert abs(planned[r] - len(media.decode_audio(index.media[r], index.ids[r]))) <= 2048
    out = build_mod.encode_rows(enc, index, rows, BuildOptions(batch_size=2, max_batch_seconds=1e6, decode_workers=1))
    assert out.valid.all() and not out.records
    # the first batch is encoded while later clips are still waiting to be decoded (at most 2 batches ahead)
    assert enc.calls[0][1] < len(rows) and max(seen for _, seen in enc.calls[:2]) <= 8
    # batches are the metadata lengths bucketed shortest first, two clips each
    lengths = [n for sizes, _ in enc.calls for n in sizes]
    assert [len(sizes) for sizes, _ in enc.calls] == [2] * (len(rows) // 2)
    order = sorted(rows, key=lambda r: planned[r])
    decoded_lengths = [len(media.decode_audio(index.media[r], index.ids[r])) for r in order]
    assert lengths == decoded_lengths


def test_audio_batches_hold_one_clip_on_a_cpu_unless_asked(demo_corpus: Path) -> None:
    from featstore.datasets import load_index

    index = load_index("demo", demo_corpus, load_catalog())
    assert BuildOptions().audio_cap("cpu") == 0.0 and BuildOptions().audio_cap("cuda:1") == 160.0
    assert BuildOptions(max_batch_seconds=40).audio_cap("cpu") == 40.0
    enc = _RecordingEncoder([])
    build_mod.encode_rows(enc, index, range(6), BuildOptions(batch_size=4))
    assert [len(sizes) for sizes, _ in enc.calls] == [1] * 6
    enc.device = "cuda"
    enc.calls.clear()
    build_mod.encode_rows(enc, index, range(6), BuildOptions(batch_size=4))
    assert sorted(len(sizes) for sizes, _ in enc.calls) == [2, 4]


def test_noise_corruption_is_its_own_key_with_drawn_params(store: FeatureStore, demo_corpus: Path) -> None:
    build(store, "demo", "egemaps", root=demo_corpus, options=OPTS)
    report = build(store, "demo", "egemaps", "snr5-10", options=OPTS)
    assert report.ok and report.written == 12
    clean, noisy = store.read("demo", "egemaps"), store.read("demo", "egemaps", "snr5-10")
    assert not np.allclose(clean, noisy)
    fa = store.open_key(KeyName("demo", "egemaps", "snr5-10"))
    drawn = fa.drawn_params()
    assert set(drawn) == set(store.ids("demo"))
    assert all(5 <= d["snr_db"] <= 10 for d in drawn.values())
    assert fa.attrs["spec"]["corruption"]["params"]["snr_db"] == [5, 10]
    assert fa.attrs["spec_hash"] != store.open_key(KeyName("demo", "egemaps")).attrs["spec_hash"]
    # deterministic per (seed, sample id): a second store gets the same values
    other = FeatureStore(store.path + "-2", create=True)
    build(other, "demo", "egemaps", "snr5-10", root=demo_corpus, options=OPTS)
    np.testing.assert_array_equal(other.read("demo", "egemaps", "snr5-10"), noisy)


def test_punctuation_removal_changes_text_features(store: FeatureStore, demo_corpus: Path) -> None:
    build(store, "demo", "minilm-l6", root=demo_corpus, options=OPTS)
    build(store, "demo", "minilm-l6", "punc-all", options=OPTS)
    drawn = store.open_key(KeyName("demo", "minilm-l6", "punc-all")).drawn_params()
    assert sum(d["removed"] for d in drawn.values()) >= 12  # every demo subtitle ends with punctuation
    a, b = store.read("demo", "minilm-l6"), store.read("demo", "minilm-l6", "punc-all")
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_variant_corruptions_are_not_computed(store: FeatureStore, demo_corpus: Path) -> None:
    with pytest.raises(FeatstoreError, match="input variant, and the demo release .* provides none"):
        build(store, "demo", "minilm-l6", "lang-eng", root=demo_corpus)


def test_visual_encoder_with_face_crop_and_blur(store: FeatureStore, demo_corpus: Path) -> None:
    clean = build(store, "demo", "fer-cnn", root=demo_corpus, options=OPTS)
    blur = build(store, "demo", "fer-cnn", "blur", options=OPTS)
    assert all(r["stage"] == "face" for r in clean.failed + blur.failed)  # the only legitimate failure here
    assert clean.written >= 10 and blur.written >= 10
    drawn = store.open_key(KeyName("demo", "fer-cnn", "blur")).drawn_params()
    assert {d["factor"] for d in drawn.values()} <= {1, 2, 4} and len({d["factor"] for d in drawn.values()}) > 1
    a, b = store.read("demo", "fer-cnn"), store.read("demo", "fer-cnn", "blur")
    both = store.open_key(KeyName("demo", "fer-cnn")).done_mask() & store.open_key(KeyName("demo", "fer-cnn", "blur")).done_mask()
    factor = np.array([drawn.get(i, {}).get("factor", 0) for i in store.ids("demo")])
    # r = 1 leaves the frames unchanged: same features; r > 1 changes them
    np.testing.assert_array_equal(a[both & (factor == 1)], b[both & (factor == 1)])
    assert not np.allclose(a[both & (factor > 1)], b[both & (factor > 1)])
