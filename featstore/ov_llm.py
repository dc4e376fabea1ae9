"""MER-OV with a local LLM: describe a clip from its subtitle and clues, then extract the emotion labels.

Two prompts, after the MER2024 paper:
- `describe_prompt` (the description step, MER2024 Table 2: the baseline MLLMs' instruction, worded as MERTools'
  MLLM scripts spell it, MER2025_Track23/*/main-video.py and Qwen-Audio/main-audio.py, with their
  "Subtitle content of this video: ...;" prefix). `DESCRIBE_INSTRUCTIONS` holds the video and the audio form.
  The paper runs it on an MLLM that sees the clip; a text-only causal LM sees the subtitle and whatever clues
  the user has (acoustic/visual descriptions from other tools, one line per clip), inserted as one more
  "Clues of this video: ...;" part before the instruction -- the only words that are ours.
- `EXTRACT_PROMPT` (label extraction from an emotion description, MER2024 Section 2.3; the paper's prompt,
  with its two worked examples as MERTools' few-shot GPT script gives them so that a small model answers in a
  list).
Any transformers causal LM runs them: a hub id or a local folder (`--model`), loaded like every featstore
model (featstore.encoders.hf_common.load_pretrained: local folder, else the HF cache, else the hub when
reachable; offline and uncached it fails at once naming `--model /path/to/folder`). Greedy decoding; the
tokenizer's chat template wraps the prompt when it has one.

The answer is read strictly (`parse_answer`): after an optional `Output:` it must start with one bracketed
list (featstore.label_lists.parse_list_prefix); anything else is a per-sample failure, recorded with the
answer's first words, and the run goes on. trainer/ only scores the resulting label lists (trainer.ov).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featstore.errors import FeatstoreError, UnknownNameError
from featstore.label_lists import LabelListError, named_rows, parse_list_prefix

EXTRACT_PROMPT = (
    "Please assume the role of an expert in the field of emotions. We provide clues that may be related to the "
    "emotions of the characters. Based on the provided clues, please identify the emotional states of the main "
    "character. Please separate different emotional categories with commas and output only the clearly "
    "identifiable emotional categories in a list format. If none are identified, please output an empty list. "
    "Input: We cannot recognize his emotional state; Output: [] "
    "Input: His emotional state is happy, sad, and angry; Output: [happy, sad, angry] "
    "Input: {description}; Output: ")

DESCRIBE_INSTRUCTIONS = {
    "video": ("As an expert in the field of emotions, please focus on the facial expressions, body movements, "
              "environment, subtitle content, etc., in the video to discern clues related to the emotions of the "
              "individual. Please provide a detailed description and ultimately predict the emotional state of the "
              "individual in the video."),
    "audio": ("As an expert in the field of emotions, please focus on the acoustic information and subtitle content "
              "in the audio to discern clues related to the emotions of the individual. Please provide a detailed "
              "description and ultimately predict the emotional state of the individual in the audio."),
}
SUBTITLE_PREFIX = {"video": "Subtitle content of this video: {subtitle}; ",
                   "audio": "Subtitle content of the audio: {subtitle}; "}
CLUES_PREFIX = {"video": "Clues of this video: {clues}; ", "audio": "Clues of the audio: {clues}; "}


def describe_prompt(subtitle: str, clues: str = "", modality: str = "video") -> str:
    """MER2024 Table 2's description prompt for one clip: [subtitle part] [clues part] instruction (a part is
    left out when its text is empty, as MERTools does for a clip without subtitle)."""
    if modality not in DESCRIBE_INSTRUCTIONS:
        raise UnknownNameError("description prompt", modality, list(DESCRIBE_INSTRUCTIONS))
    s, c = " ".join(str(subtitle or "").split()), " ".join(str(clues or "").split())
    return ((SUBTITLE_PREFIX[modality].format(subtitle=s) if s else "")
            + (CLUES_PREFIX[modality].format(clues=c) if c else "") + DESCRIBE_INSTRUCTIONS[modality])


@dataclass
class LLMResult:
    """Per sample: the labels read from the answer, or why it could not be read (the raw answers kept)."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


def read_inputs(path: str | Path, column: str, optional: Sequence[str] = ()) -> dict[str, dict[str, str]]:
    """{name: {column: text, optional column: text}} from a UTF-8 CSV with a `name` column (input of
    `trainer ov-predict`); a missing column, an empty or repeated name is an error naming the file and line."""
    header, rows = named_rows(path, "input file")
    if column not in header:
        raise FeatstoreError(f"{path}: no '{column}' column (found {', '.join(header) or 'no header'})")
    return {name: {c: row.get(c) or "" for c in (column, *optional) if c in header} for _, name, row in rows}


def write_failures(path: str | Path, result: LLMResult) -> int:
    """CSV (name, reason, answer) of the samples that gave no label list; returns their number."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "reason", "answer"])
        w.writerows((n, why, result.answers.get(n, "")) for n, why in result.failures.items())
    return len(result.failures)


def write_descriptions(path: str | Path, result: LLMResult, names: Sequence[str]) -> int:
    """CSV (name, description) of the generated descriptions, in `names` order (a --descriptions input)."""
    rows = [(n, result.descriptions[n]) for n in names if n in result.descriptions]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "description"])
        w.writerows(rows)
    return len(rows)


def parse_answer(answer: str) -> list[str]:
    """The label list an LLM answered: an optional leading 'Output:' then one bracketed list (what follows it
    is ignored); LabelListError when the answer does not start with a list."""
    text = answer.strip()
    for prefix in ("Output:", "output:", "OUTPUT:", "输出：", "输出:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    labels, _ = parse_list_prefix(text)
    return labels


class LocalLLM:
    """A transformers causal LM with its tokenizer: `generate(prompts) -> answers` (greedy, new tokens only)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", max_new_tokens: int = 64,
                 batch_size: int = 8, name: str = "") -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_new_tokens, self.batch_size, self.name = int(max_new_tokens), int(batch_size), name
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "left"          # decoder-only: pad on the left so answers start together

    @classmethod
    def load(cls, model: str, device: str = "cpu", dtype: str | None = None, trust_remote_code: bool = False,
             **kw: Any) -> "LocalLLM":
        """Load a causal LM by hub id or local folder (bf16 on CUDA unless `dtype` says otherwise)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from featstore.catalog import EncoderSpec
        from featstore.encoders.hf_common import load_pretrained

        spec = EncoderSpec(name="ov-llm", modality="text", family="llm", dim=0, model=model,
                           trust_remote_code=trust_remote_code)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            dtype or ("bfloat16" if str(device).startswith("cuda") else "float32"))
        if torch_dtype is None:
            raise FeatstoreError(f"unknown dtype '{dtype}' (float32, bfloat16 or float16)")
        tok = load_pretrained(AutoTokenizer, spec)
        lm = load_pretrained(AutoModelForCausalLM, spec, dtype=torch_dtype).to(device).eval()
        return cls(lm, tok, device=device, name=model, **kw)

    def _wrap(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers to `prompts`, in batches; only the newly generated text of each."""
        import torch

        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = [self._wrap(p) for p in prompts[i:i + self.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            enc.pop("token_type_ids", None)
            with torch.inference_mode():
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out


def _generate_each(generate: Callable[[Sequence[str]], list[str]], prompts: Mapping[str, str],
                   failures: dict[str, str]) -> dict[str, str]:
    """{sample: answer}: all prompts at once, else (one failed) one at a time, each failure recorded."""
    names = list(prompts)
    if not names:
        return {}
    try:
        return dict(zip(names, generate([prompts[n] for n in names])))
    except Exception as exc:  # noqa: BLE001 - retried one by one below
        if len(names) == 1:
            failures[names[0]] = _generation_failure(exc)
            return {}
    out = {}
    for n in names:
        try:
            out[n] = generate([prompts[n]])[0]
        except Exception as exc:  # noqa: BLE001 - recorded per sample; the run goes on
            failures[n] = _generation_failure(exc)
    return out


def _generation_failure(exc: BaseException) -> str:
    return f"generation failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _run(generate: Callable[[Sequence[str]], list[str]], prompts: Mapping[str, str], result: LLMResult) -> None:
    for n, a in _generate_each(generate, prompts, result.failures).items():
        result.answers[n] = a
        try:
            result.labels[n] = parse_answer(a)
        except LabelListError as exc:
            result.failures[n] = f"the answer is not a label list ({exc})"


def extract_labels(llm: LocalLLM | Callable[[Sequence[str]], list[str]], descriptions: Mapping[str, str]
                   ) -> LLMResult:
    """Labels from emotion descriptions ({sample: text}) with EXTRACT_PROMPT; failures recorded per sample."""
    generate = llm.generate if isinstance(llm, LocalLLM) else llm
    result = LLMResult(descriptions=dict(descriptions))
    empty = [n for n, d in descriptions.items() if not str(d).strip()]
    for n in empty:
        result.failures[n] = "empty description"
    _run(generate, {n: EXTRACT_PROMPT.format(description=" ".join(str(d).split()))
                    for n, d in descriptions.items() if n not in empty}, result)
    return result


def describe_and_extract(llm: LocalLLM | Callable[[Sequence[str]], list[str]], subtitles: Mapping[str, str],
                         clues: Mapping[str, str] | None = None, modality: str = "video") -> LLMResult:
    """Two passes: describe_prompt over each clip's subtitle and clues (`modality`: the video or the audio form of
    MER2024 Table 2), then EXTRACT_PROMPT over the descriptions. A clip with neither subtitle nor clues is a
    failure (nothing to describe)."""
    generate = llm.generate if isinstance(llm, LocalLLM) else llm
    clues = clues or {}
    prompts, failed = {}, {}
    for n, sub in subtitles.items():
        if not str(sub or "").strip() and not str(clues.get(n) or "").strip():
            failed[n] = "no subtitle and no clues to describe"
            continue
        prompts[n] = describe_prompt(sub, clues.get(n) or "", modality)
    descriptions = _generate_each(generate, prompts, failed)
    result = extract_labels(generate, descriptions)
    result.failures.update(failed)
    return result


__all__ = ["EXTRACT_PROMPT", "DESCRIBE_INSTRUCTIONS", "describe_prompt", "LLMResult", "LocalLLM", "parse_answer", "extract_labels",
           "describe_and_extract", "read_inputs", "write_failures", "write_descriptions"]
