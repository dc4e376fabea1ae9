"""Read .npz/.npy files whose object arrays are pickled, without ever running pickled code.

MERTools keeps its labels in `label-6way.npz`: every member is a 0-d object array holding a dict
(`{sample: {'emo': str, 'val': float}}`), which `np.load(allow_pickle=True)` would unpickle with the
full pickle machinery -- a crafted file could then run any command. Here the zip members are parsed
by hand (`numpy.lib.format` reads the header) and object arrays go through `RestrictedUnpickler`,
which admits only builtin containers, strings and numbers, and numpy's array/dtype/scalar
reconstruction. Anything else is refused with one line naming the file and the refused class.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np
import numpy.lib.format as npformat

from featstore.errors import FeatstoreError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_npz_dicts", "load_npy", "read_npy_header"]


class UnsafePickleError(FeatstoreError):
    """A pickle in a data file names a class or function outside the allow-list (or is malformed)."""


def _multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


_MA = _multiarray()
_BUILTINS = {name: getattr(__import__("builtins"), name) for name in
             ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
              "complex", "bool")}
_ALLOWED: dict[tuple[str, str], Any] = {("builtins", k): v for k, v in _BUILTINS.items()}
_ALLOWED.update({("__builtin__", k): v for k, v in _BUILTINS.items()})  # protocol-2 pickles from Python 2
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _MA._reconstruct
    _ALLOWED[(_mod, "scalar")] = _MA.scalar
_ALLOWED.update({
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,   # how protocol 2 spells bytes; a pure function
})


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose `find_class` resolves only the allow-list (everything else raises).

    `find_class` is the only way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST, OBJ and the
    copyreg extension codes all go through it), so refusing there means nothing outside the list runs.
    """

    def __init__(self, file: Any, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        if module == "numpy.dtypes" and name.endswith("DType"):
            import numpy.dtypes as npdtypes

            found = getattr(npdtypes, name, None)
            if isinstance(found, type) and issubclass(found, np.dtype):
                return found
        raise UnsafePickleError(f"{self.source}: refusing to unpickle {module}.{name} (only builtin containers, "
                                f"strings, numbers and numpy arrays are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a persistent id in a pickle")


def read_npy_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy stream positioned at its magic string."""
    version = npformat.read_magic(fp)
    if version == (1, 0):
        return npformat.read_array_header_1_0(fp)
    if version == (2, 0):
        return npformat.read_array_header_2_0(fp)
    reader = getattr(npformat, "_read_array_header", None)
    if reader is None:  # pragma: no cover - every numpy we support has it
        from numpy.lib import _format_impl

        reader = _format_impl._read_array_header
    return reader(fp, version)


def _read_array(fp: Any, source: str) -> np.ndarray:
    shape, fortran, dtype = read_npy_header(fp)
    if dtype.hasobject:
        try:
            arr = RestrictedUnpickler(fp, source=source).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # a truncated or malformed pickle
            raise UnsafePickleError(f"{source}: unreadable pickled array ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        if not isinstance(arr, np.ndarray):
            raise UnsafePickleError(f"{source}: the pickled payload is a {type(arr).__name__}, not an array")
        return arr
    count = int(np.prod(shape, dtype=np.int64))
    data = fp.read(count * dtype.itemsize)
    if len(data) < count * dtype.itemsize:
        raise FeatstoreError(f"{source}: truncated array data ({len(data)} of {count * dtype.itemsize} bytes)")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """One .npy file; object arrays go through the restricted unpickler."""
    with open(path, "rb") as f:
        return _read_array(f, str(path))


def load_npz_dicts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every array of an .npz (member name without `.npy` -> value), unpickling only safe types.

    A 0-d object array (how `np.savez(f, train_corpus=some_dict)` stores a dict) is returned as the
    object it holds -- the dict -- like MERTools' `np.load(...)[name].tolist()`; other arrays are
    returned as arrays. A foreign class anywhere in a pickle raises UnsafePickleError naming the file
    and `module.name`, before anything from it runs. `np.load(allow_pickle=True)` is never used.
    """
    path = str(path)
    out: dict[str, Any] = {}
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise FeatstoreError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with zf.open(info) as raw:
                fp = io.BufferedReader(raw)  # type: ignore[arg-type]
                try:
                    arr = _read_array(fp, f"{path}:{info.filename}")
                except (ValueError, EOFError) as exc:
                    raise FeatstoreError(f"{path}:{info.filename}: not a valid .npy member ({exc})".splitlines()[0]) from None
            out[name] = arr[()] if arr.dtype.hasobject and arr.ndim == 0 else arr
    return out
