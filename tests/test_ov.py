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
from featstore.ov_llm import (DESCRIBE_INSTRUCTIONS, EXTRACT_PROMPT, LocalLLM, describe_and_extract,
                              describe_prompt, extract_labels, parse_answer)
from trainer.ov import (crossfit_thresholds, evaluate, random_predictions, read_label_csv, read_reference,
                        threshold_predictions, write_label_csv)

# the published MER-OV reference (../shared/fixtures/mer2024-ov); a copy ships in tests/fixtures for clones
# that have no ../shared beside them (CI)
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mer2024-ov" / "ov_reference.json"
FIXTURE = _SHARED if _SHARED.is_file() else Path(__file__).resolve().parent / "fixtures" / "mer2024-ov" / "ov_reference.json"
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
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"samples": [{"name": "s1", "truth": ["sad"], "predicted": "['sad'",
                                            "synonym_groups": []}]}), encoding="utf-8")
    with pytest.raises(FeatstoreError, match=r"ref.json samples\[0\] \(sample s1\): malformed 'predicted' list"):
        read_reference(ref)


def test_synonym_groups_from_mertools_npy_folder_and_json(tmp_path: Path) -> None:
    from featstore.label_lists import parse_groups
    from trainer.ov import read_groups

    assert parse_groups("[['Joyful', 'happy'], ['don't believe', 'doubt'], []]") == [["Joyful", "happy"],
                                                                                      ["don't believe", "doubt"]]
    assert parse_groups('[["a", "b"]]') == parse_groups("[[a, b]]") == [["a", "b"]]
    for bad, why in (("[[a], b]", "expected a group"), ("[[a]", "never closes"), ("a, b", "list of lists")):
        with pytest.raises(LabelListError, match=why):
            parse_groups(bad)
    folder = tmp_path / "openset-synonym"          # MERTools: one <sample>.npy holding the LLM's answer string
    folder.mkdir()
    np.save(folder / "s1.npy", np.array("[['joyful', 'happy'], ['sad']]"))
    np.save(folder / "s2.npy", np.array("[['don't believe', 'doubt']]"))
    groups = read_groups(folder)
    assert groups == {"s1": [["joyful", "happy"], ["sad"]], "s2": [["don't believe", "doubt"]]}
    (tmp_path / "g.json").write_text(json.dumps({"s1": "[['joyful', 'happy'], ['sad']]", "s2": [["don't believe", "doubt"]]}))
    assert read_groups(tmp_path / "g.json") == groups
    rep = evaluate({"s1": ["Happy", "sad"], "s2": ["doubt"]}, {"s1": ["joyful"], "s2": ["don't believe", "angry"]},
                   groups)
    assert (rep.accuracy, rep.recall) == pytest.approx(((1 + 0.5) / 2, (0.5 + 1) / 2))
    np.save(folder / "s3.npy", np.array("[['joyful', 'happy'"))
    with pytest.raises(FeatstoreError, match=r"s3.npy: malformed synonym groups"):
        read_groups(folder)


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
    seen: list[str] = []

    def flaky(prompts):  # noqa: ANN001, ANN202
        seen.extend(prompts)
        if any("boom" in p for p in prompts):
            raise RuntimeError("CUDA out of memory")
        return ["He speaks softly and seems calm." if p.endswith("in the video.") else "[calm]" for p in prompts]

    res = describe_and_extract(flaky, {"a": "all good", "b": "boom", "c": "", "d": ""}, {"a": "soft voice", "d": "sighs"})
    assert res.labels == {"a": ["calm"], "d": ["calm"]}
    assert res.failures["b"].startswith("generation failed: RuntimeError: CUDA out of memory")
    assert res.failures["c"] == "no subtitle and no clues to describe"
    # prompt assembly: MER2024 Table 2's instruction after the subtitle and clue parts (a part with no text left out)
    assert describe_prompt("all good", "soft voice") in seen
    assert describe_prompt("all good", "soft voice") == ("Subtitle content of this video: all good; Clues of this "
                                                         "video: soft voice; " + DESCRIBE_INSTRUCTIONS["video"])
    assert describe_prompt("", "sighs", "audio") == "Clues of the audio: sighs; " + DESCRIBE_INSTRUCTIONS["audio"]
    assert res.descriptions["a"] == "He speaks softly and seems calm."
    assert EXTRACT_PROMPT.format(description="He speaks softly and seems calm.") in seen
    with pytest.raises(FeatstoreError, match="unknown description prompt 'text'"):
        describe_prompt("x", "", "text")


LM_WORDS = "[ ] , : . happy sad angry calm the she he is a of clues emotion output input please".split()


def _save_lm(folder: Path, chain: dict[str, str] | None) -> Path:
    """A LLaMA-style causal LM (2 layers, 32-d) and a word-level tokenizer built here, saved like a hub folder.

    chain None: random weights. Else the weights are set so that the next token depends on the current one only
    (one-hot embeddings, attention and MLP outputs zeroed, lm_head a transition table; unlisted tokens -> </s>):
    greedy decoding then answers a known text, so the parser's output through the real pipeline can be asserted."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(LM_WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg)
    if chain is not None:
        with torch.no_grad():
            lm.model.embed_tokens.weight.zero_()
            lm.model.embed_tokens.weight[:, :len(vocab)] = torch.eye(len(vocab))
            for layer in lm.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            table = torch.zeros(len(vocab), len(vocab))
            table[2, :] = 1.0
            for a, b in chain.items():
                table[:, vocab[a]] = 0.0
                table[vocab[b], vocab[a]] = 1.0
            lm.lm_head.weight.zero_()
            lm.lm_head.weight[:, :len(vocab)] = table
    lm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """random: random weights; lister: after ':' (the extraction prompt's end) answers '[ happy , sad ]', after
    '.' (the description prompt's end) 'she is calm'; talker: after ':' answers 'she is calm' (not a list)."""
    chain = {"[": "happy", "happy": ",", ",": "sad", "sad": "]", ".": "she", "she": "is", "is": "calm"}
    return {"random": _save_lm(tmp_path_factory.mktemp("random"), None),
            "lister": _save_lm(tmp_path_factory.mktemp("lister"), {**chain, ":": "["}),
            "talker": _save_lm(tmp_path_factory.mktemp("talker"), {**chain, ":": "she"})}


def test_a_local_causal_lm_runs_the_pipeline(lms: dict[str, Path], tmp_path: Path) -> None:
    llm = LocalLLM.load(str(lms["random"]), max_new_tokens=6, batch_size=2)
    answers = llm.generate(["she is happy", "clues of emotion", "he is sad"])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert llm.generate(["she is happy"]) == answers[:1]                    # greedy: deterministic, batch-free
    (tmp_path / "d.csv").write_text("name,description\ns1,she is happy\ns2,he is sad\n", encoding="utf-8")
    out, fails = tmp_path / "ov.csv", tmp_path / "fail.csv"
    msg = trainer("ov-predict", "--model", str(lms["random"]), "--descriptions", str(tmp_path / "d.csv"),
                  "--out", str(out), "--max-new-tokens", "4", "--failures", str(fails))
    got = read_label_csv(out)
    assert list(got) == ["s1", "s2"] and "wrote 2 label lists" in msg
    with open(fails, encoding="utf-8") as f:
        failed = {r["name"]: r for r in csv.DictReader(f)}
    for name, row in failed.items():       # random weights: a failed answer is recorded with its reason and
        assert got[name] == [] and row["reason"]                   # the sample keeps an empty list, never lost
    assert f"{len(failed)} sample(s) failed" in " ".join(msg.split())

    # a model whose answer is known: the labels come out of generate -> decode -> strict parser
    trainer("ov-predict", "--model", str(lms["lister"]), "--descriptions", str(tmp_path / "d.csv"), "--out", str(out))
    assert read_label_csv(out) == {"s1": ["happy", "sad"], "s2": ["happy", "sad"]}
    (tmp_path / "s.csv").write_text("name,subtitle,clues\ns1,she is happy,calm\ns2,,\ns3,,a sigh\n", encoding="utf-8")
    msg = trainer("ov-predict", "--model", str(lms["lister"]), "--subtitles", str(tmp_path / "s.csv"), "--out",
                  str(out), "--save-descriptions", str(tmp_path / "desc.csv"), "--batch-size", "1")
    assert read_label_csv(out) == {"s1": ["happy", "sad"], "s2": [], "s3": ["happy", "sad"]}
    assert "1 sample(s) failed" in " ".join(msg.split()) and "s2: no subtitle and no clues" in msg
    with open(tmp_path / "desc.csv", encoding="utf-8") as f:
        assert {r["name"]: r["description"] for r in csv.DictReader(f)} == {"s1": "she is calm", "s3": "she is calm"}
    # MER2024's transcription file as input, restricted to (and ordered by) the MER-OV names
    (tmp_path / "tr.csv").write_text("name,chinese,english\nx1,你好,he is sad\ns1,好,she is happy\n", encoding="utf-8")
    (tmp_path / "names.csv").write_text("name,openset\ns9,[]\ns1,[]\n", encoding="utf-8")
    msg = trainer("ov-predict", "--model", str(lms["lister"]), "--subtitles", str(tmp_path / "tr.csv"), "--column",
                  "english", "--names", str(tmp_path / "names.csv"), "--out", str(out))
    assert list(read_label_csv(out).items()) == [("s9", []), ("s1", ["happy", "sad"])]
    assert "s9: no row in tr.csv" in msg
    # answers that are not lists: recorded per sample with the answer, the run completes
    msg = trainer("ov-predict", "--model", str(lms["talker"]), "--descriptions", str(tmp_path / "d.csv"), "--out",
                  str(out), "--failures", str(fails))
    assert read_label_csv(out) == {"s1": [], "s2": []} and "2 sample(s) failed" in " ".join(msg.split())
    with open(fails, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["answer"]) for r in rows] == [("s1", "she is calm"), ("s2", "she is calm")]
    assert all("does not start with a list" in r["reason"] for r in rows)

    err = trainer("ov-predict", "--model", str(tmp_path / "nowhere"), "--descriptions", str(tmp_path / "d.csv"),
                  "--out", str(out), code=1)
    assert "model folder not found" in err
    (tmp_path / "dup.csv").write_text("name,description\ns1,a\ns1,b\n", encoding="utf-8")
    assert "dup.csv line 3: sample s1 appears twice" in " ".join(trainer(
        "ov-predict", "--model", str(lms["lister"]), "--descriptions", str(tmp_path / "dup.csv"), "--out", str(out),
        code=1).split())


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
    test_row = int(np.flatnonzero(~fs.subsets("synth")["train"])[0])
    write_label_csv(tmp_path / "t.csv", {**{str(ids[i]): [classes[codes[i]]] for i in train},
                                         str(ids[test_row]): ["happy"], "no_truth": []})
    out = _json(trainer("ov-baseline", "--store", str(path), "--dataset", "synth", "--truth",
                             str(tmp_path / "t.csv"), "--audio", "audio-a", "--video", "video-v", "--epochs", "8",
                             "--folds", "cv3", "--out-dir", str(tmp_path / "ov"), "--json"))
    scores = {r["name"].split(" ")[0]: r["average"] for r in out["results"]}
    assert all(r["n_scored"] == 41 and r["empty_truth"] == ["no_truth"] for r in out["results"])
    assert out["results"][2]["missing_pred"] == [str(ids[test_row])]              # not trained: no out-of-fold row
    assert any("empty truth" in n and "no_truth" in n for n in out["notes"])
    assert any("no out-of-fold prediction" in n and str(ids[test_row]) in n for n in out["notes"])
    assert scores["empty"] == 0.0 and scores["classifier"] > scores["random"] + 0.2
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == [
        "synth-ov-classifier.csv", "synth-ov-empty.csv", "synth-ov-random.csv"]
