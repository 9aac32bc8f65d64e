"""Loading LGN-Net weights and memory items: our checkpoints and the reference release's.

Both use the same parameter names (the 197-entry layout of the reference), so one strict
loader serves both. Problems with a file raise :class:`utils.InputError` with a one-line
message naming the file, the offending entry and the fix.
"""

from __future__ import annotations

import os
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from model.lgn_net import LGNNet
from utils import InputError

# Keys under which training scripts commonly nest the weights in a larger checkpoint dict.
_NESTED_WEIGHT_KEYS = ("state_dict", "model")
# DataParallel / DistributedDataParallel wrap the network in an attribute called ``module``.
_WRAPPER_PREFIX = "module."


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def extract_state_dict(obj: Any, source: str = "state_dict") -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` weights held by ``obj``.

    Accepts a state_dict, a dict nesting one under ``"state_dict"`` or ``"model"``, or a whole
    ``nn.Module`` (as the reference's ``torch.save(model, ...)`` produces). A ``module.``
    prefix on every name (a DataParallel/DDP-wrapped network) is removed.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{source}: expected a state_dict or a saved model, found {type(obj).__name__}; "
            "pass the network weights file"
        )
    for key in _NESTED_WEIGHT_KEYS:
        nested = obj.get(key)
        if isinstance(nested, Mapping | nn.Module):
            return extract_state_dict(nested, source)
    state = dict(obj)
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(
                f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "pass the network weights file"
            )
    if state and all(name.startswith(_WRAPPER_PREFIX) for name in state):
        state = {name[len(_WRAPPER_PREFIX) :]: value for name, value in state.items()}
    return state


def load_model_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor] | nn.Module, source: str = "state_dict"
) -> None:
    """Strictly load ``state_dict`` into ``model`` (names and shapes must match exactly).

    Args:
        model: the bare network to fill, e.g. an :class:`LGNNet` (not a DDP wrapper).
        state_dict: our state_dict or the reference's (same names); a ``module.`` prefix,
            a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper or a whole saved module
            are tolerated (see :func:`extract_state_dict`).
        source: what to call the weights in error messages (usually the file path).

    Raises:
        InputError: one line naming ``source`` and the first entry, in the model's order, that
            is missing or has the wrong shape (with both shapes), else the first unexpected one.
    """
    state = extract_state_dict(state_dict, source)
    expected = model.state_dict()
    hint = "check the model size options (channels, t_length, fdim, hidden) or the file"
    for name, target in expected.items():
        if name not in state:
            raise InputError(f"{source}: missing entry {name!r} {_shape(target)}; {hint}")
        if state[name].shape != target.shape:
            raise InputError(
                f"{source}: entry {name!r} has shape {_shape(state[name])} but the model "
                f"expects {_shape(target)}; {hint}"
            )
    for name, value in state.items():
        if name not in expected:
            raise InputError(f"{source}: unexpected entry {name!r} {_shape(value)}; {hint}")
    model.load_state_dict(state, strict=True)


def _placeholder_module_class(module_name: str, class_name: str) -> type[nn.Module]:
    """A stand-in for a class the unpickler cannot import (e.g. the reference's network
    class). Unpickling an ``nn.Module`` only restores its ``__dict__`` (``_parameters``,
    ``_buffers``, ``_modules``), so the stand-in's ``state_dict()`` gives the real weights."""

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"placeholder for {module_name}.{class_name} cannot run")

    return type(class_name, (nn.Module,), {"__module__": module_name, "forward": forward})


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _placeholder_module_class(module, name)


# torch.load accepts a module-like ``pickle_module`` with ``Unpickler`` and ``load``.
_tolerant_pickle = types.ModuleType("tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = pickle.load


def _unreadable(path: Path, error: BaseException) -> InputError:
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    return InputError(
        f"{path}: cannot be read as a PyTorch checkpoint ({reason}); pass a file written by "
        "torch.save"
    )


def _torch_load(path: Path, map_location: Any, allow_pickled_model: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` first; for a pickled whole model, optionally
    retry with full unpickling (see :func:`load_reference_checkpoint`)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as safe_error:
        # Raised both for pickled objects other than tensors/containers and for garbage.
        if not allow_pickled_model:
            raise InputError(
                f"{path}: not a plain tensor/state_dict file readable with "
                "torch.load(weights_only=True); re-save it with torch.save(tensor_or_state_dict)"
            ) from safe_error
    except Exception as error:  # truncated, empty or corrupt archive
        raise _unreadable(path, error) from error
    try:
        return torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_tolerant_pickle
        )
    except Exception as error:  # any unpickling failure means the file is not usable
        raise _unreadable(path, error) from error


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}; check the path")
    return path


def load_memory_items(
    items: torch.Tensor | str | os.PathLike,
    msize: int,
    mdim: int,
    source: str | None = None,
    map_location: Any = "cpu",
    hint: str = "check --msize or the items file",
) -> torch.Tensor:
    """Validated memory items ``(msize, mdim)`` in fp32, detached.

    Args:
        items: the items tensor, or a file holding it (``torch.save(items, path)``).
        msize, mdim: the expected number of items and their dimension.
        source: name for error messages; defaults to the file path.
        map_location: where to load a file's tensor (``torch.load``'s argument).
        hint: the fix the message names when the shape does not fit.

    Raises:
        InputError: missing/unreadable file, not a tensor, wrong shape (both shapes named)
            or non-finite values.
    """
    if not isinstance(items, torch.Tensor):
        path = _existing_file(items, "memory items")
        source = source or str(path)
        items = _torch_load(path, map_location, allow_pickled_model=False)
        if not isinstance(items, torch.Tensor):
            raise InputError(
                f"{source}: expected a memory items tensor, found {type(items).__name__}; "
                "pass the file written by torch.save(items, path)"
            )
    source = source or "memory items"
    if _shape(items) != (msize, mdim):
        raise InputError(
            f"{source}: memory items have shape {_shape(items)} but the model expects "
            f"{(msize, mdim)}; {hint}"
        )
    items = items.detach().float()
    if not torch.isfinite(items).all():
        raise InputError(f"{source}: memory items contain NaN or Inf; use another items file")
    return items


def infer_model_sizes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """LGNNet constructor sizes read off a reference-layout state_dict.

    ``pred.encoder.0.weight`` is ``(64, c, 3, 3)``, ``encoder.moduleConv1.0.weight`` is
    ``(64, (t_length-1)*c, 3, 3)``, ``encoder.moduleConv4.3.weight`` is ``(fdim, fdim, 3, 3)``,
    ``decoder.moduleConv.0.weight`` is ``(512, mdim, 3, 3)``, each cell's ``conv_h.0.weight``
    is ``(4*hidden, hidden, 3, 3)``. Sizes whose key is absent are left out (the strict load
    then names the key).
    """
    sizes: dict[str, int] = {}
    frame_conv = state_dict.get("pred.encoder.0.weight")
    stacked_conv = state_dict.get("encoder.moduleConv1.0.weight")
    if frame_conv is not None and frame_conv.dim() == 4:
        sizes["channels"] = frame_conv.shape[1]
        if stacked_conv is not None and stacked_conv.dim() == 4:
            sizes["t_length"] = stacked_conv.shape[1] // frame_conv.shape[1] + 1
    query_conv = state_dict.get("encoder.moduleConv4.3.weight")
    if query_conv is not None and query_conv.dim() == 4:
        sizes["fdim"] = query_conv.shape[0]
    read_conv = state_dict.get("decoder.moduleConv.0.weight")
    if read_conv is not None and read_conv.dim() == 4:
        sizes["mdim"] = read_conv.shape[1]
    hidden_conv = state_dict.get("pred.convlstm_list.0.conv_h.0.weight")
    if hidden_conv is not None and hidden_conv.dim() == 4:
        sizes["hidden"] = hidden_conv.shape[1]
    layers = {name.split(".")[2] for name in state_dict if name.startswith("pred.convlstm_list.")}
    if layers:
        sizes["num_layers"] = len(layers)
    return sizes


def load_reference_checkpoint(
    model_path: str | os.PathLike,
    items_path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    allow_pickled_model: bool = True,
    **model_kwargs: int,
) -> tuple[LGNNet, torch.Tensor]:
    """Load a network and its memory items saved in the reference release's layout.

    The weights file is read with ``torch.load(weights_only=True)`` first, which covers
    ``torch.save(model.state_dict())`` files and ours. The reference release saves the whole
    pickled network (``torch.save(model)``), which ``weights_only`` refuses; if
    ``allow_pickled_model`` is true the file is then read with full unpickling, which can
    run code from the file, so only do that with files you trust. Classes the unpickler
    cannot import (the reference's own network classes) are replaced by empty modules,
    which is enough to recover their weights.

    Args:
        model_path: the weights file (state_dict, checkpoint dict or pickled network).
        items_path: the memory items file, ``(msize, mdim)`` tensor.
        map_location: the device for the returned model and items (files are read on the
            CPU first, so checkpoints saved from a GPU load on any machine).
        allow_pickled_model: permit the full-unpickling fallback described above.
        **model_kwargs: :class:`LGNNet` sizes; any not given are inferred from the tensors
            (``msize`` from the items).

    Returns:
        ``(model, items)``: the model in eval mode and the fp32 items.

    Raises:
        InputError: a file is missing or unreadable, or its names/shapes do not fit.
    """
    model_path = _existing_file(model_path, "model weights")
    items_path = _existing_file(items_path, "memory items")
    state = extract_state_dict(
        _torch_load(model_path, "cpu", allow_pickled_model), source=str(model_path)
    )
    raw_items = _torch_load(items_path, "cpu", allow_pickled_model=False)
    if not isinstance(raw_items, torch.Tensor) or raw_items.dim() != 2:
        found = _shape(raw_items) if isinstance(raw_items, torch.Tensor) else type(raw_items)
        raise InputError(
            f"{items_path}: expected a 2-D memory items tensor (msize, mdim), found {found}; "
            "pass the items file saved beside the weights"
        )

    sizes = infer_model_sizes(state)
    sizes["msize"] = raw_items.shape[0]
    sizes.update(model_kwargs)
    try:
        model = LGNNet(**sizes)
    except ValueError as error:
        raise InputError(
            f"{model_path}: cannot build LGN-Net with sizes {sizes}: {error}"
        ) from error
    load_model_weights(model, state, source=str(model_path))
    items = load_memory_items(raw_items, model.msize, model.mdim, source=str(items_path))

    return model.to(map_location).eval(), items.to(map_location)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A ``checkpoint.pth`` written by ``train.py``, whole (tensors memory-mapped where the
    format allows), checked to hold the weights and the memory items."""
    path = Path(path)
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated, empty or not written by torch.save
        raise InputError(
            f"cannot read the checkpoint {path} ({type(error).__name__}); is it a "
            "checkpoint.pth written by train.py?"
        ) from None
    for entry in ("model", "items"):
        if not isinstance(checkpoint, dict) or entry not in checkpoint:
            raise InputError(
                f"{path} is not a train.py checkpoint (no {entry!r} entry); for a bare "
                "state_dict use --model_dir with --m_items_dir"
            )
    return checkpoint


class LoadedModel(NamedTuple):
    """A network ready for scoring, with what it was trained on."""

    model: LGNNet  # eval mode, on the requested device
    items: torch.Tensor  # (msize, mdim) fp32 memory items, same device
    height: int  # frame size the model scores at, pixels
    width: int
    source: str  # the weights file, for reports and messages
    checkpoint: dict[str, Any]  # train.py's dictionary (a minimal one for reference weights)
    path: Path | None  # the local checkpoint.pth, None for reference-layout weights


def load_for_inference(
    checkpoint: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    m_items_dir: str | os.PathLike | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    channels: int | None = None,
    t_length: int | None = None,
    msize: int | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Build LGN-Net and its memory for scoring, from ``checkpoint`` (a ``checkpoint.pth`` of
    ``train.py``: a path, an ``http(s)://``/``file://`` URL or a published name) or from the
    reference release's pair ``model_dir`` (state_dict) + ``m_items_dir`` (items tensor).

    Sizes left as None come from the checkpoint (reference weights: from the tensors, and
    256x256 frames, the reference default). A frame size that differs from the one a
    checkpoint was trained at is refused: the scores would silently mean something else.

    Raises:
        InputError: one line naming the file or flag and the fix.
    """
    from model.pretrained import resolve_checkpoint

    if checkpoint:
        path: Path | None = resolve_checkpoint(str(checkpoint))
        saved = read_checkpoint(path)
        trained = saved.get("args") or {}
        state_dict, raw_items, source, items_source = (
            saved["model"], saved["items"], str(path), str(path)
        )  # fmt: skip
        for flag, given, name in (("--h", height, "h"), ("--w", width, "w")):
            if given is not None and name in trained and given != trained[name]:
                raise InputError(
                    f"{flag} {given} differs from the {trained['h']}x{trained['w']} frames "
                    f"{path} was trained at; drop --h/--w (the size is read from the checkpoint)"
                )
    elif model_dir and m_items_dir:
        path, trained = None, {}
        state_dict = _read_weights_file(model_dir, "--model_dir")
        raw_items = _read_weights_file(m_items_dir, "--m_items_dir")
        source, items_source = str(model_dir), str(m_items_dir)
    else:
        raise InputError("give --checkpoint, or both --model_dir and --m_items_dir")
    state_dict = extract_state_dict(state_dict, source)
    if not isinstance(raw_items, torch.Tensor):
        raise InputError(
            f"{items_source}: the memory items are a {type(raw_items).__name__}, not a tensor; "
            "pass the items file saved beside the weights (keys.pt)"
        )

    inferred = infer_model_sizes(state_dict)
    height = height or trained.get("h", 256)
    width = width or trained.get("w", 256)
    channels = channels or trained.get("c") or inferred.get("channels", 3)
    t_length = t_length or trained.get("t_length") or inferred.get("t_length", 5)
    msize = msize or trained.get("msize") or int(raw_items.shape[0])
    # The weights fix the item dimension, so items of another one are reported as such.
    dim = trained.get("mdim") or inferred.get("mdim")
    dim = dim or (int(raw_items.shape[-1]) if raw_items.dim() == 2 else 512)
    for flag, value in (("--h", height), ("--w", width)):
        if value <= 0 or value % 8:
            raise InputError(f"{flag} {value} must be a positive multiple of 8")
    layers = {key: inferred[key] for key in ("hidden", "num_layers") if key in inferred}
    model = LGNNet(channels=channels, t_length=t_length, msize=msize, fdim=dim, mdim=dim, **layers)
    load_model_weights(model, state_dict, source=source)
    items = load_memory_items(raw_items, msize, dim, source=items_source)
    if path is None:  # what detect.py's calibration stores beside reference weights
        saved = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "items": items.detach().cpu(),
            "args": {"h": height, "w": width, "c": channels, "t_length": t_length,
                     "msize": msize, "fdim": dim, "mdim": dim},
        }  # fmt: skip
    model = model.to(device).eval()
    return LoadedModel(model, items.to(device), height, width, source, saved, path)


def _read_weights_file(path: str | os.PathLike, flag: str) -> Any:
    """``torch.load`` of a weights or items file; a missing or unreadable one names ``flag``.
    A whole pickled network of a class that cannot be imported (the reference release's
    ``torch.save(model)``) is read as in :func:`load_reference_checkpoint`."""
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise InputError(f"{flag} {path} {what}; give the file's path")
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle
        )
    except Exception as error:  # truncated, empty or not written by torch.save
        raise InputError(
            f"cannot read the {flag} file {path} ({type(error).__name__}); it may be damaged "
            "or not written by torch.save"
        ) from None
