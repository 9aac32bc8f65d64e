"""Train LGN-Net on the normal training videos of a benchmark (or the bundled demo scene).

Example::

    python train.py --dataset_type ped2 --dataset_path ./datasets --exp_dir log

Writes ``exp/<dataset_type>/<exp_dir>/``: ``model.pth`` and ``keys.pt`` (reference layout),
``checkpoint.pth`` (everything ``--resume`` needs), ``config.json`` and ``log.jsonl``.

Several GPUs or machines: launch the same command with ``torchrun`` (DistributedDataParallel;
``--batch_size`` is then per process)::

    torchrun --nproc_per_node 4 train.py --dataset_type ped2 --dataset_path ./datasets
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import distributed_training
from data.datasets import dataset_dir_for
from data.frames import FrameCache, FrameWindowDataset, find_split_dir, list_videos
from model import LGNNet, init_memory_items
from model.checkpoint import load_memory_items, load_model_weights
from utils import (
    InputError,
    atomic_write,
    autocast,
    resolve_device,
    resolve_precision,
    run_cli,
)

DATASET_TYPES = ("ped2", "avenue", "shanghai", "demo")
# What save_run_state writes and --resume reads back.
RESUME_ENTRIES = ("model", "items", "optimizer", "scheduler", "epoch", "step", "rng")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("LGN-Net training", add_help=True)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES)
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    data.add_argument("--h", type=int, default=256, help="frame height fed to the model")
    data.add_argument("--w", type=int, default=256, help="frame width fed to the model")
    data.add_argument("--c", type=int, default=3, help="channels per frame")
    data.add_argument("--t_length", type=int, default=5, help="frames per window (last = target)")

    model = parser.add_argument_group("model")
    model.add_argument("--fdim", type=int, default=512, help="query feature dimension")
    model.add_argument("--mdim", type=int, default=512, help="memory item dimension")
    model.add_argument("--msize", type=int, default=10, help="number of memory items")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=int, default=6)
    optim.add_argument("--epochs", type=int, default=60)
    optim.add_argument("--lr", type=float, default=2e-4)
    optim.add_argument("--loss_compact", type=float, default=10.0, help="compactness weight")
    optim.add_argument("--loss_separate", type=float, default=5.0, help="separateness weight")
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs with native bf16, AMP on CUDA, else fp32",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--exp_dir", default="log", help="run name under exp/<dataset_type>/")
    run.add_argument("--output_root", default="exp", help="root folder of all runs")
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from a checkpoint.pth (default: the run's own)",
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--compile", action="store_true", help="torch.compile the model (worth it on CUDA)"
    )
    run.add_argument(
        "--calibrate",
        action="store_true",
        help="after training, score the training videos once more (one inference pass) and "
        "store normal-data score statistics in checkpoint.pth for detect.py",
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks for input errors")

    multi = parser.add_argument_group("several processes (under torchrun)")
    multi.add_argument(
        "--sync_bn", action="store_true", help="SyncBatchNorm: batch statistics over all GPUs"
    )
    multi.add_argument(
        "--sync_check_every",
        type=int,
        default=0,
        metavar="N",
        help="every N steps and at the end, verify that the memory items and weights are "
        "identical on all processes, stopping with an error if not (debugging; 0: off)",
    )
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject flag values the model cannot use, naming the flag."""
    for flag in ("h", "w"):
        value = getattr(args, flag)
        if value <= 0 or value % 8:
            raise InputError(f"--{flag} {value} must be a positive multiple of 8")
    for flag in ("batch_size", "epochs", "msize", "c"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.sync_check_every < 0:
        raise InputError(f"--sync_check_every must be 0 or positive, got {args.sync_check_every}")
    if args.t_length < 2:
        raise InputError(f"--t_length must be at least 2, got {args.t_length}")
    if args.fdim != args.mdim:
        raise InputError(f"--fdim ({args.fdim}) must equal --mdim ({args.mdim})")


def build_model(args: argparse.Namespace) -> LGNNet:
    return LGNNet(
        channels=args.c, t_length=args.t_length, msize=args.msize, fdim=args.fdim, mdim=args.mdim
    )


def epoch_batches(num_windows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled, last-partial-dropped batches of one epoch, a pure function of
    (seed, epoch) so a resumed run sees exactly the batches an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_windows, generator=generator).tolist()
    usable = num_windows - num_windows % batch_size
    return [order[i : i + batch_size] for i in range(0, usable, batch_size)]


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a signal ends training
    with a saved checkpoint instead of a torn one."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.signal_name is not None


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    items: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    args: argparse.Namespace,
    epoch: int,
    start_step: int = 0,
    stop: StopRequested | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, dict[str, float], int]:
    """One pass over ``loader``'s batches.

    Args:
        model: an ``LGNNet`` or, under torchrun, ``distributed_training.wrap_model``'s wrapper.
        items: memory items ``(msize, mdim)`` before the epoch.
        start_step: index of the first batch (after a mid-epoch resume).
        stop: checked after every step; training stops early when set (on any process:
            all processes stop after the same step).

    Returns:
        ``(items, mean_losses, steps_done)``, where ``steps_done`` counts from the epoch start
        and the losses are pooled over all processes.
    """
    model.train()
    dtype = resolve_precision(args.precision, device)
    totals = {"loss": 0.0, "pixel": 0.0, "compact": 0.0, "separate": 0.0}
    count = 0
    step = start_step
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=not distributed_training.is_main(),
    )
    input_channels = (args.t_length - 1) * args.c
    for windows in bar:
        windows = windows.to(device, non_blocking=True)
        with autocast(device, dtype):
            # Through __call__ (not forward_train) so a torch.compile'd model runs compiled.
            out = model(windows[:, :input_channels], items)
            pixel = F.mse_loss(out.prediction.float(), windows[:, input_channels:].float())
            loss = (
                pixel + args.loss_compact * out.compactness + args.loss_separate * out.separateness
            )
        if not torch.isfinite(loss):
            raise InputError(
                f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                "checkpoints already written are kept; try a lower --lr or --precision fp32"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        items = out.items
        step += 1
        count += 1
        if args.sync_check_every and step % args.sync_check_every == 0:
            check_processes_in_sync(model, items, f"after epoch {epoch + 1}, step {step}")
        for key, value in (
            ("loss", loss),
            ("pixel", pixel),
            ("compact", out.compactness),
            ("separate", out.separateness),
        ):
            totals[key] += float(value.detach())
        bar.set_postfix({k: f"{v / count:.4f}" for k, v in totals.items()})
        if distributed_training.any_rank(bool(stop)):
            break
    bar.close()
    return items, distributed_training.mean_over_ranks(totals, count), step


def check_processes_in_sync(model: torch.nn.Module, items: torch.Tensor, where: str) -> None:
    """``--sync_check_every``: stop with an error unless every process holds the same memory
    items and weights (a no-op outside torchrun)."""
    if not distributed_training.is_distributed():
        return
    digest = distributed_training.parameter_digest(model.parameters())
    distributed_training.check_in_sync({"memory items": items, "weights": digest}, where)
    if distributed_training.is_main():
        tqdm.write(
            f"sync check {where}: memory items and weights identical on "
            f"{distributed_training.world_size()} processes",
            file=sys.stderr,
        )


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
) -> None:
    """Write ``checkpoint.pth`` (resumable state at ``epoch``/``step``) and the reference-layout
    ``model.pth`` + ``keys.pt``, each atomically.

    Under torchrun every process calls this: rank 0 writes (with every process's RNG state)
    while the others wait, so none exits before the files are complete.
    """
    rng_by_rank = distributed_training.gather_to_main(rng_state())
    if distributed_training.is_main():
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        items_cpu = items.detach().cpu()
        checkpoint = {
            "model": weights,
            "items": items_cpu,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "args": vars(args),
            "rng": rng_by_rank[0],
            # A mid-epoch step index means "batches of this many processes' shards".
            "world_size": len(rng_by_rank),
            "rng_by_rank": rng_by_rank,
        }
        atomic_write(run_dir / "checkpoint.pth", lambda p: torch.save(checkpoint, p))
        atomic_write(run_dir / "model.pth", lambda p: torch.save(weights, p))
        atomic_write(run_dir / "keys.pt", lambda p: torch.save(items_cpu, p))
    distributed_training.barrier()


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(args: argparse.Namespace) -> Path:
    run_dir = Path(args.output_root) / args.dataset_type / args.exp_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"cannot write to the output folder {run_dir} ({error.strerror}); "
            "choose another with --output_root/--exp_dir"
        ) from None
    return run_dir


def load_resume_state(args: argparse.Namespace, run_dir: Path) -> dict[str, Any] | None:
    if args.resume is None:
        return None
    path = run_dir / "checkpoint.pth" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        if args.resume == "auto":
            print(f"no checkpoint at {path} yet; starting a new run", file=sys.stderr)
            return None
        raise InputError(f"--resume checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which one
        raise InputError(
            f"cannot read the checkpoint {path} ({type(error).__name__}); "
            "it may be damaged: resume from another file or start anew"
        ) from None
    missing = [key for key in RESUME_ENTRIES if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(
            f"{path} is not a checkpoint.pth written by train.py (it lacks "
            f"{', '.join(map(repr, missing))}); resume from a run's checkpoint.pth "
            "(model.pth and keys.pt hold weights only)"
        )
    # Items of another --msize/--mdim would otherwise train on silently with the wrong size.
    state["items"] = load_memory_items(state["items"], args.msize, args.mdim, source=str(path))
    return state


def exit_for_signal(stop: StopRequested, run_dir: Path, when: str) -> NoReturn:
    """End the process after a signal, once the checkpoint is saved (on every process, as
    the signal may have reached only another one)."""
    if distributed_training.is_main():
        print(
            f"{stop.signal_name or 'stop requested by another process'}: saved "
            f"{run_dir / 'checkpoint.pth'} {when}; continue with --resume",
            file=sys.stderr,
        )
    sys.exit(130 if stop.signal_name == "SIGINT" else 143)


def main(args: argparse.Namespace) -> Path:
    """Train; returns the run folder. Under torchrun every process runs this, as one
    DistributedDataParallel replica; without it a single process trains alone."""
    validate_args(args)
    device = distributed_training.setup(resolve_device(args.device))
    try:
        return train_this_process(args, device)
    finally:
        distributed_training.teardown()


def train_this_process(args: argparse.Namespace, device: torch.device) -> Path:
    """The training run of this process (of ``distributed_training.world_size()``)."""
    dtype = resolve_precision(args.precision, device)
    if args.sync_bn and device.type != "cuda":
        raise InputError("--sync_bn needs CUDA (SyncBatchNorm has no CPU version); drop it on CPU")
    rank, world_size = distributed_training.rank(), distributed_training.world_size()
    is_main = distributed_training.is_main()
    # The output folder may exist on rank 0's machine only: rank 0 alone creates and reads it.
    run_dir = distributed_training.share_from_main(lambda: prepare_run_dir(args))
    resume = distributed_training.share_from_main(lambda: load_resume_state(args, run_dir))
    resume_path = run_dir / "checkpoint.pth" if args.resume == "auto" else args.resume
    if resume is not None and resume["step"] and resume.get("world_size", 1) != world_size:
        raise InputError(
            f"{resume_path} was saved mid-epoch by {resume.get('world_size', 1)} processes, "
            f"this run has {world_size}; resume it with as many processes"
        )
    # Per-process seeds; the weights and items then start from rank 0's on every process.
    seed_everything(args.seed + rank)

    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    videos = list_videos(find_split_dir(dataset_dir, "training"))
    cache = FrameCache(args.h, args.w, Path(args.cache_dir) if args.cache_dir else None)
    dataset = FrameWindowDataset(videos, args.h, args.w, args.t_length, cache)
    if len(dataset) < args.batch_size * world_size:
        per_process = f" for each of {world_size} processes" if world_size > 1 else ""
        raise InputError(
            f"{dataset_dir} has {len(dataset)} training windows, fewer than --batch_size "
            f"{args.batch_size}{per_process}; add videos or lower --batch_size"
            + (" or start fewer processes" if world_size > 1 else "")
        )

    model = build_model(args).to(device)
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(args.msize, args.mdim, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    start_epoch, start_step = 0, 0
    if resume is not None:
        load_model_weights(model, resume["model"], source=str(resume_path))
        items = resume["items"].to(device)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        # Checkpoints before multi-process support hold rank 0's state only.
        rng_by_rank = resume.get("rng_by_rank", [resume["rng"]])
        if rank < len(rng_by_rank):
            set_rng_state(rng_by_rank[rank])
        start_epoch, start_step = resume["epoch"], resume["step"]
        if is_main:
            print(f"resuming at epoch {start_epoch + 1}, step {start_step}", file=sys.stderr)
    items = distributed_training.broadcast_from_main(items)

    # Checkpoints are saved from `model`; the DDP and compiled wrappers only run the steps.
    step_model = distributed_training.wrap_model(model, device)
    step_model = torch.compile(step_model) if args.compile else step_model
    if is_main:
        atomic_write(
            run_dir / "config.json",
            lambda p: p.write_text(json.dumps(vars(args), indent=2, default=str)),
        )
        processes = f", {world_size} processes" if world_size > 1 else ""
        print(
            f"training on {len(dataset)} windows from {len(dataset.videos)} videos, "
            f"{args.h}x{args.w}, device {device}{processes}, precision {dtype or 'fp32'} "
            f"-> {run_dir}",
            file=sys.stderr,
        )
    with StopRequested() as stop:
        for epoch in range(start_epoch, args.epochs):
            if world_size == 1:
                batches = epoch_batches(len(dataset), args.batch_size, args.seed, epoch)
            else:
                batches = distributed_training.rank_batches(
                    len(dataset), args.batch_size, args.seed, epoch, rank, world_size
                )
            loader = DataLoader(
                dataset,
                batch_sampler=batches[start_step:],
                num_workers=args.num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
            began = time.time()
            items, losses, step = train_one_epoch(
                step_model, loader, items, optimizer, device, args, epoch, start_step, stop, scaler
            )
            if step < len(batches):  # a signal (to any process) ended the epoch early
                save_run_state(run_dir, model, items, optimizer, scheduler, args, epoch, step)
                exit_for_signal(stop, run_dir, f"at epoch {epoch + 1}, step {step}")
            scheduler.step()
            start_step = 0
            save_run_state(run_dir, model, items, optimizer, scheduler, args, epoch + 1, 0)
            if is_main:
                record = {
                    "epoch": epoch + 1,
                    **losses,
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.time() - began, 2),
                }
                append_log(run_dir / "log.jsonl", record)
                print(
                    f"epoch {epoch + 1}/{args.epochs}: loss {losses['loss']:.5f} "
                    f"(pixel {losses['pixel']:.5f}, compact {losses['compact']:.5f}, "
                    f"separate {losses['separate']:.5f}) in {record['seconds']:.0f}s",
                    file=sys.stderr,
                )
            if distributed_training.any_rank(bool(stop)):
                exit_for_signal(stop, run_dir, f"after epoch {epoch + 1}")
    if args.sync_check_every:
        check_processes_in_sync(step_model, items, "at the end of training")
    if args.calibrate and is_main:
        from detect import calibrate_training_run

        calibrate_training_run(run_dir / "checkpoint.pth", model, items, dataset, dtype)
    return run_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
