"""What ``train.py --resume`` continues with: the settings the run was saved with, read from
its checkpoint, except for the flags the command line gives explicitly (a ``--config NAME``'s
values count as given only for a new run).

A given flag that would make the run another run (its network, its data, its batches, its
optimiser) is refused in one line naming the saved value; one that only changes how the rest
of the run trains is applied and said in one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import cli
from common.errors import InputError

# Kept from the run; refused when given with another value. The frame size and the sizes
# define the network; the data set, its windows; --batch_size and --seed, the batches of every
# epoch (a mid-epoch step count refers to them); --lr, the optimiser and schedule, whose saved
# state continues (a resumed Adam would silently keep the saved rate).
FIXED = ("dataset_type", "h", "w", "c", "t_length", "fdim", "mdim", "msize", "batch_size")
FIXED += ("seed", "lr")
# Kept from the run unless given; a given value is applied (--epochs: the cosine schedule of a
# run of that length, see run_state.resumed_scheduler).
CHANGEABLE = ("epochs", "loss_compact", "loss_separate", "precision", "dataset_path")
CHANGEABLE += ("calibrate", "sync_bn")
# How this process runs, not what the run is: this command's values (its defaults when not
# given), never the saved ones, since the run may continue on another machine; the windows
# and the numbers do not depend on them beyond floating-point rounding.
PER_COMMAND = ("device", "num_workers", "cache_dir", "frames", "fast_path", "compile")
PER_COMMAND += ("sync_check_every", "debug", "tensorboard", "eval_every")
# Never taken from the run: what to resume and where (resume, overwrite, config, output_root,
# exp_dir).

# Checkpoint entries that hold the network's true sizes (model_args) under their flag names.
MODEL_ARG_FLAGS = {"channels": "c", "t_length": "t_length", "msize": "msize"}
MODEL_ARG_FLAGS |= {"fdim": "fdim", "mdim": "mdim"}
PATH_FLAGS = ("dataset_path", "cache_dir")


def saved_settings(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The run's flag values (flag destination -> value) a checkpoint holds: the sizes from
    ``model_args`` and ``frame_size`` (what the network really is), the rest from ``args``."""
    settings = dict(saved.get("args") or {})
    for field, flag in MODEL_ARG_FLAGS.items():
        if field in (saved.get("model_args") or {}):
            settings[flag] = saved["model_args"][field]
    if saved.get("frame_size"):
        settings["h"], settings["w"] = (int(value) for value in saved["frame_size"])
    return settings


def _same(flag: str, given: Any, kept: Any) -> bool:
    if flag in PATH_FLAGS and given is not None and kept is not None:
        return Path(given).resolve() == Path(kept).resolve()
    return given == kept


def _shown(flag: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{flag}" if value else f"no --{flag}"
    return f"--{flag} {value}"


def resumed_args(
    args: argparse.Namespace, saved: Mapping[str, Any], source: str | Path
) -> tuple[argparse.Namespace, list[str]]:
    """``args`` with the run's saved settings (:func:`saved_settings` of the checkpoint at
    ``source``) in place of every :data:`FIXED` and :data:`CHANGEABLE` flag the command line
    did not give (:func:`common.cli.given_flags`), and the lines to print about it.

    Raises:
        InputError: a :data:`FIXED` flag is given with another value than the run's (one
            line naming the given and the saved values).
    """
    given, run = cli.given_flags(args), saved_settings(saved)
    known = [flag for flag in (*FIXED, *CHANGEABLE, *PER_COMMAND) if flag in run]
    differs = [
        flag for flag in known if flag in given and not _same(flag, getattr(args, flag), run[flag])
    ]
    refused = [flag for flag in differs if flag in FIXED]
    if refused:
        asked = ", ".join(_shown(flag, getattr(args, flag)) for flag in refused)
        kept = ", ".join(_shown(flag, run[flag]) for flag in refused)
        raise InputError(
            f"cannot resume {source} with {asked}: the run has {kept}, which a resumed run "
            "keeps; drop those flags, or start a new run (another --exp_dir, or --overwrite)"
        )
    merged = argparse.Namespace(**vars(args))
    for flag in (*FIXED, *CHANGEABLE):
        if flag in run and flag not in given:
            setattr(merged, flag, run[flag])
    lines = []
    if "config" in given:
        lines.append(
            f"--config {args.config} ignored: a resumed run keeps the settings it was saved "
            "with (give a flag to change one)"
        )
    if differs:
        changes = ", ".join(
            f"{_shown(flag, getattr(args, flag))} (the run had {_shown(flag, run[flag])})"
            for flag in differs
        )
        lines.append(f"resuming {source} with {changes}")
    return merged, lines
