"""trainer.search and trainer.grid: the space, Top-N sets, ranking from the database, resumable grids, Dask."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.errors import FeatstoreError, MissingKeyError
from featstore.store import FeatureStore
from trainer.data import load_features
from trainer.grid import feature_identity, run_grid, run_rank, topn_sets
from trainer.protocol import Protocol
from trainer.results import ResultsDB
from trainer.search import SPACE, parse_modalities, parse_topn, points, ranking, trials

DIMS = {"a1": ("audio", 12), "a2": ("audio", 10), "t1": ("text", 14), "v1": ("visual", 8), "v2": ("visual", 6)}
PROTO = Protocol(epochs=3, folds="cv3")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    from trainer.synthetic import make_store

    # a1 and v2 carry more signal than a2 and v1: the ranking must find that
    return make_store(tmp_path_factory.mktemp("grid") / "s.zarr", n_train=150, n_test=40, dims=DIMS,
                      signal=[2.0, 0.2, 1.0, 0.2, 2.0])


def test_trials_enumerate_a_small_space_and_sample_a_large_one() -> None:
    assert len(points()) == 24 and trials(50) == points() and trials(24) == points()
    some = trials(7, seed=3)
    assert len(some) == 7 and len({tuple(sorted(c.items())) for c in some}) == 7
    assert some == trials(7, seed=3) and some != trials(7, seed=4)
    assert all(c in points() for c in some) and set(SPACE) == {"hidden", "lr", "dropout"}
    with pytest.raises(FeatstoreError, match="at least 1"):
        trials(0)


def test_topn_and_modality_parsing() -> None:
    assert parse_topn("1-6") == [1, 2, 3, 4, 5, 6] and parse_topn("1,3,5") == [1, 3, 5] and parse_topn("2") == [2]
    assert parse_modalities("AV,at,VT,AVT") == [("audio", "video"), ("audio", "text"), ("text", "video"),
                                                 ("audio", "text", "video")]
    for bad in ("0-2", "3-1", "x"):
        with pytest.raises(FeatstoreError, match="--topn"):
            parse_topn(bad)
    with pytest.raises(FeatstoreError, match="unknown letter"):
        parse_modalities("AX")


def test_topn_sets_skip_repeats_and_note_short_modalities() -> None:
    notes: list[str] = []
    sets = topn_sets({"audio": ["a1", "a2"], "video": ["v2"]}, [1, 2, 3], [("audio", "video")], notes)
    assert [s[1] for s in sets] == [{"audio": ["a1"], "video": ["v2"]}, {"audio": ["a1", "a2"], "video": ["v2"]}]
    assert any("top-3" in n and "skipped" in n for n in notes)


def test_feature_identity_matches_the_loaded_feature_set(synth: FeatureStore) -> None:
    chosen = {"audio": ["a1", "a2"], "video": ["v1"]}
    describe, hashes = feature_identity(synth, "synth", chosen, "clean", None)
    fs = load_features(synth, "synth", **chosen)
    assert describe == fs.describe() and hashes == fs.spec_hashes()
    with pytest.raises(MissingKeyError, match="featstore build"):
        feature_identity(synth, "synth", {"audio": ["a1"]}, "snr5", None)


def test_rank_orders_encoders_by_their_signal_and_resumes(synth: FeatureStore, tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    rep, order = run_rank(synth, db, "synth", PROTO, n_trials=2)
    assert rep.trained == 5 * 2 and rep.skipped == 0
    assert [r.encoder for r in order["audio"]] == ["a1", "a2"] and [r.encoder for r in order["video"]] == ["v2", "v1"]
    assert all(r.trials == 2 and r.seeds == 1 for lst in order.values() for r in lst)
    n = db.count()
    rep2, order2 = run_rank(synth, db, "synth", PROTO, n_trials=2)
    assert rep2.trained == 0 and rep2.skipped == 10 and db.count() == n and order2 == order
    # the ranking is the database's: recompute the audio winner's CV WAF from its rows
    best = order["audio"][0]
    rows = [r for r in db.rows("split = 'cv' AND fold = -1 AND fusion = 'mlp'")
            if r["features"] == {"audio": ["a1/clean"]} and r["hyper"] == best.hyper]
    assert len(rows) == 1 and rows[0]["waf"] == pytest.approx(best.cv_waf)
    assert ranking(db, "synth", rank_by="test")["audio"][0].test_waf == pytest.approx(best.test_waf)


def test_interrupted_grid_resumes_without_loss_or_duplicates(synth: FeatureStore, tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    run_rank(synth, db, "synth", PROTO, n_trials=1)
    kw = dict(topn=[1, 2], combos=[("audio", "video")], n_trials=3)

    class Stop(Exception):
        pass

    def stop_after_first(event: str, info: dict) -> None:
        if event == "trials":
            raise Stop

    with pytest.raises(Stop):
        run_grid(synth, db, "synth", PROTO, progress=stop_after_first, **kw)
    first = {(r["config_hash"], r["fold"], r["seed"], r["split"]): r["waf"] for r in db.rows("fusion = 'attention'")}
    assert first and len({k[0] for k in first}) == 3            # one feature set (3 configs) recorded
    rep = run_grid(synth, db, "synth", PROTO, **kw)
    assert rep.skipped == 3 and rep.trained == 3
    rows = db.rows("fusion = 'attention'")
    keys = [(r["config_hash"], r["fold"], r["seed"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)) and len({k[0] for k in keys}) == 6
    assert all(r["waf"] == first[k] for r, k in zip(rows, keys) if k in first)      # nothing rewritten
    # a fresh database gives the interrupted trials the same numbers (deterministic per trial)
    db2 = ResultsDB(tmp_path / "r2.sqlite")
    run_rank(synth, db2, "synth", PROTO, n_trials=1)
    run_grid(synth, db2, "synth", PROTO, **kw)
    again = {(r["config_hash"], r["fold"], r["seed"], r["split"]): r["waf"] for r in db2.rows("fusion = 'attention'")}
    assert again == {(r["config_hash"], r["fold"], r["seed"], r["split"]): r["waf"] for r in rows}


def test_grid_with_rank_from_another_dataset_and_missing_ranking(synth: FeatureStore, tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    with pytest.raises(FeatstoreError, match="no ranking of dataset other"):
        run_grid(synth, db, "synth", PROTO, topn=[1], combos=[("audio", "text")], rank_from="other")


def test_grid_on_a_two_worker_cluster_equals_the_local_grid(synth: FeatureStore, tmp_path: Path) -> None:
    from featstore.distributed import connect

    kw = dict(topn=[1, 2], combos=[("audio", "video")], n_trials=2, rank_trials=1)
    local = ResultsDB(tmp_path / "local.sqlite")
    run_grid(synth, local, "synth", PROTO, **kw)
    dist = ResultsDB(tmp_path / "dist.sqlite")
    with connect(workers=2) as client:
        rep = run_grid(synth, dist, "synth", PROTO, client=client, **kw)
    assert rep.trained == 4

    def table(db: ResultsDB) -> dict:
        return {(r["config_hash"], r["fold"], r["seed"], r["split"]): (r["acc"], r["waf"], r["best_epoch"])
                for r in db.rows()}

    assert table(dist) == table(local) and len(table(local)) > 0


def test_model_options_join_every_trial_of_a_grid(synth: FeatureStore, tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "r.sqlite")
    kw = dict(topn=[1], combos=[("audio", "video")], n_trials=2, rank_trials=1)
    plain = run_grid(synth, db, "synth", PROTO, **kw)
    soft = run_grid(synth, db, "synth", PROTO, model_options={"softmax": True}, **kw)
    assert plain.trained == soft.trained == 2                      # new trials, not skipped as done
    hypers = [r["hyper"] for r in db.rows("fusion = 'attention' AND fold = -1 AND split = 'cv'")]
    assert sum(1 for h in hypers if h.get("softmax") is True) == 2 and len(hypers) == 4
