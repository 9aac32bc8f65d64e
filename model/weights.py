"""The reference release's weight layout: flattening a network's weights out of whatever
holds them, loading them strictly, reading the network's sizes off them, and checking the
memory items. Files are read elsewhere, once (:mod:`model.weights_file`).

Our ``model.pth`` and the reference release's state_dicts share the same parameter names
(197 entries at the paper's sizes), so one strict loader serves both. The reference release
stores no sizes, hence :func:`infer_model_sizes`. Problems with a file raise
:class:`InputError` with one line naming the file, the offending entry and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from common.errors import InputError
from common.serialization import CyclicNetwork, InertObject, module_tensors
from model.config import ModelConfig

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
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict"
) -> None:
    """Strictly load ``state_dict`` into ``model`` (names and shapes must match exactly).

    Args:
        model: the bare network to fill, e.g. an :class:`LGNNet` (not a DDP wrapper).
        state_dict: a flat state_dict, ours or the reference's (same names); flatten
            anything else first, once (:func:`extract_state_dict`).
        source: what to call the weights in error messages (usually the file path).

    Raises:
        InputError: one line naming ``source`` and the first entry, in the model's order, that
            is missing or has the wrong shape (with both shapes), else the first unexpected one.
    """
    state = state_dict
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


def check_memory_items(
    items: torch.Tensor,
    msize: int,
    mdim: int,
    source: str = "memory items",
    hint: str = "check the number of memory items (msize) or the items file",
) -> torch.Tensor:
    """Memory items ``(msize, mdim)`` checked, detached and in fp32.

    Args:
        items: the stored items tensor (files are read by :mod:`model.weights_file`).
        msize, mdim: the expected number of items and their dimension.
        source: name for error messages (usually the file).
        hint: the fix the message names when the shape does not fit.

    Raises:
        InputError: not a tensor, wrong shape (both shapes named) or non-finite values.
    """
    if not isinstance(items, torch.Tensor):
        raise InputError(
            f"{source}: expected a memory items tensor, found {type(items).__name__}; "
            "pass the file written by torch.save(items, path)"
        )
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
