"""Family `opensmile`: eGeMAPS / ComParE / IS09-13 functionals (or a custom .conf) through the opensmile package.

The SMILExtract binary bundled with the `opensmile` package is under audEERING's research licence:
free for research and other non-commercial use only (the Python wrapper itself is MIT).

Frames: functionals are one vector per clip and have no frames. An entry at a low-level-descriptor level
(feature_level LowLevelDescriptors or LowLevelDescriptors_Deltas, e.g. `egemaps-lld`: eGeMAPS v02's 25
LLDs every 10 ms) is another feature set: its utterance vector is the mean of its LLD frames, and
`encode_frames` keeps the frames themselves.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import numpy as np

from featstore.catalog import EncoderSpec
from featstore.errors import FeatstoreError

LICENCE_NOTE = ("openSMILE binary: audEERING research licence -- free for research and other non-commercial "
                "use only; commercial use (including features in products) needs a licence from audEERING")

LLD_LEVELS = ("LowLevelDescriptors", "LowLevelDescriptors_Deltas")

__all__ = ["OpenSmileEncoder", "build", "LICENCE_NOTE", "frames_unavailable"]


def _is_lld(spec: EncoderSpec) -> bool:
    return spec.params.get("feature_level") in LLD_LEVELS


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """None for low-level-descriptor entries; functionals (one vector per clip) have no frames."""
    if _is_lld(spec):
        return None
    return ("openSMILE functionals are one vector per clip and have no frames (a low-level-descriptor entry "
            "such as egemaps-lld keeps LLD frames)")


class OpenSmileEncoder:
    """openSMILE functionals (or the mean of LLD frames): float32 audio [T] in, float32 [B, 1, spec.dim] out.

    `encode` does not know sample ids, so it does not judge values: a row may hold NaN/Inf (openSMILE
    fills a too-short or degenerate segment with NaN). The caller (the build) checks
    `np.isfinite(out[i]).all()` per row and records a SampleError(id, "encode", ...) for a bad row.
    """

    def __init__(self, spec: EncoderSpec, smile: Any, config_path: str) -> None:
        self.spec = spec
        self.smile = smile
        self.sample_rate = int(spec.input.get("sample_rate", 16000))
        self.config_path = config_path
        self.lld = _is_lld(spec)
        self._provenance: dict[str, Any] | None = None

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Functionals of each waveform (float32 mono [T] at spec.input.sample_rate) -> [B, 1, D].

        Samples are clipped to [-1, 1) first: openSMILE converts to int16 and would wrap around.
        An empty waveform gives a NaN row (see the class docstring: the caller checks finiteness).
        LLD entries: the mean over the clip's LLD frames.
        """
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """LLD entries: ([B, 1, D] as `encode`, per clip its LLD frames [T_i, D]; [0, D] for an empty clip)."""
        if not self.lld:
            raise FeatstoreError(f"encoder {self.spec.name}: {frames_unavailable(self.spec)}")
        out, frames = self._encode(batch, frames=True)
        return out, frames or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        out = np.full((len(batch), 1, self.spec.dim), np.nan, dtype=np.float32)
        seqs: list[np.ndarray] | None = [] if frames else None
        for i, x in enumerate(batch):
            signal = np.asarray(x, dtype=np.float32)
            if signal.ndim == 2 and 1 in signal.shape:
                signal = signal.reshape(-1)
            if signal.ndim != 1:
                raise ValueError(f"opensmile encoder: expected mono audio [T], got shape {signal.shape}")
            values = np.zeros((0, self.spec.dim), np.float32)
            if signal.size:
                signal = np.clip(signal, -1.0, 32767 / 32768)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # "Segment too short, filling with NaN": the caller checks rows
                    values = np.asarray(self.smile.process_signal(signal, self.sample_rate).to_numpy(), dtype=np.float32)
                if values.shape[1:] != (self.spec.dim,) or (not self.lld and len(values) != 1):
                    raise FeatstoreError(f"encoder {self.spec.name}: openSMILE returned {values.shape[0]} rows x "
                                         f"{values.shape[1]} features; expected {'LLD frames' if self.lld else 'one functionals row'} "
                                         f"of {self.spec.dim} (is feature_level a {'LLD' if self.lld else 'functionals'} level?)")
                if len(values):
                    out[i, 0] = values.mean(axis=0) if self.lld else values[0]
            if seqs is not None:
                seqs.append(values)
        return out, seqs

    def provenance(self) -> dict[str, Any]:
        """opensmile version, feature set/level, config file and its sha256, and the licence note."""
        if self._provenance is None:
            import opensmile
            with open(self.config_path, "rb") as f:
                config_sha = hashlib.sha256(f.read()).hexdigest()
            fs = self.smile.feature_set
            fl = self.smile.feature_level
            self._provenance = {
                "family": "opensmile",
                "opensmile": opensmile.__version__,
                "feature_set": getattr(fs, "name", str(fs)),
                "feature_level": getattr(fl, "name", str(fl)),
                "config": os.path.basename(self.config_path),
                "config_sha256": config_sha,
                "weights": f"opensmile {opensmile.__version__} config sha256:{config_sha}",
                "sample_rate": self.sample_rate,
                "n_features": int(self.smile.num_features),
                "licence": LICENCE_NOTE,
            }
        return dict(self._provenance)


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu") -> OpenSmileEncoder:
    """Build the openSMILE extractor for a catalog entry.

    spec.params: `feature_set` (an opensmile.FeatureSet name such as eGeMAPSv02, ComParE_2016,
    IS09) and `feature_level` (Functionals); or `config`, a path to a custom .conf written for the
    opensmile package (external source/sink template), with `feature_level` the name of its sink
    level (default "func"). `model`, when given, is such a .conf path and overrides params.config.
    `device` is ignored (openSMILE runs on CPU). Fails with a one-line FeatstoreError when the package
    is missing, a name is unknown, or the output dimension differs from spec.dim.
    """
    try:
        import opensmile
    except ImportError:
        raise FeatstoreError(f"encoder {spec.name} needs the opensmile package: pip install 'featstore[offline]' "
                             f"(openSMILE is free for research/non-commercial use only)") from None
    params = spec.params
    config = model or params.get("config")
    try:
        if config:
            config = os.path.abspath(os.path.expanduser(str(config)))
            if not os.path.isfile(config):
                raise FeatstoreError(f"encoder {spec.name}: openSMILE config file not found: {config}")
            level = params.get("feature_level", "func")
            level = opensmile.FeatureLevel[level].value if level in opensmile.FeatureLevel.__members__ else level
            smile = opensmile.Smile(feature_set=config, feature_level=level)
        else:
            set_name = params.get("feature_set")
            if set_name not in opensmile.FeatureSet.__members__:
                raise FeatstoreError(f"encoder {spec.name}: params.feature_set is {set_name!r}; expected one of "
                                     f"{', '.join(opensmile.FeatureSet.__members__)} (or params.config: a .conf path)")
            level_name = params.get("feature_level", "Functionals")
            if level_name not in opensmile.FeatureLevel.__members__:
                raise FeatstoreError(f"encoder {spec.name}: params.feature_level is {level_name!r}; expected one of "
                                     f"{', '.join(opensmile.FeatureLevel.__members__)}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # deprecation notes for legacy sets (eGeMAPS v01a, ...)
                smile = opensmile.Smile(feature_set=opensmile.FeatureSet[set_name],
                                        feature_level=opensmile.FeatureLevel[level_name])
    except FeatstoreError:
        raise
    except Exception as exc:  # opensmile raises RuntimeError/ValueError/OSError with multi-line text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FeatstoreError(f"encoder {spec.name}: openSMILE could not load its config: {first}") from exc
    if smile.num_features != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: openSMILE {getattr(smile.feature_set, 'name', smile.feature_set)} "
                             f"gives {smile.num_features} features but the catalog says dim {spec.dim}")
    return OpenSmileEncoder(spec, smile, smile.config_path)
