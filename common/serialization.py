"""The one policy by which the project reads a file written by ``torch.save``: as data, never
as code, whatever its source (a path, a URL, a published name, ``--resume``).

A pickle can name any importable function and have the reader call it (``os.system``, say),
so no file is ever fully unpickled. Every file goes through ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler, which rebuilds tensors and plain containers only. Two
additions, both explicit:

- NumPy arrays (``_reconstruct``, ``ndarray``, ``dtype``): checkpoints written before the RNG
  states were stored as plain lists hold NumPy's generator state as an array.
- Whole pickled networks (``torch.save(model)``, as the reference release saves its
  weights), only where a caller asks for them: every class or function such a file names is
  replaced by an inert :class:`InertObject` that keeps the arguments and state the file gives
  it and does nothing, so the network's weights and buffers can be read off its modules'
  ``_parameters`` and ``_buffers`` (:func:`module_tensors`) without importing or running
  anything. Names PyTorch blocks outright (``os``, ``sys``, ``subprocess``, ...) still make
  the file fail, and the file is then refused.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InputError

# NumPy's array reconstruction: data only (dtype, shape and bytes), no code of the file's.
# NumPy 2 moved ``numpy.core`` to ``numpy._core``; files name either, so both are listed.
_numpy_core = getattr(np, "_core", None) or np.core
NUMPY_ARRAY_GLOBALS: list[Any] = [
    *((_numpy_core.multiarray._reconstruct, f"{module}.multiarray._reconstruct")
      for module in ("numpy.core", "numpy._core")),
    np.ndarray,
    np.dtype,
    *(type(np.dtype(kind)) for kind in (np.uint32, np.int64, np.float64, np.uint8)),
]  # fmt: skip
CONVERT_HINT = (
    "load it where you trust it and re-save its weights with "
    "torch.save(model.state_dict(), path) (and the memory items with torch.save(items, path))"
)


class InertObject:
    """Stands in for a class or function named by a file: it is never imported and never
    called. Building it keeps the arguments (``inert_args``) and the pickled state
    (``inert_state``); nothing else happens."""

    inert_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["inert_args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["inert_state"] = state

    def __repr__(self) -> str:
        return f"<inert {self.inert_name}>"


_inert_classes: dict[str, type[InertObject]] = {}


def _inert_class(full_name: str) -> type[InertObject]:
    """An :class:`InertObject` subclass that the unpickler finds under ``full_name``."""
    if full_name not in _inert_classes:
        module, _, name = full_name.rpartition(".")
        attributes = {"__module__": module, "__qualname__": name, "inert_name": full_name}
        _inert_classes[full_name] = type(name, (InertObject,), attributes)
    return _inert_classes[full_name]


def _globals_named(path: Path) -> list[str]:
    """Every global the file's pickle names that ``weights_only`` does not allow. Only the
    zip format (torch.save since PyTorch 1.6) can be read this way: the older format stores
    a pickled network's classes with their source code, which is refused."""
    if not zipfile.is_zipfile(path):
        return []
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def _weights_only_load(path: Path, allowed: list[Any]) -> Any:
    """``torch.load(weights_only=True)`` with ``allowed`` added to its allow-list; tensors
    memory-mapped where the format allows it (zip files)."""
    with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS + allowed), warnings.catch_warnings():
        # A plain pickle of another protocol is refused below anyway; no note about it.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        if zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(
    path: Path, error: BaseException | None, what: str, names: list[str] | None = None
) -> InputError:
    found = re.search(r"GLOBAL ([\w.]+) whose module", str(error or ""))
    names = [found.group(1)] if found else names  # the name PyTorch blocked outright, if any
    needs = (
        f" (it names {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
    )
    return InputError(
        f"{path}: the {what} needs more than plain tensors and containers to be read{needs}, "
        f"so torch.load(weights_only=True) refuses it (reading it fully could run code from "
        f"the file); {CONVERT_HINT}"
    )


def _unreadable(path: Path, error: BaseException, what: str) -> InputError:
    text = str(error).strip()
    reason = text.splitlines()[0][:200] if text else type(error).__name__
    if isinstance(error, pickle.UnpicklingError):  # PyTorch's long notes say nothing here
        reason = "not a pickle that torch.save writes"
    return InputError(
        f"cannot read the {what} {path} ({reason}); the file is damaged or was not written "
        "by torch.save"
    )


def _allowed_name(entry: Any) -> str:
    """The name under which a pickle names an allow-list entry (a global or ``(global, name)``)."""
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


# The globals a file may name that torch.load(weights_only=True) allows once NumPy's are added.
_ALLOWED_NAMES = frozenset(map(_allowed_name, NUMPY_ARRAY_GLOBALS))


def load_file(path: str | os.PathLike, what: str = "file", pickled_network: bool = False) -> Any:
    """Read a ``torch.save`` file as data (see the module notes); tensors on the CPU.

    The file is read once: the globals its pickle names are listed first (a scan of the
    pickle alone, not of the tensors), which decides whether it is plain data, a whole
    network to read with stand-ins, or a refusal; then one ``torch.load`` reads it.

    Args:
        path: an existing local file.
        what: how messages name the file (``"checkpoint"``, ``"--model_dir file"``).
        pickled_network: also accept a whole pickled network (``torch.save(model)``), whose
            classes come back as inert stand-ins (read its weights with
            :func:`module_tensors`).

    Raises:
        InputError: the file is damaged or not a torch.save file, or it needs code to be read
            (one line naming the file and how to convert it).
    """
    path = Path(path)
    try:
        names = [name for name in _globals_named(path) if name not in _ALLOWED_NAMES]
    except Exception as error:  # a damaged archive
        raise _unreadable(path, error, what) from None
    if names and not pickled_network:
        raise _refusal(path, None, what, names)
    try:
        return _weights_only_load(path, [(_inert_class(name), name) for name in names])
    except pickle.UnpicklingError as error:
        # A name PyTorch blocks outright (os, sys, ...), or the pre-zip format naming code.
        if names or any(word in str(error) for word in ("GLOBAL", "persistent_load")):
            raise _refusal(path, error, what, names) from None
        raise _unreadable(path, error, what) from None
    except Exception as error:  # truncated, empty or not a torch.save file at all
        raise _unreadable(path, error, what) from None


class CyclicNetwork(ValueError):
    """A pickled network that contains itself (``name`` is the module that leads back to an
    ancestor): torch.save never writes one, so the file is damaged or crafted."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def module_tensors(
    obj: Any, prefix: str = "", _ancestors: frozenset[int] = frozenset()
) -> dict[str, torch.Tensor] | None:
    """The state_dict of a network read back as inert stand-ins (see :func:`load_file`):
    parameters, then persistent buffers, then each child's, in ``nn.Module.state_dict``'s
    order and naming. None when ``obj`` is not a module's pickled state.

    Raises:
        CyclicNetwork: a module is its own descendant (a pickle can say so; a network
            cannot be).
    """
    state = obj.__dict__.get("inert_state") if isinstance(obj, InertObject) else None
    if not isinstance(state, Mapping) or not isinstance(state.get("_parameters"), Mapping):
        return None
    if id(obj) in _ancestors:
        raise CyclicNetwork(prefix.rstrip(".") or "the network")
    ancestors = _ancestors | {id(obj)}
    tensors: dict[str, torch.Tensor] = {}
    skipped = state.get("_non_persistent_buffers_set") or set()
    for name, value in state["_parameters"].items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value.detach()
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and name not in skipped:
            tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        child_tensors = module_tensors(child, f"{prefix}{name}.", ancestors)
        if child_tensors is None:
            return None
        tensors.update(child_tensors)
    return tensors
