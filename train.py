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
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch
from torch.utils.data import DataLoader

from data.datasets import DATASET_TYPES, dataset_dir_for
from data.device_frames import DeviceWindows
from data.frame_store import add_frames_flag, choose_frames
from data.frames import FrameWindowDataset, find_split_dir, list_videos
from model import LGNNet, init_memory_items
from training import distributed
from training.loop import (
    StepModel,
    StopRequested,
    check_processes_in_sync,
    epoch_batches,
    train_one_epoch,
)
from training.run_state import (
    append_log,
    check_run_dir,
    load_resume_state,
    restore_run_state,
    save_run_state,
    seed_everything,
)
from utils import (
    InputError,
    argument_parser,
    finite_number,
    precision_name,
    resolve_device,
    resolve_precision,
    run_cli,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argument_parser("train.py", "Train LGN-Net on a benchmark's normal training videos.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES, help="benchmark")
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    add_frames_flag(data)
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
    optim.add_argument("--batch_size", type=int, default=6, help="windows per step")
    optim.add_argument("--epochs", type=int, default=60, help="epochs of the cosine schedule")
    optim.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    optim.add_argument("--loss_compact", type=float, default=10.0, help="compactness weight")
    optim.add_argument("--loss_separate", type=float, default=5.0, help="separateness weight")
    optim.add_argument("--seed", type=int, default=0, help="initialisation and shuffling")
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
        metavar="CHECKPOINT",
        help="continue from a checkpoint.pth (default: the run's own); with another --epochs "
        "the cosine schedule becomes that of a run of --epochs epochs",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in the same folder"
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--fast_path",
        default="auto",
        choices=("auto", "off"),
        help="auto: on CUDA, torch.compile the training step, keep the frames on the GPU (when "
        "they fit), fused Adam, cuDNN autotuning, and read the losses back every 25 steps; "
        "off: the plain eager path. CPU training is the same either way",
    )
    run.add_argument(
        "--compile", action="store_true", help="torch.compile the training step on any device"
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
    """Reject flag values the model or the optimiser cannot use, naming the flag, before
    anything is read or written."""
    for flag in ("h", "w"):
        value = getattr(args, flag)
        if value <= 0 or value % 8:
            raise InputError(f"--{flag} {value} must be a positive multiple of 8")
    for flag in ("batch_size", "epochs", "msize", "c", "fdim"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("sync_check_every", "num_workers"):
        if getattr(args, flag) < 0:
            raise InputError(f"--{flag} must be 0 or positive, got {getattr(args, flag)}")
    if args.t_length < 2:
        raise InputError(f"--t_length must be at least 2, got {args.t_length}")
    if args.fdim != args.mdim:
        raise InputError(f"--fdim ({args.fdim}) must equal --mdim ({args.mdim})")
    if args.msize < 2:
        raise InputError("--msize must be at least 2 (the triplet loss needs two items)")
    finite_number("--lr", args.lr, minimum=0.0, above=True)
    finite_number("--loss_compact", args.loss_compact, minimum=0.0)
    finite_number("--loss_separate", args.loss_separate, minimum=0.0)
    if args.resume is not None and args.overwrite:
        raise InputError("--resume continues a run and --overwrite replaces it; give one")


def exit_for_signal(stop: StopRequested, run_dir: Path, when: str) -> NoReturn:
    """End the process after a signal, once the checkpoint is saved (on every process, as
    the signal may have reached only another one)."""
    if distributed.is_main():
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
    device = distributed.setup(resolve_device(args.device))
    try:
        return train_this_process(args, device)
    finally:
        distributed.teardown()


def train_this_process(args: argparse.Namespace, device: torch.device) -> Path:
    """The training run of this process (of ``distributed.world_size()``)."""
    dtype = resolve_precision(args.precision, device)
    if args.sync_bn and device.type != "cuda":
        raise InputError("--sync_bn needs CUDA (SyncBatchNorm has no CPU version); drop it on CPU")
    rank, world_size = distributed.rank(), distributed.world_size()
    is_main = distributed.is_main()
    # The output folder may exist on rank 0's machine only: rank 0 alone creates and reads it.
    run_dir = distributed.share_from_main(lambda: check_run_dir(args))
    resume = distributed.share_from_main(lambda: load_resume_state(args, run_dir, world_size))
    # Per-process seeds; the weights and items then start from rank 0's on every process.
    seed_everything(args.seed + rank)

    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    videos = list_videos(find_split_dir(dataset_dir, "training"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    frames = choose_frames(args.frames, videos, args.h, args.w, cache_dir, dataset_dir)
    if is_main:
        print(frames.line, file=sys.stderr)
    dataset = FrameWindowDataset(videos, args.h, args.w, args.t_length, frames.source)
    if len(dataset) < args.batch_size * world_size:
        per_process = f" for each of {world_size} processes" if world_size > 1 else ""
        raise InputError(
            f"{dataset_dir} has {len(dataset)} training windows, fewer than --batch_size "
            f"{args.batch_size}{per_process}; add videos or lower --batch_size"
            + (" or start fewer processes" if world_size > 1 else "")
        )

    model = LGNNet(
        channels=args.c, t_length=args.t_length, msize=args.msize, fdim=args.fdim, mdim=args.mdim
    ).to(device)
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(args.msize, args.mdim, device=device)
    fast = args.fast_path == "auto" and device.type == "cuda"
    if fast:
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest kernels once
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=fast or None)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    start_epoch, start_step = 0, 0
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if resume is not None:
        items, scheduler = restore_run_state(resume, model, optimizer, args.epochs, fast)
        start_epoch, start_step = resume["epoch"], resume["step"]
        if is_main:
            lr = optimizer.param_groups[0]["lr"]
            print(f"resuming at epoch {start_epoch + 1}, step {start_step}, lr {lr:.3g}",
                  file=sys.stderr)  # fmt: skip
    items = distributed.broadcast_from_main(items)

    # Checkpoints are saved from `model`; the DDP and compiled wrappers only run the steps.
    step_model = StepModel(distributed.wrap_model(model, device), compile=fast or args.compile)
    device_windows = DeviceWindows.if_they_fit(dataset, device) if fast else None
    if is_main:
        processes = f", {world_size} processes" if world_size > 1 else ""
        print(
            f"training on {len(dataset)} windows from {len(dataset.videos)} videos, "
            f"{args.h}x{args.w}, device {device}{processes}, precision {precision_name(dtype)} "
            f"-> {run_dir}",
            file=sys.stderr,
        )
    with StopRequested() as stop:
        for epoch in range(start_epoch, args.epochs):
            if world_size == 1:
                batches = epoch_batches(len(dataset), args.batch_size, args.seed, epoch)
            else:
                batches = distributed.rank_batches(
                    len(dataset), args.batch_size, args.seed, epoch, rank, world_size
                )
            if device_windows is not None:
                loader = device_windows.loader(batches[start_step:])
            else:
                loader = DataLoader(
                    dataset,
                    batch_sampler=batches[start_step:],
                    num_workers=args.num_workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=False,
                )
            began, lr = time.time(), optimizer.param_groups[0]["lr"]
            items, losses, step = train_one_epoch(
                step_model, loader, items, optimizer, device,
                loss_compact=args.loss_compact, loss_separate=args.loss_separate,
                channels=args.c, dtype=dtype, epoch=epoch, epochs=args.epochs,
                start_step=start_step, stop=stop, scaler=scaler,
                sync_check_every=args.sync_check_every, sync_every=25 if fast else 1,
            )  # fmt: skip
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
                    "lr": lr,  # the learning rate this epoch trained with
                    "seconds": round(time.time() - began, 2),
                }
                first = epoch == start_epoch  # earlier runs' later epochs leave the log
                append_log(run_dir / "log.jsonl", record, start_epoch if first else None)
                print(
                    f"epoch {epoch + 1}/{args.epochs}: loss {losses['loss']:.5f} "
                    f"(pixel {losses['pixel']:.5f}, compact {losses['compact']:.5f}, "
                    f"separate {losses['separate']:.5f}) in {record['seconds']:.0f}s",
                    file=sys.stderr,
                )
            if distributed.any_rank(bool(stop)):
                exit_for_signal(stop, run_dir, f"after epoch {epoch + 1}")
    if args.sync_check_every:
        check_processes_in_sync(model, items, "at the end of training")
    if args.calibrate and is_main:
        from inference.calibration import calibrate_training_run

        calibrate_training_run(run_dir / "checkpoint.pth", model, items, dataset, dtype)
    return run_dir


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
