"""Shared pieces of the transformers families (hf-audio, hf-text): loading, weights identity, layers, pooling.

- `resolve_model` / `load_pretrained`: a local folder wins; `package:<module>` is the folder that
  module's get_model_path() returns (weights shipped in a pip package); a hub id is looked up in the
  local HF cache first (`local_files_only=True`) and, when it is not cached and the hub cannot be used
  (HF_HUB_OFFLINE=1 or a connection error), loading fails at once with a one-line FeatstoreError
  that names `--model /path/to/folder`. `model_origin` says which of the three it was; `model_file`
  fetches one extra file of the model (e.g. sentence-transformers' modules.json) the same way.
- `weights_identity`: sha256 over the weight files, hashed once per (file, size, mtime).
- `select_layers` / `masked_mean`: the catalog's layers/layer_reduce and padding-free pooling.
- `compute_dtype` / `autocast`: fp32 on CPU; bf16 on CUDA unless spec.params['dtype'] (or the
  build option `dtype`) asks for float32/float16.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from featstore.catalog import EncoderSpec
from featstore.errors import FeatstoreError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
COMPUTE_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                  "float16": "float16", "fp16": "float16", "half": "float16"}

__all__ = ["resolve_model", "load_pretrained", "local_folder", "resolved_revision", "weights_identity", "file_sha256",
           "select_layers", "layer_indices", "masked_mean", "masked_sum", "compute_dtype", "autocast", "hf_provenance",
           "offline_error", "first_line", "check_dim", "model_origin", "model_file", "package_version"]


# ---------------------------------------------------------------------------------------------- resolution

def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception message (or its type name), shortened."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def offline_error(spec: EncoderSpec, model_id: str) -> FeatstoreError:
    """The one-line failure for a hub id that is neither cached nor downloadable here."""
    return FeatstoreError(f"encoder {spec.name}: model '{model_id}' is not available offline; "
                          f"download it elsewhere and pass --model /path/to/folder")


def _looks_like_path(ref: str) -> bool:
    """Hub ids are `name` or `org/name`; anything absolute, dotted-relative or deeper is a folder."""
    return ref.startswith(("/", "./", "../", "~", ".\\", "..\\")) or ref.count("/") > 1 or "\\" in ref \
        or (len(ref) > 1 and ref[1] == ":")


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP connect to the hub endpoint, so that no network means failing now, not after retries.

    Behind a proxy (HTTPS_PROXY/ALL_PROXY set) a direct connect proves nothing: assume reachable.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    except Exception:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(spec: EncoderSpec, model_override: str | None = None) -> tuple[str, str | None]:
    """(local folder or hub id, revision to ask for). A local folder has no revision; `--model` beats spec.model.

    `package:<module>` resolves to the folder module.get_model_path() returns. A path-like reference
    that is not an existing folder fails here, naming the folder.
    """
    ref = model_override or spec.model
    if not ref:
        raise FeatstoreError(f"encoder {spec.name}: no model given (catalog field 'model' is empty); "
                             f"pass --model /path/to/folder")
    ref = str(ref)
    if ref.startswith("package:"):
        return str(_package_folder(spec, ref.split(":", 1)[1])), None
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FeatstoreError(f"encoder {spec.name}: {local} is not a model folder (no config.json)")
        return str(local.resolve()), None
    if _looks_like_path(ref) or local.exists():
        raise FeatstoreError(f"encoder {spec.name}: model folder not found: {local}")
    # A --model hub id other than the catalog's does not inherit the catalog's pinned revision.
    revision = spec.revision if ref == spec.model else None
    return ref, revision


def _package_folder(spec: EncoderSpec, module_name: str) -> Path:
    """The model folder a pip package ships: importlib.import_module(module_name).get_model_path()."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise FeatstoreError(f"encoder {spec.name}: package module '{module_name}' is not installed "
                             f"(pip install {pip_name}), or pass --model /path/to/folder") from None
    if not callable(getattr(module, "get_model_path", None)):
        raise FeatstoreError(f"encoder {spec.name}: module '{module_name}' has no get_model_path()")
    folder = Path(module.get_model_path())
    if not (folder / "config.json").is_file():
        raise FeatstoreError(f"encoder {spec.name}: package '{module_name}' has no model files at {folder}; "
                             f"pass --model /path/to/folder")
    return folder.resolve()


def package_version(module_name: str) -> str | None:
    """The installed version of the package that provides module_name (its __version__, else metadata)."""
    import importlib
    from importlib import metadata

    try:
        version = getattr(importlib.import_module(module_name), "__version__", None)
        if version:
            return str(version)
        for dist in metadata.packages_distributions().get(module_name.split(".")[0], []):
            return metadata.version(dist)
    except Exception:  # best effort
        pass
    return None


def model_origin(spec: EncoderSpec, model_override: str | None, path_or_id: str) -> dict[str, Any]:
    """How resolve_model found path_or_id: {'source': 'package', 'package', 'package_version'} | 'local' | 'hub'."""
    ref = str(model_override or spec.model or "")
    if ref.startswith("package:"):
        module_name = ref.split(":", 1)[1]
        return {"source": "package", "package": module_name, "package_version": package_version(module_name)}
    if os.path.isdir(path_or_id):
        return {"source": "local"}
    return {"source": "hub", "hub_id": path_or_id}


def model_file(path_or_id: str, filename: str, revision: str | None = None) -> Path | None:
    """One file of a model: from its folder, else the local HF cache, else the hub when it can be reached.

    None when the model has no such file or it cannot be had here; never waits on a dead network.
    """
    if os.path.isdir(path_or_id):
        path = Path(path_or_id) / filename
        return path if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        return Path(hf_hub_download(path_or_id, filename, revision=revision, local_files_only=True))
    except Exception:
        pass
    if _hub_offline() or not _hub_reachable():
        return None
    try:
        return Path(hf_hub_download(path_or_id, filename, revision=revision))
    except Exception:
        return None


def _transformers_before(major: int, minor: int) -> bool:
    """Whether the installed transformers is older than major.minor (the legacy 4.x venv)."""
    import transformers

    try:
        have = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    except ValueError:
        return False
    return have < (major, minor)


def _hub_cache() -> str | None:
    """huggingface_hub's cache folder (HF_HUB_CACHE / HF_HOME), the one local_folder() looks in."""
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except Exception:
        return None


def load_pretrained(cls: Any, spec: EncoderSpec, model_override: str | None = None, **kw: Any) -> Any:
    """`cls.from_pretrained` for the spec's model: local folder, else HF cache, else the hub when reachable.

    Never waits on the network when the model cannot be had: under HF_HUB_OFFLINE=1 an uncached hub
    id fails immediately, and a connection error fails with the same one-line message.
    """
    path_or_id, revision = resolve_model(spec, model_override)
    kw.setdefault("trust_remote_code", spec.trust_remote_code)
    if _transformers_before(4, 56):   # the legacy 4.x venv: older keyword, and a cache path that ignores HF_HUB_CACHE
        if "dtype" in kw:
            kw["torch_dtype"] = kw.pop("dtype")
        kw.setdefault("cache_dir", _hub_cache())
    if os.path.isdir(path_or_id):
        try:
            return cls.from_pretrained(path_or_id, local_files_only=True, **kw)
        except FeatstoreError:
            raise
        except Exception as exc:
            raise FeatstoreError(f"encoder {spec.name}: cannot load {getattr(cls, '__name__', cls)} from "
                                 f"{path_or_id} ({first_line(exc)})") from None
    try:
        return cls.from_pretrained(path_or_id, revision=revision, local_files_only=True, **kw)
    except Exception as exc:
        cached_error = exc
    if _hub_offline() or not _hub_reachable():
        raise offline_error(spec, path_or_id) from None
    try:
        return cls.from_pretrained(path_or_id, revision=revision, **kw)
    except Exception as exc:
        text = f"{first_line(exc)} {type(exc).__name__}".lower()
        if any(w in text for w in ("connect", "offline", "resolve", "timed out", "timeout", "network",
                                   "unreachable", "name or service")):
            raise offline_error(spec, path_or_id) from None
        raise FeatstoreError(f"encoder {spec.name}: cannot load model '{path_or_id}' "
                             f"({first_line(exc)}; from the local cache: {first_line(cached_error)})") from None


def local_folder(path_or_id: str, revision: str | None = None) -> Path | None:
    """The folder holding the files: the folder itself, or the hub id's snapshot in the local HF cache."""
    if os.path.isdir(path_or_id):
        return Path(path_or_id)
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(path_or_id, revision=revision, local_files_only=True))
    except Exception:
        return None


def resolved_revision(folder: Path | None, loaded: Any = None) -> str | None:
    """The commit a model came from: config._commit_hash, or the HF-cache snapshot folder name; else None."""
    config = getattr(loaded, "config", loaded)
    commit = getattr(config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    if folder is not None and folder.parent.name == "snapshots":
        return folder.name
    return None


# ---------------------------------------------------------------------------------------------- hashing

_HASH_LOCK = threading.Lock()
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _hash_cache_file() -> Path:
    root = os.environ.get("FEATSTORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "featstore")
    return Path(root) / "sha256.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of one file, computed once per (real path, size, mtime): memoised and kept in a JSON cache."""
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
        if not isinstance(disk, dict):
            disk = {}
        if isinstance(disk.get(disk_key), str):
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
            disk[disk_key] = digest
            tmp = cache_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(disk, indent=0, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:
            pass
        return digest


def weights_identity(path: str | Path | None) -> str | None:
    """'sha256:<hex>' over the weight files of a model folder (safetensors, else .bin), or None.

    One digest over the sorted `name:sha256` lines, so sharded checkpoints get one identity.
    """
    if path is None or not os.path.isdir(path):
        return None
    folder = Path(path)
    for pattern in WEIGHT_PATTERNS:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            lines = "".join(f"{p.name}:{file_sha256(p)}\n" for p in files)
            return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    return None


# ---------------------------------------------------------------------------------------------- layers/pooling

def layer_indices(spec: EncoderSpec, n_hidden: int) -> list[int]:
    """Hidden-state indices kept by spec.layers ('last', 'all', or explicit, negatives allowed)."""
    if spec.layers == "last":
        return [n_hidden - 1]
    if spec.layers == "all":
        if spec.layer_reduce == "stack" and spec.n_layers and spec.n_layers != n_hidden:
            raise FeatstoreError(f"encoder {spec.name}: the model returns {n_hidden} hidden states but the "
                                 f"catalog says n_layers {spec.n_layers}")
        return list(range(n_hidden))
    out = []
    for i in spec.layers:
        j = i + n_hidden if i < 0 else i
        if not 0 <= j < n_hidden:
            raise FeatstoreError(f"encoder {spec.name}: layer {i} is out of range; the model returns "
                                 f"{n_hidden} hidden states (0 = embeddings)")
        out.append(j)
    return out


def select_layers(hidden_states: Any, spec: EncoderSpec) -> Any:
    """Tuple of [B, T, D] hidden states -> [B, L, T, D] float32 (sum/mean -> L = 1, stack -> L = #layers)."""
    import torch

    idx = layer_indices(spec, len(hidden_states))
    picked = torch.stack([hidden_states[i].float() for i in idx], dim=1)   # [B, K, T, D]
    if spec.layer_reduce == "stack":
        return picked
    if spec.layer_reduce == "mean":
        return picked.mean(dim=1, keepdim=True)
    return picked.sum(dim=1, keepdim=True)


def masked_mean(x: Any, mask: Any) -> Any:
    """Mean over the time axis of x [B, L, T, D] (or [B, T, D]) counting only mask [B, T] positions.

    Rows with no real position give zeros. Padding values never enter: they are zeroed, not weighted.
    """
    import torch

    m = mask.to(device=x.device, dtype=torch.bool)
    if x.dim() == 4:
        w = m[:, None, :, None]
        count = m.sum(dim=1).view(-1, 1, 1).to(x.dtype)
        total = torch.where(w, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=2)
    else:
        w = m[:, :, None]
        count = m.sum(dim=1).view(-1, 1).to(x.dtype)
        total = torch.where(w, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    return total / count.clamp(min=1)


def masked_sum(x: Any, mask: Any) -> tuple[Any, Any]:
    """(sum over real positions [B, L, D], count [B]) of x [B, L, T, D]: for pooling across windows."""
    import torch

    m = mask.to(device=x.device, dtype=torch.bool)
    total = torch.where(m[:, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=2)
    return total, m.sum(dim=1)


def check_dim(spec: EncoderSpec, config: Any, where: str) -> int:
    """The model's hidden size; it must equal the catalog's dim."""
    dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if dim is None and hasattr(config, "get_text_config"):
        dim = getattr(config.get_text_config(), "hidden_size", None)
    if dim != spec.dim:
        raise FeatstoreError(f"encoder {spec.name}: the model in {where} has hidden size {dim} but the catalog "
                             f"says dim {spec.dim}")
    return int(dim)


# ---------------------------------------------------------------------------------------------- device/dtype

def compute_dtype(spec: EncoderSpec, device: str, override: str | None = None) -> Any:
    """torch dtype to compute in: float32 on CPU always; on CUDA the option, spec.params['dtype'], else bf16."""
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    name = override or spec.params.get("dtype") or "bfloat16"
    key = COMPUTE_DTYPES.get(str(name).lower())
    if key is None:
        raise FeatstoreError(f"encoder {spec.name}: compute dtype '{name}' is not one of float32, bfloat16, float16")
    if key == "bfloat16" and not torch.cuda.is_bf16_supported():
        key = "float16"
    return getattr(torch, key)


def autocast(device: str, dtype: Any) -> Any:
    """bf16/fp16 autocast on CUDA when asked; a no-op on CPU or in float32."""
    import torch

    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def hf_provenance(spec: EncoderSpec, path_or_id: str, loaded: Any = None, revision: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """{'model', 'revision' (resolved commit or None for a plain folder), 'weights': 'sha256:…', 'recipe',
    'transformers', 'torch', ...extra}."""
    import torch
    import transformers

    folder = local_folder(path_or_id, revision)
    return {
        "family": spec.family,
        "model": path_or_id,
        "revision": resolved_revision(folder, loaded),
        "weights": weights_identity(folder),
        "recipe": spec.recipe,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        **extra,
    }
