"""Which kind of weights file a user gave, read once, and the network built from it.

Two kinds of weights score frames:

- **our checkpoint** (``--checkpoint``): a ``train.py`` run's ``checkpoint.pth`` or a published
  file, one dictionary holding the weights, the memory items, the network's sizes and its
  frame size (the format: :mod:`model.checkpoint`);
- **the reference release's pair** (``--model_dir`` + ``--m_items_dir``): a weights file (a
  state_dict, a dict nesting one, or a whole pickled network as the release saves it) and a
  ``(msize, mdim)`` memory items tensor (``keys.pt``); no sizes are stored, so they are read
  off the tensors (:func:`model.weights.infer_model_sizes`).

The path is one way and each step happens once: the flags decide the kind; each file is read
once as data (:func:`common.serialization.load_file`); the weights are flattened once
(:func:`model.weights.extract_state_dict`); the sizes are decided once; the network is built
and strictly loaded once (:func:`build_network`). This module calls :mod:`model.checkpoint`
and :mod:`model.weights`; neither calls back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from common.errors import InputError
from common.serialization import load_file
from model import checkpoint as checkpoint_format
from model.config import FRAME_SIZE, ModelConfig, check_frame_size
from model.lgn_net import LGNNet
from model.weights import (
    check_memory_items,
    extract_state_dict,
    load_model_weights,
    reference_model_config,
)


class WeightsFile(NamedTuple):
    """What either kind of weights holds, read and flattened, before a network is built."""

    config: ModelConfig  # the sizes to build at (stored or read off the tensors, then overrides)
    state: Mapping[str, torch.Tensor]  # flat state_dict with the reference release's names
    items: Any  # the stored memory items, checked by build_network (a tensor or refused)
    source: str  # the weights file, for messages
    items_source: str  # the items file (the checkpoint itself for ours)
    frame_size: tuple[int, int]  # (height, width) to score at, pixels
    saved: dict[str, Any] | None  # our checkpoint; None for the reference pair


class LoadedModel(NamedTuple):
    """A network ready for scoring, with what it was trained on."""

    model: LGNNet  # eval mode, on the requested device
    items: torch.Tensor  # (msize, mdim) fp32 memory items, same device
    height: int  # frame size the model scores at, pixels
    width: int
    source: str  # the weights file, for reports and messages
    checkpoint: dict[str, Any]  # the checkpoint (built in memory for reference weights)
    path: Path | None  # the local checkpoint file, None for reference-layout weights


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


def read_checkpoint_weights(
    path: str | os.PathLike,
    height: int | None = None,
    width: int | None = None,
    sizes: Mapping[str, int] | None = None,
) -> WeightsFile:
    """One of our checkpoints, read once (:func:`model.checkpoint.read`).

    ``height``/``width`` (pixels), when given, must equal the stored frame size: scores at
    another size would silently mean something else. ``sizes`` override stored sizes (the
    strict load then names any entry that does not fit).
    """
    path = Path(path)
    saved = checkpoint_format.read(path)
    trained = checkpoint_format.frame_size(saved)
    for flag, value, index in (("--h", height, 0), ("--w", width, 1)):
        if trained and value is not None and value != trained[index]:
            raise InputError(
                f"{flag} {value} differs from the {trained[0]}x{trained[1]} frames {path} "
                "was trained at; drop --h/--w (the size is read from the checkpoint)"
            )
    stored = checkpoint_format.model_config(saved, str(path)).as_dict()
    config = ModelConfig(**{**stored, **(sizes or {})})
    size = trained or (height or FRAME_SIZE, width or FRAME_SIZE)
    return WeightsFile(config, saved["model"], saved["items"], str(path), str(path), size, saved)


def read_reference_weights(
    model_dir: str | os.PathLike,
    m_items_dir: str | os.PathLike,
    names: tuple[str, str] = ("model weights", "memory items"),
    sizes: Mapping[str, int] | None = None,
    frame_size: tuple[int, int] = (FRAME_SIZE, FRAME_SIZE),
    allow_pickled_model: bool = True,
) -> WeightsFile:
    """The reference release's pair, each file read once as data.

    Args:
        model_dir: the weights file; a whole pickled network (``torch.save(model)``) is read
            as inert stand-ins unless ``allow_pickled_model`` is false.
        m_items_dir: the ``(msize, mdim)`` memory items tensor file.
        names: how messages name the two files (flags such as ``--model_dir``, or kinds).
        sizes: :class:`LGNNet` sizes that override those read off the tensors.
        frame_size: ``(height, width)`` to score at (the pair does not store one).
    """
    weights_name, items_name = names
    weights = load_file(
        _existing_file(model_dir, weights_name), f"{weights_name} file", allow_pickled_model
    )
    state = extract_state_dict(weights, str(model_dir))
    items = load_file(_existing_file(m_items_dir, items_name), f"{items_name} file")
    if not isinstance(items, torch.Tensor) or items.dim() != 2:
        found = tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__
        raise InputError(
            f"{m_items_dir}: expected a 2-D memory items tensor (msize, mdim), found {found}; "
            "pass the items file saved beside the weights (keys.pt)"
        )
    config = reference_model_config(state, items, **(sizes or {}))
    return WeightsFile(config, state, items, str(model_dir), str(m_items_dir), frame_size, None)


def build_network(weights: WeightsFile) -> tuple[LGNNet, torch.Tensor]:
    """The network built at ``weights.config`` and strictly loaded, on the CPU in eval mode,
    with its checked fp32 memory items ``(msize, mdim)``.

    Raises:
        InputError: the sizes cannot build LGN-Net, an entry is missing, unexpected or of
            another shape, or the items do not fit (one line naming the file).
    """
    try:
        model = LGNNet.from_config(weights.config)
    except ValueError as error:
        raise InputError(
            f"{weights.source}: cannot build LGN-Net with sizes {weights.config}: {error}"
        ) from error
    load_model_weights(model, weights.state, source=weights.source)
    config = weights.config
    items = check_memory_items(weights.items, config.msize, config.mdim, weights.items_source)
    return model.eval(), items


def load_for_inference(
    checkpoint: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    m_items_dir: str | os.PathLike | None = None,
    *,
    height: int | None = None,
    width: int | None = None,
    sizes: Mapping[str, int | None] | None = None,
    device: torch.device | str = "cpu",
    reference_names: tuple[str, str] = ("--model_dir", "--m_items_dir"),
) -> LoadedModel:
    """Build LGN-Net and its memory for scoring, from a local ``checkpoint`` file (ours:
    names and URLs are resolved by :func:`model.pretrained.resolve_checkpoint` first) or from
    the reference release's pair ``model_dir`` (weights) + ``m_items_dir`` (items tensor).

    ``sizes`` (``channels``, ``t_length``, ``msize``; None values ignored) override the
    stored ones, and the strict load then names any entry that does not fit;
    ``reference_names`` are how messages name the reference pair. The frame size is the
    checkpoint's (reference weights: ``height``/``width``, else 256x256, the reference
    default); another one is refused: the scores would silently mean something else.

    Raises:
        InputError: one line naming the file or flag and the fix.
    """
    check_frame_size(height, width)
    given = {name: value for name, value in (sizes or {}).items() if value is not None}
    if checkpoint:
        weights = read_checkpoint_weights(checkpoint, height, width, given)
    elif model_dir and m_items_dir:
        size = (height or FRAME_SIZE, width or FRAME_SIZE)
        weights = read_reference_weights(model_dir, m_items_dir, reference_names, given, size)
    else:
        raise InputError("give a checkpoint, or both reference files (weights and memory items)")
    model, items = build_network(weights)
    # Reference weights get the checkpoint detect.py's calibration writes out beside them.
    saved = weights.saved or checkpoint_format.build(model, items, weights.frame_size)
    path = Path(checkpoint) if checkpoint else None
    height, width = weights.frame_size
    model, items = model.to(device), items.to(device)
    return LoadedModel(model, items, height, width, weights.source, saved, path)


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
    reference release saves); all are read as data, never run.

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
    weights = read_reference_weights(
        model_path, items_path, sizes=model_kwargs, allow_pickled_model=allow_pickled_model
    )
    model, items = build_network(weights)
    return model.to(map_location), items.to(map_location)
