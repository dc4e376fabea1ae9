"""Family `opensmile`: eGeMAPS / ComParE / IS09-13 functionals (or a custom .conf) through the opensmile package.

The SMILExtract binary bundled with the `opensmile` package is under audEERING's research licence:
free for research and other non-commercial use only (the Python wrapper itself is MIT).
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

__all__ = ["OpenSmileEncoder", "build", "LICENCE_NOTE"]


class OpenSmileEncoder:
    """openSMILE functionals: float32 audio [T] in, float32 [B, 1, spec.dim] out.

    `encode` does not know sample ids, so it does not judge values: a row may hold NaN/Inf (openSMILE
    fills a too-short or degenerate segment with NaN). The caller (the build) checks
    `np.isfinite(out[i]).all()` per row and records a SampleError(id, "encode", ...) for a bad row.
    """

    def __init__(self, spec: EncoderSpec, smile: Any, config_path: str) -> None:
        self.spec = spec
        self.smile = smile
        self.sample_rate = int(spec.input.get("sample_rate", 16000))
        self.config_path = config_path
        self._provenance: dict[str, Any] | None = None

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Functionals of each waveform (float32 mono [T] at spec.input.sample_rate) -> [B, 1, D].

        Samples are clipped to [-1, 1) first: openSMILE converts to int16 and would wrap around.
        An empty waveform gives a NaN row (see the class docstring: the caller checks finiteness).
        """
        out = np.full((len(batch), 1, self.spec.dim), np.nan, dtype=np.float32)
        for i, x in enumerate(batch):
            signal = np.asarray(x, dtype=np.float32)
            if signal.ndim == 2 and 1 in signal.shape:
                signal = signal.reshape(-1)
            if signal.ndim != 1:
                raise ValueError(f"opensmile encoder: expected mono audio [T], got shape {signal.shape}")
            if signal.size == 0:
                continue
            signal = np.clip(signal, -1.0, 32767 / 32768)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # "Segment too short, filling with NaN": the caller checks rows
                values = np.asarray(self.smile.process_signal(signal, self.sample_rate).to_numpy(), dtype=np.float32)
            if values.shape != (1, self.spec.dim):
                raise FeatstoreError(f"encoder {self.spec.name}: openSMILE returned {values.shape[0]} rows x "
                                     f"{values.shape[1]} features; expected one functionals row of {self.spec.dim} "
                                     f"(is feature_level a functionals level?)")
            out[i, 0] = values[0]
        return out

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
