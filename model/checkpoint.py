"""The checkpoint format: one dictionary, written with ``torch.save`` and read back as data
only (:func:`common.serialization.load_file`), for training runs, published weights and
everything scoring loads. This module writes it, reads it, checks it, and hands each user what
it needs of it: resuming (:func:`check_resumable`), inference (read by
:mod:`model.weights_file`, which builds the network), publishing (:func:`for_publishing`)
and calibration (:func:`with_calibration`).

Entries of format version 2::

    format          "lgn-net"
    format_version  2
    kind            "training" (resumable) or "inference" (published, or reference weights)
    model           state_dict with the reference release's names (fp16 in published files)
    items           memory items (msize, mdim), fp32
    model_args      ModelConfig.as_dict(): LGNNet(**model_args) rebuilds the network
    frame_size      [height, width] the network was trained at
    epoch, step     epochs finished, and steps into the next one (a mid-epoch stop), else 0
    args            the run's train.py flags (plain values)
    training only   optimizer, scheduler (their state_dicts), rng_by_rank (plain data, one
                    entry per process), world_size
    optional        calibration (detect.py's normal-data statistics, plain data);
                    epoch_totals (saved mid-epoch: the epoch's loss sums, count and seconds
                    so far, plain data, so the resumed epoch's log record is whole)

Version 1 files (written before ``model_args``) are read too: their sizes come from ``args``
and, for the ST-LSTM, from the tensors. Every value is a tensor or plain Python data, so
``torch.load(weights_only=True)`` reads any of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError
from common.files import save_torch
from common.serialization import load_file
from model.config import ModelConfig
from model.lgn_net import LGNNet
from model.weights import extract_state_dict, infer_model_sizes

FORMAT = "lgn-net"
FORMAT_VERSION = 2
TRAINING, INFERENCE = "training", "inference"
# What --resume needs beyond the network (version 1 files hold "rng" instead of per-rank).
RESUME_ENTRIES = ("model", "items", "optimizer", "scheduler", "epoch", "step")


def build(
    model: LGNNet,
    items: torch.Tensor,
    frame_size: tuple[int, int],
    *,
    epoch: int | None = None,
    step: int = 0,
    args: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint of ``model`` and its memory ``items`` (both copied to the CPU).

    Args:
        frame_size: ``(height, width)`` the network was trained at, pixels.
        epoch, step: epochs finished and steps into the next one.
        args: the run's flags (plain values).
        training: ``optimizer``, ``scheduler`` (state_dicts), ``rng_by_rank`` and
            ``world_size`` for a resumable checkpoint; None for weights only.
    """
    checkpoint: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": TRAINING if training else INFERENCE,
        "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "items": items.detach().float().cpu(),
        "model_args": model.config.as_dict(),
        "frame_size": [int(frame_size[0]), int(frame_size[1])],
        "epoch": epoch,
        "step": step,
        "args": dict(args or {}),
    }
    checkpoint.update(training or {})
    return checkpoint


def write(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` the checkpoint to ``path`` atomically (a crash keeps the old file)."""
    save_torch(dict(checkpoint), path)


def _upgraded(saved: dict[str, Any], source: str) -> dict[str, Any]:
    """A version 1 checkpoint (sizes only in ``args``) in version 2's shape."""
    args = saved.get("args") or {}
    sizes = infer_model_sizes(extract_state_dict(saved["model"], source))
    named = {
        "channels": "c",
        "t_length": "t_length",
        "msize": "msize",
        "fdim": "fdim",
        "mdim": "mdim",
    }
    for field, flag in named.items():
        if isinstance(args.get(flag), int):
            sizes[field] = args[flag]
    if isinstance(saved["items"], torch.Tensor) and saved["items"].dim() == 2:
        sizes.setdefault("msize", int(saved["items"].shape[0]))
    upgraded = dict(saved)
    upgraded["model_args"] = ModelConfig.from_dict(sizes, source).as_dict()
    if "h" in args and "w" in args:
        upgraded["frame_size"] = [int(args["h"]), int(args["w"])]
    if "rng" in saved and "rng_by_rank" not in saved:
        upgraded["rng_by_rank"] = [saved["rng"]]
    kind = TRAINING if {"optimizer", "scheduler"} <= set(saved) else INFERENCE
    upgraded.update({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind})
    upgraded.setdefault("step", 0)
    return upgraded


def read(
    path: str | os.PathLike, what: str = "checkpoint", resumable: bool = False
) -> dict[str, Any]:
    """The checkpoint at ``path``, read as data and in version 2's shape (see the module
    notes); tensors memory-mapped where the file allows. With ``resumable`` it must hold
    everything ``--resume`` needs (:func:`check_resumable`).

    Raises:
        InputError: the file is missing, damaged, needs code to be read, or is not a
            checkpoint of this project (one line naming it and the fix).
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise InputError(f"the {what} {path} {problem}; give the checkpoint.pth file")
    saved = load_file(path, what)
    if resumable:
        check_resumable(saved if isinstance(saved, dict) else {}, path)
    for entry in ("model", "items"):
        if not isinstance(saved, dict) or entry not in saved:
            raise InputError(
                f"{path} is not a train.py checkpoint (no {entry!r} entry); give a bare "
                "state_dict as reference weights with its memory items instead (model_dir "
                "with m_items_dir)"
            )
    version = saved.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise InputError(
            f"{path} has checkpoint format {version}, newer than this version reads "
            f"({FORMAT_VERSION}); update the code"
        )
    return _upgraded(saved, str(path)) if version < FORMAT_VERSION else saved


def model_config(saved: Mapping[str, Any], source: str = "checkpoint") -> ModelConfig:
    """The network sizes a checkpoint stores (``model_args``)."""
    return ModelConfig.from_dict(saved["model_args"], f"{source}: model_args")


def frame_size(saved: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(height, width)`` the checkpoint's network was trained at; None when unknown."""
    size = saved.get("frame_size")
    return (int(size[0]), int(size[1])) if size else None


def check_resumable(saved: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`InputError` unless ``saved`` holds everything ``--resume`` needs."""
    missing = [entry for entry in RESUME_ENTRIES if entry not in saved]
    if "rng_by_rank" not in saved and "rng" not in saved:
        missing.append("rng")
    if missing:
        shown = ", ".join(map(repr, missing))
        raise InputError(
            f"{path} is not a checkpoint.pth written by train.py (it lacks {shown}); resume "
            "from a run's checkpoint.pth (model.pth and keys.pt hold weights only)"
        )


# Flags of a run that name folders of the machine it trained on; a published file leaves them out.
LOCAL_PATH_FLAGS = frozenset({"dataset_path", "cache_dir", "output_root", "exp_dir", "resume"})


def for_publishing(saved: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """What inference needs of a finished run: floating-point weights as fp16 (half the
    size; scores move by hundredths of a dB), items in fp32, sizes, flags, epoch and the
    calibration if any; no optimizer, scheduler or RNG states, and none of the flags that name
    the trainer's folders (``LOCAL_PATH_FLAGS``)."""
    if saved.get("step"):
        raise InputError(
            f"{source} was saved mid-epoch (step {saved['step']}); publish a finished run"
        )
    published = {
        key: saved[key]
        for key in (
            "format",
            "format_version",
            "model_args",
            "frame_size",
            "epoch",
            "args",
            "calibration",
        )
        if key in saved
    }
    published["kind"] = INFERENCE
    published["step"] = 0
    if "args" in published:  # the trainer's own folders mean nothing to whoever downloads it
        published["args"] = {
            flag: value for flag, value in published["args"].items() if flag not in LOCAL_PATH_FLAGS
        }
    published["model"] = {
        name: tensor.half() if tensor.is_floating_point() else tensor.clone()
        for name, tensor in saved["model"].items()
    }
    published["items"] = saved["items"].float().clone()
    return published


def with_calibration(saved: Mapping[str, Any], calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint with detect.py's calibration record (plain data) added or replaced."""
    return {**saved, "calibration": dict(calibration)}
