"""Open-vocabulary label lists (MER-OV): parse one cell, write one cell, keep them in a store label.

A label list arrives in many spellings; `parse_labels` reads them all into a list of strings:
- Python list literals, as MERTools writes them: `['sad', 'tired']`, `["don't believe", 'doubt']`;
- JSON lists: `["sad", "tired"]`;
- bracketed items without quotes, as LLMs answer: `[happy, sad, angry]`;
- comma-separated text: `sad, tired`, with optional quotes around items;
- Chinese labels and separators: `['开心', '愉快']`, `开心，愉快`, `开心、愉快` (full-width commas, the
  enumeration comma, semicolons and newlines separate too; full-width brackets ［］ count as brackets).
A quote only closes an item when the next non-blank character ends the list or separates items, so an
apostrophe inside a label (`'don't believe'`, even though that is not valid Python) stays in the label.
Items are stripped, empty items dropped and repeats kept once (first occurrence), case preserved.
Anything that cannot be one flat list of strings -- an unterminated bracket or quote, a nested list, a
number, a JSON object -- raises LabelListError with the cause; callers add the file, line and sample.

In a store (FeatureStore.put_dataset keeps categorical int16 codes with class names, or floats) a label
list column is the categorical label `openset`: each distinct list is one class whose name is the list as
compact JSON (`encode_label_lists` / `decode_label_lists`); code -1 = the sample has no list.
"""

from __future__ import annotations

import ast
import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError

OPENSET_LABEL = "openset"                # the store label (and MERTools' CSV column) holding label lists
SEPARATORS = frozenset(",，、;；\n")
QUOTE_PAIRS = {"'": "'", '"': '"', "‘": "’", "“": "”", "「": "」", "『": "』"}
OPEN_BRACKETS, CLOSE_BRACKETS = "[［", "]］"
MAX_CLASSES = 32767                      # distinct lists an int16 categorical label can hold

__all__ = ["LabelListError", "parse_labels", "parse_list_prefix", "parse_groups", "format_labels", "encode_label_lists",
           "decode_label_lists", "OPENSET_LABEL"]


class LabelListError(FeatstoreError, ValueError):
    """A cell or answer that is not one flat list of labels; the message says why."""


def _clean(items: Iterable[Any]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise LabelListError(f"item {item!r} is not a string")
        label = " ".join(item.split())          # trim, and collapse inner runs of blanks
        if label and label not in seen:
            seen.add(label)
            out.append(label)
    return out


def _scan_items(text: str, start: int, bracketed: bool) -> tuple[list[str], int]:
    """Items of text[start:] up to the list's closing bracket (bracketed) or the end of the text; returns
    (items, index just past the list). Quote-aware, see the module docstring."""
    items: list[str] = []
    i, n = start, len(text)

    def at_boundary(j: int) -> bool:            # after a closing quote: only blanks, then a separator or the end
        while j < n and text[j] in " \t\r":
            j += 1
        return j >= n or text[j] in SEPARATORS or (bracketed and text[j] in CLOSE_BRACKETS)

    while True:
        while i < n and text[i] in " \t\r":
            i += 1
        if i >= n:
            if bracketed:
                raise LabelListError("the list opens with '[' but never closes")
            return items, i
        ch = text[i]
        if bracketed and ch in CLOSE_BRACKETS:
            return items, i + 1
        if ch in SEPARATORS:
            i += 1
            continue
        if ch in OPEN_BRACKETS:
            raise LabelListError("a nested list (labels must be a flat list)")
        if ch in QUOTE_PAIRS:
            close = QUOTE_PAIRS[ch]
            j = i + 1
            while True:
                j = text.find(close, j)
                if j < 0:
                    raise LabelListError(f"a quote {ch} that never closes (at '{text[i:i + 30]}')")
                if at_boundary(j + 1):
                    break
                j += 1
            items.append(text[i + 1:j])
            i = j + 1
            continue
        j = i
        while j < n and text[j] not in SEPARATORS and not (bracketed and text[j] in CLOSE_BRACKETS):
            if text[j] in OPEN_BRACKETS:
                raise LabelListError("a nested list (labels must be a flat list)")
            j += 1
        items.append(text[i:j])
        i = j


def _literal(text: str) -> list[Any] | None:
    """The list a JSON or Python literal spells, or None when it is neither (then the scanner reads it)."""
    for reader in (json.loads, ast.literal_eval):
        try:
            value = reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list):
            if any(isinstance(v, (list, tuple, dict)) for v in value):
                raise LabelListError("a nested list (labels must be a flat list)")
            return value
        return None
    return None


def parse_labels(value: Any) -> list[str]:
    """One cell (or a list) -> its labels; None, NaN, '' and '[]' are the empty list. See the module docstring."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        return _clean(value)
    text = str(value).strip()
    if not text:
        return []
    if text[0] in OPEN_BRACKETS:
        if text[0] == "[" and text[-1] == "]":
            literal = _literal(text)
            if literal is not None:
                return _clean(literal)
        items, stop = _scan_items(text, 1, True)
        if text[stop:].strip():
            raise LabelListError(f"text after the list's closing bracket: '{text[stop:].strip()[:30]}'")
        return _clean(items)
    if text[0] in "{(":
        raise LabelListError(f"not a list: '{text[:30]}'")
    items, _ = _scan_items(text, 0, False)
    return _clean(items)


def parse_list_prefix(text: str) -> tuple[list[str], str]:
    """(labels, the rest) of a text that must *begin* with a bracketed list (a strict reader of LLM answers).

    Leading blanks are skipped; the list is everything up to its closing bracket (quote-aware); what follows
    is returned untouched. A text that does not start with '[' raises LabelListError.
    """
    body = text.lstrip()
    if not body or body[0] not in OPEN_BRACKETS:
        shown = " ".join(body.split())[:40]
        raise LabelListError(f"the answer does not start with a list: '{shown}'" if shown else "the answer is empty")
    _, stop = _scan_items(body, 1, True)
    return parse_labels(body[:stop]), body[stop:]


def parse_groups(value: Any) -> list[list[str]]:
    """A list of label lists (synonym groups, as the challenge's LLM grouping step answers them:
    `[['joyful', 'happy'], ['doubt']]`, JSON alike, quotes inside labels as in parse_labels) -> groups, each
    cleaned like parse_labels, empty groups dropped. Anything else raises LabelListError."""
    if isinstance(value, (list, tuple)):
        if not all(isinstance(g, (list, tuple)) for g in value):
            raise LabelListError("synonym groups must be a list of lists")
        return [g for g in (_clean(g) for g in value) if g]
    text = "" if value is None else str(value).strip()
    if not text or text[0] not in OPEN_BRACKETS:
        raise LabelListError(f"synonym groups must be a list of lists, got '{text[:30]}'")
    for reader in (json.loads, ast.literal_eval):
        try:
            literal = reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(literal, list):
            return parse_groups(literal)
    groups: list[list[str]] = []
    i, n = 1, len(text)
    while True:
        while i < n and (text[i] in " \t\r" or text[i] in SEPARATORS):
            i += 1
        if i >= n:
            raise LabelListError("the list of groups opens with '[' but never closes")
        if text[i] in CLOSE_BRACKETS:
            break
        if text[i] not in OPEN_BRACKETS:
            raise LabelListError(f"expected a group '[...]' at '{text[i:i + 30]}'")
        items, i = _scan_items(text, i + 1, True)
        if (group := _clean(items)):
            groups.append(group)
    if text[i + 1:].strip():
        raise LabelListError(f"text after the list of groups: '{text[i + 1:].strip()[:30]}'")
    return groups


def named_rows(path: str | Path, what: str = "file") -> tuple[list[str], list[tuple[int, str, dict[str, str]]]]:
    """(header, [(line, name, row)]) of a UTF-8 CSV keyed by a `name` column (MER-OV label and input files);
    a missing file or name column, an empty or repeated name is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FeatstoreError(f"no {what} {path}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "name" not in header:
            raise FeatstoreError(f"{path}: no 'name' column (found {', '.join(header) or 'no header'})")
        out: list[tuple[int, str, dict[str, str]]] = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            name = (row.get("name") or "").strip()
            if not name:
                raise FeatstoreError(f"{path} line {line}: empty name")
            if name in seen:
                raise FeatstoreError(f"{path} line {line}: sample {name} appears twice")
            seen.add(name)
            out.append((line, name, row))
    return header, out


def format_labels(labels: Sequence[str]) -> str:
    """The Python-list spelling MERTools writes (check-openset.csv): `['sad', "don't believe"]`."""
    return repr([str(x) for x in labels])


def encode_label_lists(lists: Sequence[Sequence[str] | None]) -> tuple[np.ndarray, list[str]]:
    """(int16 codes [N], classes) for a store label: None -> -1, each distinct list one class (compact JSON)."""
    keys = [None if x is None else json.dumps(list(x), ensure_ascii=False, separators=(",", ":")) for x in lists]
    classes = sorted({k for k in keys if k is not None})
    if len(classes) > MAX_CLASSES:
        raise FeatstoreError(f"{len(classes)} distinct label lists do not fit one int16 store label "
                             f"(at most {MAX_CLASSES})")
    code = {k: i for i, k in enumerate(classes)}
    return np.asarray([-1 if k is None else code[k] for k in keys], np.int16), classes


def decode_label_lists(codes: np.ndarray, classes: Sequence[str]) -> list[list[str] | None]:
    """The inverse of encode_label_lists: one list per row (None where the code is -1)."""
    lists = [json.loads(c) for c in classes]
    return [None if int(c) < 0 else list(lists[int(c)]) for c in np.asarray(codes)]
