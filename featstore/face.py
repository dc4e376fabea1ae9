"""Offline face cropping: OpenCV Haar cascades find the largest face per frame; square crops with a margin.

Why Haar (opencv-python-headless 4.x) and not MTCNN (facenet-pytorch)
- Install: the cascades ship inside the opencv-python-headless wheel (`cv2.data.haarcascades`;
  4.x ships them, 5.0 ships none, hence the `<5` pin); no torch dependency. facenet-pytorch ships
  MTCNN weights but its metadata pins an old CUDA torch (so it needs `--no-deps`) and its detector
  imports `torchvision.ops.batched_nms` -- torchvision wheels do not load beside the CPU torch here,
  so MTCNN cannot run in this environment at all.
- Speed on 2 CPU cores: a cascade pass on a frame scaled to <= 320 px costs ~3-15 ms (measured on
  224x224 frames of the demo corpus), against ~50-100 ms per frame for MTCNN's three CNN stages.
- Quality: frontal faces only and looser boxes than MTCNN/OpenFace, which is enough for
  clip-level embeddings of talking heads (MERTools crops with OpenFace; its crops are not
  reproducible offline here). Detection: grayscale; frontalface_default on the plain then on the
  histogram-equalised image, then frontalface_alt2 the same way, stopping at the first hit. On 30
  decoded demo-corpus clips (8 frames each, cartoon faces) it found a face in 235/240 frames and in
  every clip; on 120 images of noise and face-free backgrounds it found none.

Pipeline (`crop_faces`): detect in every frame (scaled so that max(H, W) <= detect_side), keep the
largest box, widen it by `margin` (a fraction of the box side, on every side), square it, crop
(replicating edge pixels where the square leaves the frame) and resize to size x size. Frames with
no detection reuse the box of the nearest frame that has one (ties: the earlier frame). No face in
any frame raises SampleError(sample_id, 'face', 'no face found in N frames').

`crop_faces` returns a `FaceCrops` array (an np.ndarray subclass): encoders skip their own face
step for frames that are already crops, so a build may crop in its decode workers (where the
sample id is known) with `encoder.prepare(frames, sample_id)`.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError, SampleError

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")
DEFAULT_SIZE = 224
DEFAULT_MARGIN = 0.15
DEFAULT_DETECT_SIDE = 320
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 4
MIN_FACE = 20          # pixels at detection scale
PIPELINE_VERSION = 1   # bump when the detection or crop arithmetic changes (it changes features)

__all__ = ["FaceCrops", "crop_faces", "detect_faces", "face_options", "face_provenance", "square_box",
           "DEFAULT_SIZE", "DEFAULT_MARGIN"]


class FaceCrops(np.ndarray):
    """uint8 [F, S, S, 3] face crops made by `crop_faces` (a marker type; behaves like np.ndarray)."""


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise FeatstoreError("face cropping needs OpenCV: pip install 'opencv-python-headless>=4.10,<5' "
                             "(or pip install 'featstore[offline]')") from None
    return cv2


def cascade_paths() -> list[Path]:
    """The cascade files used, from the installed OpenCV (fails naming the package when absent)."""
    cv2 = _cv2()
    root = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "")
    paths = [root / name for name in CASCADES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FeatstoreError(f"face cropping: OpenCV {cv2.__version__} ships no {missing[0]} "
                             f"(opencv-python-headless 5.x ships no Haar cascades; install 'opencv-python-headless<5')")
    return paths


_LOCAL = threading.local()   # CascadeClassifier objects are not shared between threads


def _cascades() -> list[Any]:
    found = getattr(_LOCAL, "cascades", None)
    if found is None:
        cv2 = _cv2()
        found = []
        for p in cascade_paths():
            c = cv2.CascadeClassifier(str(p))
            if c.empty():
                raise FeatstoreError(f"face cropping: OpenCV cannot read the cascade {p}")
            found.append(c)
        _LOCAL.cascades = found
    return found


def detect_faces(frames: np.ndarray, detect_side: int = DEFAULT_DETECT_SIDE) -> list[tuple[float, float, float, float] | None]:
    """The largest face box (x, y, w, h in frame pixels) of each frame of uint8 [F, H, W, 3], or None."""
    cv2 = _cv2()
    cascades = _cascades()
    out: list[tuple[float, float, float, float] | None] = []
    for frame in frames:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        scale = min(1.0, detect_side / max(h, w)) if detect_side else 1.0
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        views = (gray, cv2.equalizeHist(gray))
        box = None
        for cascade, view in ((c, v) for c in cascades for v in views):
            found = cascade.detectMultiScale(view, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                             minSize=(MIN_FACE, MIN_FACE))
            if len(found):
                x, y, bw, bh = max((tuple(b) for b in found), key=lambda b: b[2] * b[3])
                box = (x / scale, y / scale, bw / scale, bh / scale)
                break
        out.append(box)
    return out


def square_box(box: tuple[float, float, float, float], margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square around `box` widened by `margin` x its longer side on every side."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    s = max(1, int(round(side)))
    return int(round(cx - s / 2.0)), int(round(cy - s / 2.0)), s


def _crop(frame: np.ndarray, x0: int, y0: int, s: int, size: int) -> np.ndarray:
    cv2 = _cv2()
    h, w = frame.shape[:2]
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x0 + s - w), max(0, y0 + s - h)
    if pad_l or pad_t or pad_r or pad_b:
        frame = cv2.copyMakeBorder(np.ascontiguousarray(frame), pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad_l, y0 + pad_t
    patch = np.ascontiguousarray(frame[y0:y0 + s, x0:x0 + s])
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def _nearest_filled(boxes: list[Any]) -> list[Any]:
    """Each None replaced by the nearest non-None entry (ties: the earlier one)."""
    have = [i for i, b in enumerate(boxes) if b is not None]
    out = list(boxes)
    for i, b in enumerate(boxes):
        if b is None:
            j = min(have, key=lambda k: (abs(k - i), k))
            out[i] = boxes[j]
    return out


def crop_faces(frames: np.ndarray, sample_id: str, size: int = DEFAULT_SIZE, margin: float = DEFAULT_MARGIN,
               detect_side: int = DEFAULT_DETECT_SIDE) -> FaceCrops:
    """Largest-face square crops of uint8 [F, H, W, 3] RGB frames -> FaceCrops uint8 [F, size, size, 3].

    Raises SampleError(sample_id, 'face', 'no face found in N frames') when no frame has a face.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise SampleError(sample_id, "face", f"expected frames [F, H, W, 3] with F >= 1, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise SampleError(sample_id, "face", f"expected uint8 frames, got {arr.dtype}")
    boxes = detect_faces(arr, detect_side)
    if all(b is None for b in boxes):
        raise SampleError(sample_id, "face", f"no face found in {len(boxes)} frames")
    out = np.empty((arr.shape[0], size, size, 3), np.uint8)
    for i, (frame, box) in enumerate(zip(arr, _nearest_filled(boxes))):
        out[i] = _crop(frame, *square_box(box, margin), size)
    return out.view(FaceCrops)


def face_options(value: Any, default_size: int = DEFAULT_SIZE, default_margin: float = DEFAULT_MARGIN) -> dict[str, Any] | None:
    """spec.input['face'] -> None (off) or {size, margin, detect_side}: accepts false/true or a mapping."""
    if not value:
        return None
    opts = {"size": int(default_size), "margin": float(default_margin), "detect_side": DEFAULT_DETECT_SIDE}
    if isinstance(value, dict):
        unknown = set(value) - set(opts) - {"detector"}
        if unknown:
            raise FeatstoreError(f"input.face: unknown option '{sorted(unknown)[0]}' (allowed: size, margin, detect_side)")
        if value.get("detector", "haar") != "haar":
            raise FeatstoreError(f"input.face: detector '{value['detector']}' is not available (only 'haar')")
        opts.update({k: type(opts[k])(v) for k, v in value.items() if k in opts})
    elif value is not True and str(value).lower() not in ("haar", "true", "yes", "1"):
        raise FeatstoreError(f"input.face: expected true/false or a mapping, got {value!r}")
    return opts


def face_provenance(opts: dict[str, Any] | None) -> dict[str, Any] | None:
    """What made the crops: detector, OpenCV version, cascade sha256s and the crop options."""
    if not opts:
        return None
    cv2 = _cv2()
    return {
        "detector": "opencv-haar", "pipeline_version": PIPELINE_VERSION, "opencv": cv2.__version__,
        "cascades": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in cascade_paths()},
        "scale_factor": SCALE_FACTOR, "min_neighbors": MIN_NEIGHBORS, "min_face": MIN_FACE, **opts,
    }
