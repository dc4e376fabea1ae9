"""Exception types: every failure a user can cause has a one-line message naming what and why."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatstoreError(Exception):
    """Base class for errors that the CLI prints as one line (no traceback)."""


class CatalogError(FeatstoreError):
    """catalog.yaml is malformed: the message names the entry and the field."""


class UnknownNameError(FeatstoreError, KeyError):
    """A name that is not in the catalog (or store); the message lists the closest matches."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        if not close:  # fall back to substring matches, useful for 'hubert' -> 'hubert-large'
            close = [c for c in choices if name.lower() in c.lower()][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(choices[:12])}{' …' if len(choices) > 12 else ''}"
        super().__init__(f"unknown {kind} '{name}'{hint}")
        self.kind, self.name, self.suggestions = kind, name, close

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class StoreError(FeatstoreError):
    """The store is missing, malformed, or a request does not fit its layout."""


class MissingKeyError(StoreError, KeyError):
    """No features for a (dataset, encoder, corruption) key."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingFramesError(MissingKeyError):
    """A key holds utterance vectors only, and a sequence model asked for its frame-level features."""


class LeaseError(StoreError):
    """Another process holds the build/import lease of this key."""


class SpecMismatchError(StoreError):
    """Resuming a key with an encoder/corruption spec that differs from the stored one."""


class BadValuesError(StoreError):
    """NaN/Inf or wrongly shaped values offered to the store; names the sample."""


class SampleError(FeatstoreError):
    """One sample failed at one stage (decode, corrupt, encode, ...); recorded, never fatal to a build."""

    def __init__(self, sample_id: str, stage: str, cause: str) -> None:
        super().__init__(f"{sample_id}: {stage}: {cause}")
        self.sample_id, self.stage, self.cause = sample_id, stage, cause
