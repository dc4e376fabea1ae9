"""Cross-corpus evaluation (MERBench Tables 19-20): train on one dataset, test on another over shared labels.

Both datasets' features are loaded with the same encoders and merged into one FeatureSet: the training
dataset's rows keep their subsets (so its folds are the usual ones); every row of the test dataset forms the
test split `<test dataset>` (and `<test dataset>:<subset>` for each of its subsets). Emotion names are mapped
to a common vocabulary (joy -> happy, anger -> angry, sadness -> sad, ...) and only the classes both datasets
have are kept; rows of other classes become unlabelled (neither trained on nor scored). Sentiment datasets are
compared on the sign, with each dataset's scale normalised to [-1, 1] (MOSI/MOSEI [-3, 3], SIMS [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from featstore.errors import FeatstoreError
from trainer.data import Feature, FeatureSet

SYNONYMS = {"joy": "happy", "happiness": "happy", "happy": "happy", "excited": "happy",
            "anger": "angry", "angry": "angry", "sadness": "sad", "sad": "sad", "neutral": "neutral",
            "surprise": "surprise", "surprised": "surprise", "fear": "fear", "fearful": "fear", "worried": "worried",
            "disgust": "disgust", "frustrated": "frustrated"}


def canonical(name: str) -> str:
    """The common name of an emotion class (joy -> happy, anger -> angry, ...)."""
    return SYNONYMS.get(name.lower(), name.lower())


def shared_classes(train: FeatureSet, test: FeatureSet) -> list[str]:
    """Common-vocabulary classes present in both datasets, in the training dataset's order."""
    b = {canonical(c) for c in test.classes}
    out = []
    for c in train.classes:
        k = canonical(c)
        if k in b and k not in out:
            out.append(k)
    return out


def _recode(fs: FeatureSet, classes: list[str]) -> torch.Tensor | None:
    if fs.emotion is None:
        return None
    pos = {c: i for i, c in enumerate(classes)}
    lut = np.array([pos.get(canonical(c), -1) for c in fs.classes] or [-1], np.int64)
    e = fs.emotion.numpy()
    return torch.from_numpy(np.where(e >= 0, lut[np.clip(e, 0, None)], -1))


def _scale(fs: FeatureSet) -> float:
    v = fs.valence.numpy() if fs.valence is not None else np.zeros(0)
    m = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
    return float(math.ceil(m)) if m > 1 else 1.0


def merge(train: FeatureSet, test: FeatureSet) -> FeatureSet:
    """One FeatureSet: `train`'s rows (its subsets and folds) plus `test`'s rows as test splits."""
    if train.sentiment != test.sentiment:
        raise FeatstoreError(f"{train.dataset} and {test.dataset}: one is scored on sentiment, the other on "
                             f"emotions; they share no labels")
    if list(train.features) != list(test.features):
        raise FeatstoreError(f"{train.dataset} and {test.dataset} must be loaded with the same encoders")
    classes: list[str] = []
    if not train.sentiment:
        classes = shared_classes(train, test)
        if not classes:
            raise FeatstoreError(f"{train.dataset} ({', '.join(train.classes)}) and {test.dataset} "
                                 f"({', '.join(test.classes)}) share no emotion labels")
    feats = {}
    for name, fa in train.features.items():
        fb = test.features[name]
        if fa.dim != fb.dim:
            raise FeatstoreError(f"feature {name}: {fa.dim}-d in {train.dataset}, {fb.dim}-d in {test.dataset}")
        x = torch.cat([fa.x, fb.x_test])
        feats[name] = Feature(name=name, encoder=fa.encoder, modality=fa.modality, corruption=fa.corruption,
                              test_corruption=f"{fb.test_corruption}@{test.dataset}", dim=fa.dim, x=x, x_test=x,
                              avail=torch.cat([fa.avail, torch.zeros(test.n, dtype=torch.bool)]),
                              avail_test=torch.cat([fa.avail_test, fb.avail_test]), spec_hash=fa.spec_hash,
                              test_spec_hash=fb.test_spec_hash, layers=fa.layers)
    n_a, n_b = train.n, test.n
    subsets = {k: np.concatenate([v, np.zeros(n_b, bool)]) for k, v in train.subsets.items()}
    subsets[test.dataset] = np.concatenate([np.zeros(n_a, bool), np.ones(n_b, bool)])
    for k, v in test.subsets.items():
        subsets[f"{test.dataset}:{k}"] = np.concatenate([np.zeros(n_a, bool), v])
    emotion = valence = None
    if classes:
        emotion = torch.cat([_recode(train, classes), _recode(test, classes)])
    if train.valence is not None and test.valence is not None and (train.sentiment or train.valence_name == test.valence_name):
        valence = torch.cat([train.valence / _scale(train), test.valence / _scale(test)]) if train.sentiment \
            else torch.cat([train.valence, test.valence])
    groups = None
    if train.groups is not None:
        groups = np.concatenate([train.groups, np.full(n_b, "", dtype=train.groups.dtype)])
    dropped = [c for c in train.classes if canonical(c) not in classes] if classes else []
    warnings = list(train.warnings) + ([f"classes not in {test.dataset}, left unlabelled: {', '.join(dropped)}"]
                                       if dropped else [])
    return dataclasses.replace(
        train, dataset=f"{train.dataset}->{test.dataset}", ids=np.concatenate([train.ids, test.ids]),
        rows=np.concatenate([train.rows, test.rows]), features=feats, emotion=emotion, classes=classes,
        valence=valence, subsets=subsets, groups=groups, warnings=warnings, extra_train=None)
