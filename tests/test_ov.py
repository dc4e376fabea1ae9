"""MER-OV (issue #8): label parsing, set-level scores on the published reference, bad input, offline grouping,
local-LLM label extraction (tiny random causal LM), the Empty / Random / classifier baselines and their CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import trainer_app
from featstore.errors import FeatstoreError
from featstore.label_lists import LabelListError, parse_labels
from featstore.ov_llm import EXTRACT_PROMPT, LocalLLM, describe_and_extract, extract_labels, parse_answer
from trainer.ov import (crossfit_thresholds, evaluate, random_predictions, read_label_csv, read_reference,
                        threshold_predictions, write_label_csv)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mer2024-ov" / "ov_reference.json"
runner = CliRunner()


def _json(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def trainer(*args: str, code: int = 0) -> str:
    res = runner.invoke(trainer_app, list(args))
    assert res.exit_code == code, res.output
    return res.output


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("cell,labels", [
    ("['sad', 'tired']", ["sad", "tired"]),
    ('["sad", "tired"]', ["sad", "tired"]),
    ("[happy, sad, angry]", ["happy", "sad", "angry"]),
    ("sad, tired", ["sad", "tired"]),
    ("['don't believe', 'doubt']", ["don't believe", "doubt"]),         # not valid Python: still one label
    ('["don\'t believe", \'doubt\']', ["don't believe", "doubt"]),
    ("['开心', '愉快']", ["开心", "愉快"]),
    ("开心，愉快、激动", ["开心", "愉快", "激动"]),
    ("[]", []), ("", []), (None, []),
    ("['Sad', 'sad', ' tired ']", ["Sad", "sad", "tired"]),             # case kept; the scorer lower-cases
])
def test_label_lists_in_every_spelling(cell, labels) -> None:  # noqa: ANN001
    assert parse_labels(cell) == labels


@pytest.mark.parametrize("cell,why", [("['sad', 'tired'", "never closes"), ("[['sad']]", "nested|not a string"),
                                      ("{'a': 1}", "not a list"), ("['sad'] and more", "after the list")])
def test_malformed_label_lists_say_why(cell: str, why: str) -> None:
    with pytest.raises(LabelListError, match=why):
        parse_labels(cell)


# ---------------------------------------------------------------------------------------------- scoring
def test_reference_scores_to_four_decimals() -> None:
    truth, pred, groups = read_reference(FIXTURE)
    rep = evaluate(truth, pred, groups)
    assert (round(rep.accuracy, 4), round(rep.recall, 4), round(rep.average, 4)) == (0.5803, 0.4963, 0.5383)
    assert rep.n_scored == 332
    assert "don't believe" in truth["sample_00001774"] or "don't believe" in pred["sample_00001774"]
    plain = evaluate(truth, pred)                                           # grouping matters
    assert plain.average < rep.average - 0.2


def test_bad_input_is_scored_or_listed_never_a_crash() -> None:
    truth = {"a": ["Happy", "joyful"], "b": [], "c": ["sad"], "d": ["angry"]}
    pred = {"a": ["happy"], "b": ["sad"], "c": [], "x": ["sad"]}
    groups = {"a": [["happy", "joyful"]]}
    rep = evaluate(truth, pred, groups)
    assert rep.empty_truth == ["b"] and rep.missing_pred == ["d"] and rep.extra_pred == ["x"]
    assert set(rep.empty_pred) == {"c", "d"} and rep.n_scored == 3
    assert rep.accuracy == pytest.approx(1 / 3) and rep.recall == pytest.approx(1 / 3)   # a: 1/1, c and d: 0
    assert any("empty truth" in n and "b" in n for n in rep.notes())
    assert np.isnan(evaluate({"b": []}, {}).average)                     # nothing to score: NaN, no division


def test_csv_round_trip_and_a_malformed_line_is_named(tmp_path: Path) -> None:
    labels = {"s1": ["don't believe", "doubt"], "s2": [], "s3": ["开心"]}
    path = tmp_path / "p.csv"
    assert write_label_csv(path, labels) == 3
    assert read_label_csv(path) == labels
    path.write_text("name,openset\ns1,['sad']\ns2,\"['sad', 'tired'\"\n", encoding="utf-8")
    with pytest.raises(FeatstoreError, match=r"p.csv line 3 \(sample s2\): malformed label list"):
        read_label_csv(path)
    path.write_text("name,openset\ns1,['sad']\ns1,['happy']\n", encoding="utf-8")
    with pytest.raises(FeatstoreError, match="line 3: sample s1 appears twice"):
        read_label_csv(path)


def test_ov_eval_cli_on_the_reference(tmp_path: Path) -> None:
    truth, pred, _ = read_reference(FIXTURE)
    write_label_csv(tmp_path / "t.csv", truth)
    write_label_csv(tmp_path / "p.csv", {n: v for n, v in list(pred.items())[:-1]})       # one sample missing
    out = json.loads(trainer("ov-eval", "--truth", str(tmp_path / "t.csv"), "--pred", str(tmp_path / "p.csv"),
                             "--groups", str(FIXTURE), "--json"))
    r = out["results"][0]
    assert r["n_scored"] == 332 and len(r["missing_pred"]) == 1 and r["average"] < 0.5383
    write_label_csv(tmp_path / "p.csv", pred)
    table = trainer("ov-eval", "--truth", str(FIXTURE), "--pred", str(tmp_path / "p.csv"), "--groups", str(FIXTURE))
    assert "0.5803" in table and "0.4963" in table and "0.5383" in table
    assert "--groups FILE or --group-by" in trainer("ov-eval", "--truth", str(FIXTURE), "--pred", str(tmp_path / "p.csv"),
                                                    "--groups", str(FIXTURE), "--group-by", "embeddings", code=1)
    assert "unknown grouping 'embedding'" in trainer("ov-eval", "--truth", str(FIXTURE), "--pred",
                                                     str(tmp_path / "p.csv"), "--group-by", "embedding", code=1)


# ---------------------------------------------------------------------------------------------- offline grouping
def test_offline_grouping_merges_synonyms_with_the_shipped_sentence_encoder(tmp_path: Path) -> None:
    from featstore.ov_grouping import LabelEmbedder, cluster_labels, group_samples

    emb = LabelEmbedder.load()
    groups = group_samples({"a": ["happy", "angry"]}, {"a": ["Happiness", "furious", "sad"]}, emb)["a"]
    as_sets = [set(g) for g in groups]
    assert {"happy", "happiness"} in [s & {"happy", "happiness"} for s in as_sets]
    assert not any({"happy", "angry"} <= s or {"happy", "sad"} <= s for s in as_sets)
    v = np.eye(3)
    assert cluster_labels(["x", "y", "z"], v, threshold=0.5) == [["x"], ["y"], ["z"]]
    assert cluster_labels(["x", "y"], np.array([[1.0, 0.0], [1.0, 0.0]]), threshold=0.99) == [["x", "y"]]
    truth = {"s": ["happy"]}
    write_label_csv(tmp_path / "t.csv", truth)
    write_label_csv(tmp_path / "p.csv", {"s": ["happiness"]})
    exact = json.loads(trainer("ov-eval", "--truth", str(tmp_path / "t.csv"), "--pred", str(tmp_path / "p.csv"), "--json"))
    grouped = json.loads(trainer("ov-eval", "--truth", str(tmp_path / "t.csv"), "--pred", str(tmp_path / "p.csv"),
                                 "--group-by", "embeddings", "--json"))
    assert exact["results"][0]["average"] == 0.0 and grouped["results"][0]["average"] == 1.0
    assert grouped["grouping"].startswith("offline: minilm-l6")


# ---------------------------------------------------------------------------------------------- LLM extraction
def test_answers_are_read_strictly_and_failures_recorded() -> None:
    assert parse_answer(" Output: [happy, 'don't believe'] because ...") == ["happy", "don't believe"]
    assert parse_answer("[]") == []
    with pytest.raises(LabelListError, match="does not start with a list"):
        parse_answer("He seems happy.")
    seen: list[str] = []

    def fake(prompts):  # noqa: ANN001, ANN202 - stands in for the model
        seen.extend(prompts)
        return ["[happy, surprised]" if "smiles" in p else "I cannot tell." for p in prompts]

    res = extract_labels(fake, {"s1": "She smiles widely", "s2": "unclear", "s3": "  "})
    assert res.labels == {"s1": ["happy", "surprised"]}
    assert "not a label list" in res.failures["s2"] and res.failures["s3"] == "empty description"
    assert seen[0] == EXTRACT_PROMPT.format(description="She smiles widely")


def test_one_failing_generation_does_not_stop_the_others() -> None:
    def flaky(prompts):  # noqa: ANN001, ANN202
        if any("boom" in p for p in prompts):
            raise RuntimeError("CUDA out of memory")
        return ["[calm]"] * len(prompts)

    res = describe_and_extract(flaky, {"a": "all good", "b": "boom", "c": ""}, {"a": "soft voice"})
    assert res.labels == {"a": ["calm"]}
    assert res.failures["b"].startswith("generation failed: RuntimeError: CUDA out of memory")
    assert res.failures["c"] == "no subtitle and no clues to describe"
    assert "soft voice" in next(iter(res.descriptions.values())) or res.descriptions["a"] == "[calm]"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised LLaMA-style causal LM and a word-level tokenizer, saved like a hub folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("lm")
    words = "[ ] , happy sad angry calm the she he is a of clues emotion output input please".split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    tok.save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_a_local_causal_lm_runs_the_pipeline(tiny_lm: Path, tmp_path: Path) -> None:
    llm = LocalLLM.load(str(tiny_lm), max_new_tokens=6, batch_size=2)
    answers = llm.generate(["she is happy", "clues of emotion", "he is sad"])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert llm.generate(["she is happy"]) == answers[:1]                    # greedy: deterministic, batch-free
    (tmp_path / "d.csv").write_text("name,description\ns1,she is happy\ns2,he is sad\n", encoding="utf-8")
    out, fails = tmp_path / "ov.csv", tmp_path / "fail.csv"
    msg = trainer("ov-predict", "--model", str(tiny_lm), "--descriptions", str(tmp_path / "d.csv"), "--out", str(out),
                  "--max-new-tokens", "4", "--failures", str(fails))
    got = read_label_csv(out)
    assert list(got) == ["s1", "s2"] and "wrote 2 label lists" in msg
    with open(fails, encoding="utf-8") as f:
        failed = {r["name"]: r for r in csv.DictReader(f)}
    for name, row in failed.items():       # random weights: a failed answer is recorded with its reason and
        assert got[name] == [] and row["reason"]                   # the sample keeps an empty list, never lost
    assert f"{len(failed)} sample(s) failed" in " ".join(msg.split())
    (tmp_path / "s.csv").write_text("name,subtitle,clues\ns1,she is happy,calm\n", encoding="utf-8")
    trainer("ov-predict", "--model", str(tiny_lm), "--subtitles", str(tmp_path / "s.csv"), "--out", str(out),
            "--max-new-tokens", "4")
    assert list(read_label_csv(out)) == ["s1"]
    err = trainer("ov-predict", "--model", str(tmp_path / "nowhere"), "--descriptions", str(tmp_path / "d.csv"),
                  "--out", str(out), code=1)
    assert "model folder not found" in err


# ---------------------------------------------------------------------------------------------- baselines
def test_random_and_threshold_baselines() -> None:
    names = [f"s{i}" for i in range(50)]
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    a, b = random_predictions(names, classes, seed=1), random_predictions(names, classes, seed=1)
    assert a == b and all(len(v) == 1 and v[0] in classes for v in a.values())
    assert len({v[0] for v in a.values()}) > 3
    with pytest.raises(FeatstoreError, match="k must be in"):
        random_predictions(names, classes, k=7)
    p = {"x": np.array([0.1, 0.5, 0.4, 0, 0, 0]), "y": np.array([0.9, 0.02, 0.02, 0.02, 0.02, 0.02])}
    assert threshold_predictions(p, classes, 0.3) == {"x": ["angry", "happy"], "y": ["neutral"]}
    assert threshold_predictions(p, classes, 0.95) == {"x": ["angry"], "y": ["neutral"]}   # the top class always


def test_crossfit_thresholds_never_tune_on_the_scored_half() -> None:
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    truth, probs = {}, {}
    for i in range(40):
        t = sorted(rng.choice(3, size=2, replace=False))
        truth[f"s{i}"] = [classes[j] for j in t]
        p = np.full(3, 0.1)
        p[t] = 0.45
        probs[f"s{i}"] = p / p.sum()
    preds, chosen = crossfit_thresholds(truth, probs, classes)
    assert len(chosen) == 2 and all(0.05 <= c <= 0.4 for c in chosen)      # two labels clear it
    assert evaluate(truth, preds).average > 0.95
    with pytest.raises(FeatstoreError, match="out-of-fold probabilities"):
        crossfit_thresholds({"zz": ["a"]}, probs, classes)


def test_ov_baseline_cli_on_a_synthetic_store(tmp_path: Path) -> None:
    from featstore.store import FeatureStore
    from trainer.synthetic import make_store

    path = tmp_path / "s.zarr"
    make_store(path, n_train=90, n_test=20, signal=3.0)
    fs = FeatureStore(path, read_only=True)
    ids = fs.ids("synth")
    codes, classes = fs.labels("synth")["emotion"]
    train = np.flatnonzero(fs.subsets("synth")["train"])[:40]
    write_label_csv(tmp_path / "t.csv", {str(ids[i]): [classes[codes[i]]] for i in train})
    out = _json(trainer("ov-baseline", "--store", str(path), "--dataset", "synth", "--truth",
                             str(tmp_path / "t.csv"), "--audio", "audio-a", "--video", "video-v", "--epochs", "8",
                             "--folds", "cv3", "--out-dir", str(tmp_path / "ov"), "--json"))
    scores = {r["name"].split(" ")[0]: r["average"] for r in out["results"]}
    assert scores["empty"] == 0.0 and scores["classifier"] > scores["random"] + 0.2
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == [
        "synth-ov-classifier.csv", "synth-ov-empty.csv", "synth-ov-random.csv"]
