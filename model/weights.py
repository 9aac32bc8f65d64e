"""The reference release's weight layout: reading a network's weights out of whatever holds
them, loading them strictly, reading the network's sizes off them, and the memory items.

Our ``model.pth`` and the reference release's state_dicts share the same parameter names
(197 entries at the paper's sizes), so one strict loader serves both. The reference release
stores no sizes, hence :func:`infer_model_sizes`. Problems with a file raise
:class:`InputError` with one line naming the file, the offending entry and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import InputError
from common.serialization import CyclicNetwork, InertObject, load_file, module_tensors
from model.config import ModelConfig
from model.lgn_net import LGNNet

# Keys under which training scripts commonly nest the weights in a larger checkpoint dict.
_NESTED_WEIGHT_KEYS = ("state_dict", "model")
# DataParallel / DistributedDataParallel wrap the network in an attribute called ``module``.
_WRAPPER_PREFIX = "module."


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def extract_state_dict(
    obj: Any, source: str = "state_dict", _enclosing: frozenset[int] = frozenset()
) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` weights held by ``obj``.

    Accepts a state_dict, a dict nesting one under ``"state_dict"`` or ``"model"``, an
    ``nn.Module``, or a whole network read back as inert stand-ins
    (:func:`common.serialization.load_file` with ``pickled_network``, as the reference
    release's ``torch.save(model)`` files are). A ``module.`` prefix on every name (a
    DataParallel/DDP-wrapped network) is removed.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, InertObject):
        try:
            tensors = module_tensors(obj)
        except CyclicNetwork as cycle:
            raise InputError(
                f"{source}: the pickled network contains itself (its module {cycle.name!r} is "
                "one that holds it), which no network does; the file is damaged or crafted: "
                "pass the network weights file"
            ) from None
        if tensors is None:
            raise InputError(
                f"{source}: holds a pickled {obj.inert_name} that is not a network's state; "
                "pass the network weights file"
            )
        obj = tensors
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{source}: expected a state_dict or a saved model, found {type(obj).__name__}; "
            "pass the network weights file"
        )
    for key in _NESTED_WEIGHT_KEYS:
        nested = obj.get(key)
        if isinstance(nested, Mapping | nn.Module | InertObject):
            if id(nested) in _enclosing | {id(obj)}:
                raise InputError(
                    f"{source}: its {key!r} entry contains itself, so it holds no weights; the "
                    "file is damaged or crafted: pass the network weights file"
                )
            return extract_state_dict(nested, source, _enclosing | {id(obj)})
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
    hint = "check the model sizes (channels, t_length, fdim, hidden) or the file"
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


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` when it is a file; else an InputError naming ``what`` (a flag or a kind of
    file)."""
    path = Path(path)
    if path.is_file():
        return path
    if what.startswith("--"):
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"{what} {path} {problem}; give the file's path")
    raise InputError(f"{what} file not found: {path}; check the path")


def read_weights_file(path: str | os.PathLike, what: str, pickled_network: bool = True) -> Any:
    """What a weights or items file holds, read as data (:func:`load_file`); a whole pickled
    network comes back as inert stand-ins that :func:`extract_state_dict` reads. A missing or
    unreadable file is an :class:`InputError` naming ``what`` (e.g. ``--model_dir``)."""
    return load_file(_existing_file(path, what), f"{what} file", pickled_network)


def load_memory_items(
    items: torch.Tensor | str | os.PathLike,
    msize: int,
    mdim: int,
    source: str | None = None,
    hint: str = "check the number of memory items (msize) or the items file",
) -> torch.Tensor:
    """Validated memory items ``(msize, mdim)`` in fp32, detached.

    Args:
        items: the items tensor, or a file holding it (``torch.save(items, path)``).
        msize, mdim: the expected number of items and their dimension.
        source: name for error messages; defaults to the file path.
        hint: the fix the message names when the shape does not fit.

    Raises:
        InputError: missing/unreadable file, not a tensor, wrong shape (both shapes named)
            or non-finite values.
    """
    if not isinstance(items, torch.Tensor):
        path = _existing_file(items, "memory items")
        source = source or str(path)
        items = load_file(path, "memory items file")
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


def reference_model_config(
    state_dict: Mapping[str, torch.Tensor], items: torch.Tensor, **given: int | None
) -> ModelConfig:
    """The sizes of reference-layout weights: ``given`` where not None, else read off the
    tensors (:func:`infer_model_sizes`; ``msize`` from the items), else the defaults."""
    sizes = infer_model_sizes(state_dict)
    if items.dim() == 2:
        sizes["msize"] = int(items.shape[0])
        sizes.setdefault("mdim", int(items.shape[1]))
    sizes.setdefault("fdim", sizes.get("mdim", ModelConfig.fdim))
    sizes.setdefault("mdim", sizes["fdim"])
    sizes.update({name: value for name, value in given.items() if value is not None})
    return ModelConfig(**sizes)


def load_reference_checkpoint(
    model_path: str | os.PathLike,
    items_path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    allow_pickled_model: bool = True,
    **model_kwargs: int,
) -> tuple[LGNNet, torch.Tensor]:
    """Load a network and its memory items saved in the reference release's layout.

    The weights file may be a state_dict (ours, or ``torch.save(model.state_dict())``), a
    checkpoint dict nesting one, or a whole pickled network (``torch.save(model)``, as the
    reference release saves); all are read as data (:func:`read_weights_file`), never run.

    Args:
        model_path: the weights file.
        items_path: the memory items file, ``(msize, mdim)`` tensor.
        map_location: the device for the returned model and items (files are read on the
            CPU first, so checkpoints saved from a GPU load on any machine).
        allow_pickled_model: accept a whole pickled network (read as inert stand-ins); when
            false only tensors and plain containers are accepted.
        **model_kwargs: :class:`LGNNet` sizes; any not given are inferred from the tensors
            (``msize`` from the items).

    Returns:
        ``(model, items)``: the model in eval mode and the fp32 items.

    Raises:
        InputError: a file is missing or unreadable, or its names/shapes do not fit.
    """
    weights = read_weights_file(model_path, "model weights", allow_pickled_model)
    state = extract_state_dict(weights, str(model_path))
    raw_items = read_weights_file(items_path, "memory items")
    if not isinstance(raw_items, torch.Tensor) or raw_items.dim() != 2:
        found = _shape(raw_items) if isinstance(raw_items, torch.Tensor) else type(raw_items)
        raise InputError(
            f"{items_path}: expected a 2-D memory items tensor (msize, mdim), found {found}; "
            "pass the items file saved beside the weights"
        )
    config = reference_model_config(state, raw_items, **model_kwargs)
    try:
        model = LGNNet.from_config(config)
    except ValueError as error:
        raise InputError(
            f"{model_path}: cannot build LGN-Net with sizes {config}: {error}"
        ) from error
    load_model_weights(model, state, source=str(model_path))
    items = load_memory_items(raw_items, model.msize, model.mdim, source=str(items_path))
    return model.to(map_location).eval(), items.to(map_location)
