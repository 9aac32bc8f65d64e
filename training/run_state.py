"""What a training run keeps on disk: ``checkpoint.pth`` (everything ``--resume`` needs, in
the format of :mod:`model.checkpoint`), the reference-layout ``model.pth`` + ``keys.pt``,
``config.json``, the per-epoch log, and the RNG states (as plain data)."""

from __future__ import annotations

import argparse
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InputError
from common.files import atomic_write, remove_stale_temporaries, save_torch, write_text
from common.outputs import check_outputs, check_replaceable
from model import LGNNet
from model import checkpoint as checkpoint_format
from model.weights import check_memory_items, load_model_weights
from training import distributed


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) generator states as plain data (ints,
    lists, tensors), which any checkpoint reader accepts."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (also the NumPy tuples of older checkpoints)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key}}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_run_state(
    run_dir: Path,
    model: LGNNet,
    items: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    args: argparse.Namespace,
    epoch: int,
    step: int,
    epoch_totals: dict[str, Any] | None = None,
) -> None:
    """Write ``checkpoint.pth`` (resumable state at ``epoch``/``step``), ``config.json`` (the
    flags) and the reference-layout ``model.pth`` + ``keys.pt``, each atomically, after
    removing the temporaries a killed write of this run left. ``epoch_totals`` (plain data,
    saved mid-epoch: ``training.loop.EpochTotals.as_data``) lets the resumed epoch log the
    whole epoch; checkpoints without it still resume.

    Under torchrun every process calls this: rank 0 writes (with every process's RNG state)
    while the others wait, so none exits before the files are complete.
    """
    rng_by_rank = distributed.gather_to_main(rng_state())
    if distributed.is_main():
        # Left by a run of this folder killed mid-write (up to a checkpoint's size each); the
        # run folder's lock says no other process is writing them now.
        remove_stale_temporaries(run_dir, RUN_FILES)
        flags = run_flags(args)
        training = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_by_rank": rng_by_rank,
            # A mid-epoch step index means "batches of this many processes' shards".
            "world_size": len(rng_by_rank),
        }
        if epoch_totals is not None:
            training["epoch_totals"] = epoch_totals
        checkpoint = checkpoint_format.build(
            model, items, (args.h, args.w), epoch=epoch, step=step, args=flags, training=training
        )
        checkpoint_format.write(checkpoint, run_dir / "checkpoint.pth")
        write_text(run_dir / "config.json", json.dumps(flags, indent=2))
        save_torch(checkpoint["model"], run_dir / "model.pth")
        save_torch(checkpoint["items"], run_dir / "keys.pt")
    distributed.barrier()


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run's flags as plain JSON-able values (what checkpoints and config.json store)."""
    plain = (str, int, float, bool, type(None))
    return {
        key: value if isinstance(value, plain) else str(value)
        for key, value in vars(args).items()
        if key not in ("typed_flags", "given_flags")
    }


def append_log(path: Path, record: dict[str, Any], keep_through_epoch: int | None = None) -> None:
    """Add one epoch's record to ``log.jsonl``. With ``keep_through_epoch`` (the first record
    of a run or of a resumed run), records of later epochs, left by a replaced run or by the
    part of a run after the checkpoint resumed from, are dropped first, so the log never holds
    two records of one epoch."""
    if keep_through_epoch is not None and path.exists():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= keep_through_epoch:
                    kept.append(line + "\n")
            except ValueError:
                continue  # a line torn by a crash
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RUN_FILES = ("checkpoint.pth", "model.pth", "keys.pt", "config.json", "log.jsonl")
# What each run file is (common.outputs kinds): a run replaces only files of these kinds.
RUN_FILE_KINDS = dict(
    zip(RUN_FILES, ("checkpoint", "torch", "torch", "json", "jsonl"), strict=True)
)


def check_run_dir(args: argparse.Namespace, inputs: dict[str, Any] | None = None) -> Path:
    """The run folder ``<output_root>/<dataset_type>/<exp_dir>``, checked before any work:
    it must be writable, and may hold an earlier run only with ``--resume`` (continue it) or
    ``--overwrite`` (replace it). Nothing is created here: train.py's lock on the folder
    creates it, and removes it again when the run ends before its first checkpoint.
    ``inputs`` (flag -> path) are what the run reads: the folder may not contain, be or lie
    inside any of them (see :func:`common.outputs.check_outputs`)."""
    run_dir = Path(args.output_root) / args.dataset_type / args.exp_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"the run folder {run_dir} is a file; choose another --exp_dir")
    check_outputs(folders={"--output_root/--exp_dir": run_dir}, inputs=inputs)
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and args.resume is None and not getattr(args, "overwrite", False):
        raise InputError(
            f"{run_dir} already holds a run ({', '.join(existing)}); continue it with --resume, "
            "replace it with --overwrite, or choose another --exp_dir"
        )
    for name in existing:
        check_replaceable("--output_root/--exp_dir", run_dir / name, RUN_FILE_KINDS[name])
    return run_dir


def resumed_scheduler(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], epochs: int, start_epoch: int
) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine schedule of a resumed run, at ``start_epoch``.

    With the same ``--epochs`` as the checkpoint's, its saved state continues exactly. With
    another, the schedule is the one a run of ``epochs`` epochs would have had from the start
    (cosine from the initial learning rate to 0 over ``epochs``), advanced to ``start_epoch``:
    a finished run resumed with more epochs goes on training instead of staying at lr 0.
    """
    if saved.get("T_max") == epochs:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        scheduler.load_state_dict(saved)
        return scheduler
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    with warnings.catch_warnings():  # stepping before any optimizer.step() is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            scheduler.step()
    return scheduler


def load_resume_state(
    args: argparse.Namespace, run_dir: Path, world_size: int = 1
) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` names (None without ``--resume``, or when the run's own
    does not exist yet), checked to be train.py's, to fit the model's memory size, to leave
    epochs to train, and (saved mid-epoch) to come from ``world_size`` processes."""
    if args.resume is None:
        return None
    path = run_dir / "checkpoint.pth" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        if args.resume == "auto":
            print(f"no checkpoint at {path} yet; starting a new run", file=sys.stderr)
            return None
        raise InputError(f"--resume checkpoint {path} does not exist; check the path")
    state = checkpoint_format.read(path, resumable=True)
    if (state["epoch"], state["step"]) >= (args.epochs, 0):
        raise InputError(
            f"{path} has already trained {state['epoch']} epochs, so --epochs "
            f"{args.epochs} leaves nothing to do; give a larger --epochs to train on"
        )
    if state["step"] and state.get("world_size", 1) != world_size:
        raise InputError(
            f"{path} was saved mid-epoch by {state.get('world_size', 1)} processes, "
            f"this run has {world_size}; resume it with as many processes"
        )
    state["path"] = str(path)
    # Items of another --msize/--mdim would otherwise train on silently with the wrong size.
    state["items"] = check_memory_items(
        state["items"], args.msize, args.mdim, source=str(path),
        hint="give the --msize and --mdim the run was trained with",
    )  # fmt: skip
    return state


def restore_run_state(
    state: dict[str, Any],
    model: LGNNet,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Load a :func:`load_resume_state` checkpoint into ``model`` and ``optimizer`` and this
    process's RNGs; returns the memory items (on the model's device) and the scheduler of a
    run of ``epochs`` epochs at the checkpoint's epoch (:func:`resumed_scheduler`)."""
    load_model_weights(model, state["model"], source=state["path"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # this run's implementation, not the saved run's
        group["fused"], group["foreach"] = (fused or None), None
    scheduler = resumed_scheduler(optimizer, state["scheduler"], epochs, state["epoch"])
    # Checkpoints before multi-process support hold rank 0's state only.
    rng_by_rank = state["rng_by_rank"]
    if distributed.rank() < len(rng_by_rank):
        set_rng_state(rng_by_rank[distributed.rank()])
    device = next(model.parameters()).device
    return state["items"].to(device), scheduler
