"""Train LGN-Net on the normal training videos of a benchmark (or the bundled demo scene).

Example::

    python train.py --dataset_type ped2 --dataset_path ./datasets --exp_dir log
    python train.py --config ped2_cpu --dataset_path ./datasets   # a named configuration

Writes ``exp/<dataset_type>/<exp_dir>/``: ``model.pth`` and ``keys.pt`` (reference layout),
``checkpoint.pth`` (everything ``--resume`` needs), ``config.json`` and ``log.jsonl``; to watch
it train, TensorBoard event files, ``samples/epoch_NNN.png`` and, at the end,
``training_curves.png`` (``tensorboard --logdir exp/<dataset_type>/<exp_dir>``).

Several GPUs or machines: launch the same command with ``torchrun`` (DistributedDataParallel;
``--batch_size`` is then per process)::

    torchrun --nproc_per_node 4 train.py --dataset_type ped2 --dataset_path ./datasets
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch
from torch.utils.data import DataLoader

from common import cli
from common.devices import resolve_device
from common.errors import InputError
from common.files import folder_lock
from common.outputs import check_outputs
from data.datasets import DATASET_TYPES, dataset_dir_for
from data.device_frames import DeviceWindows
from data.frame_folders import find_split_dir, list_videos
from data.frame_store import add_frames_flag, choose_frames
from data.frames import FrameWindowDataset
from inference.config import FALSE_ALARM_RATE
from model import checkpoint as checkpoint_format
from model.config import ModelConfig, check_frame_size
from training import distributed
from training.config import NAMED_CONFIGS, TrainConfig
from training.loop import (
    EpochPosition,
    EpochTotals,
    StopRequested,
    check_processes_in_sync,
    epoch_batches,
    train_one_epoch,
)
from training.monitor import (
    TestEvaluation,
    TrainingMonitor,
    choose_fixed_windows,
    first_test_video,
    open_test_evaluation,
    plot_training_curves,
)
from training.resume_args import resumed_args
from training.run_state import (
    append_log,
    check_run_dir,
    load_resume_state,
    save_run_state,
)
from training.setup import TrainingSetup, check_devices, prepare_training

DEFAULTS = TrainConfig()
# How messages name the network's sizes: by their flags.
MODEL_FLAGS = {
    "channels": "--c",
    **{name: f"--{name}" for name in ("t_length", "msize", "fdim", "mdim")},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser(
        "train.py", "Train LGN-Net on a benchmark's normal training videos."
    )
    parser.add_argument(
        "--config",
        default=None,
        choices=sorted(NAMED_CONFIGS),
        help="a named configuration (training/config.py) whose flag values become the "
        "defaults; flags given beside it win",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES, help="benchmark")
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    add_frames_flag(data)
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    cli.add_frame_size_flags(data, DEFAULTS.h)
    data.add_argument(
        "--c", type=int, default=ModelConfig.channels, help="channels per frame (BGR: 3)"
    )
    data.add_argument(
        "--t_length",
        type=int,
        default=ModelConfig.t_length,
        help="frames per window (last = target)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--fdim", type=int, default=ModelConfig.fdim, help="query feature dimension")
    model.add_argument("--mdim", type=int, default=ModelConfig.mdim, help="memory item dimension")
    model.add_argument(
        "--msize", type=int, default=ModelConfig.msize, help="number of memory items"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--batch_size", type=int, default=DEFAULTS.batch_size, help="windows per step"
    )
    optim.add_argument(
        "--epochs", type=int, default=DEFAULTS.epochs, help="epochs of the cosine schedule"
    )
    optim.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate")
    optim.add_argument(
        "--loss_compact", type=float, default=DEFAULTS.loss_compact, help="compactness weight"
    )
    optim.add_argument(
        "--loss_separate", type=float, default=DEFAULTS.loss_separate, help="separateness weight"
    )
    optim.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help="initialisation and shuffling"
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
    cli.add_run_flags(run)
    cli.add_fast_path_flag(run)
    run.add_argument(
        "--compile", action="store_true", help="torch.compile the training step on any device"
    )
    run.add_argument(
        "--calibrate",
        action="store_true",
        help="after training, score the training videos once more (one inference pass) and "
        "store normal-data score statistics in checkpoint.pth for detect.py",
    )
    run.add_argument(
        "--tensorboard",
        default="on",
        choices=("on", "off"),
        help="TensorBoard event files in the run folder (per step: losses, lr, samples/s; "
        "per epoch: the log record, sample predictions, memory usage)",
    )
    run.add_argument(
        "--eval_every",
        type=int,
        default=0,
        metavar="N",
        help="after every N epochs, the test split's frame AUC by evaluate.py's protocol "
        "(with its default flags), into log.jsonl and TensorBoard (0: never)",
    )

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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags, with a named ``--config``'s values as defaults under the given flags."""
    parser = get_args_parser()
    named = parser.parse_known_args(argv)[0].config
    if named is not None:
        parser.set_defaults(**NAMED_CONFIGS[named])
    return parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Reject flag values the model or the optimiser cannot use, naming the flag, before
    anything is read or written."""
    check_frame_size(args.h, args.w)
    ModelConfig(args.c, args.t_length, args.msize, args.fdim, args.mdim).check(MODEL_FLAGS)
    for flag in ("batch_size", "epochs"):
        cli.at_least(f"--{flag}", getattr(args, flag), 1)
    for flag in ("sync_check_every", "num_workers", "eval_every"):
        cli.at_least(f"--{flag}", getattr(args, flag), 0)
    cli.finite_number("--lr", args.lr, minimum=0.0, above=True)
    cli.finite_number("--loss_compact", args.loss_compact, minimum=0.0)
    cli.finite_number("--loss_separate", args.loss_separate, minimum=0.0)
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
    check_devices(TrainConfig.from_args(args), device)
    try:
        with contextlib.ExitStack() as run_lock:
            return train_this_process(args, device, run_lock)
    finally:
        distributed.teardown()


def open_training_split(args: argparse.Namespace) -> FrameWindowDataset:
    """The windows of the training videos, checked to fill a batch on every process."""
    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    videos = list_videos(find_split_dir(dataset_dir, "training"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    frames = choose_frames(args.frames, videos, args.h, args.w, cache_dir, dataset_dir)
    if distributed.is_main():
        print(frames.line, file=sys.stderr)
    dataset = FrameWindowDataset(videos, args.h, args.w, args.t_length, frames.source)
    world_size = distributed.world_size()
    if len(dataset) < args.batch_size * world_size:
        per_process = f" for each of {world_size} processes" if world_size > 1 else ""
        raise InputError(
            f"{dataset_dir} has {len(dataset)} training windows, fewer than --batch_size "
            f"{args.batch_size}{per_process}; add videos or lower --batch_size"
            + (" or start fewer processes" if world_size > 1 else "")
        )
    return dataset


def check_outputs_and_inputs(
    args: argparse.Namespace, run_lock: contextlib.ExitStack | None = None
) -> Path:
    """The run folder (see ``check_run_dir``), and ``--cache_dir``, checked against what the
    run reads: the dataset and another run's checkpoint given to ``--resume`` (the run's own
    is meant to be replaced). With ``run_lock``, the run folder's lock is taken into it, so
    a second run on the same folder is refused while this one lasts. Returns the run
    folder."""
    dataset = Path(args.dataset_path) / args.dataset_type
    resume = args.resume if args.resume not in (None, "auto") else None
    run_dir = Path(args.output_root) / args.dataset_type / args.exp_dir
    own = resume is not None and Path(resume).resolve() == (run_dir / "checkpoint.pth").resolve()
    inputs = {"--dataset_path": dataset, "--resume": None if own else resume}
    check_outputs(folders={"--cache_dir": args.cache_dir}, inputs=inputs)
    run_dir = check_run_dir(args, inputs)
    if run_lock is not None:
        run_lock.enter_context(folder_lock(run_dir, "training run", "another --exp_dir"))
    return run_dir


def resumed_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``--resume`` continues, when it exists: the one named, else the run's
    own, ``<output_root>/<dataset_type>/<exp_dir>/checkpoint.pth``; without ``--dataset_type``
    the data set whose folder holds ``--exp_dir``'s run."""
    if args.resume is None:
        return None
    if args.resume != "auto":
        return Path(args.resume) if Path(args.resume).is_file() else None
    runs = Path(args.output_root)
    own = runs / args.dataset_type / args.exp_dir / "checkpoint.pth"
    if own.is_file() or "dataset_type" in cli.given_flags(args):
        return own if own.is_file() else None
    found = [name for name in DATASET_TYPES if (runs / name / args.exp_dir / own.name).is_file()]
    if len(found) > 1:
        raise InputError(
            f"--resume: runs named {args.exp_dir} exist for {' and '.join(found)} under "
            f"{runs}; say which with --dataset_type"
        )
    return runs / found[0] / args.exp_dir / "checkpoint.pth" if found else None


def with_resumed_settings(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` as the run ``--resume`` continues was saved, apart from the flags given
    (see ``training.resume_args``); ``args`` itself for a new run."""
    path = resumed_checkpoint(args)
    if path is None:
        return args
    if args.resume == "auto":  # the run's folder says its data set, as if given
        given = sorted({*cli.given_flags(args), "dataset_type"})
        args = argparse.Namespace(**{**vars(args), "given_flags": given})
        args.dataset_type = path.parent.parent.name
    merged, lines = resumed_args(args, checkpoint_format.read(path, resumable=True), path)
    for line in lines:
        print(line, file=sys.stderr)
    validate_args(merged)
    return merged


def train_this_process(
    args: argparse.Namespace, device: torch.device, run_lock: contextlib.ExitStack | None = None
) -> Path:
    """The training run of this process (of ``distributed.world_size()``); rank 0 holds the
    run folder's lock in ``run_lock``."""
    args = distributed.share_from_main(lambda: with_resumed_settings(args))
    # The output folder may exist on rank 0's machine only: rank 0 alone creates and reads it.
    run_dir = distributed.share_from_main(lambda: check_outputs_and_inputs(args, run_lock))
    resume = distributed.share_from_main(
        lambda: load_resume_state(args, run_dir, distributed.world_size())
    )
    config = TrainConfig.from_args(args)
    dataset = open_training_split(args)
    if args.calibrate:  # one window per scored frame: refuse now rather than after training
        from inference.calibration import check_enough_frames

        check_enough_frames(len(dataset), FALSE_ALARM_RATE, "the training videos hold")
    setup = prepare_training(config, device, resume, args.sync_check_every)
    device_windows = DeviceWindows.if_they_fit(dataset, device) if setup.fast else None
    # A mid-epoch checkpoint carries the epoch's sums so far (None in older checkpoints).
    carried = EpochTotals.from_data(resume.get("epoch_totals")) if setup.start_step else None
    watch = Watch(None, None, carried)
    if distributed.is_main():
        watch = watch._replace(**open_watchers(args, dataset, setup, run_dir))
        print(
            f"training on {len(dataset)} windows from {len(dataset.videos)} videos, "
            f"{args.h}x{args.w}, {setup.describe()} -> {run_dir}",
            file=sys.stderr,
        )
    try:
        with StopRequested() as stop:
            for epoch in range(setup.start_epoch, config.epochs):
                batches = epoch_batches_of_this_process(len(dataset), config, epoch)
                remaining = batches[setup.start_step :]  # after a mid-epoch resume
                loader = epoch_loader(dataset, remaining, args.num_workers, device, device_windows)
                train_epoch(setup, loader, len(batches), args, run_dir, epoch, stop, watch)
                watch = watch._replace(carried=None)
    finally:
        if watch.monitor is not None:
            watch.monitor.close()
    if args.sync_check_every:
        check_processes_in_sync(setup.model, setup.items, "at the end of training")
    if distributed.is_main():
        plot_training_curves(run_dir / "log.jsonl", run_dir / "training_curves.png")
    if args.calibrate and distributed.is_main():
        from inference.calibration import calibrate_training_run

        calibrate_training_run(
            run_dir / "checkpoint.pth", setup.model, setup.items, dataset, setup.settings.dtype
        )
    return run_dir


class Watch(NamedTuple):
    """What watches the epochs (on the main process; None elsewhere or when off), and the
    sums a resumed epoch carries from before its checkpoint."""

    monitor: TrainingMonitor | None
    evaluation: TestEvaluation | None  # --eval_every
    carried: EpochTotals | None


def open_watchers(
    args: argparse.Namespace, dataset: FrameWindowDataset, setup: TrainingSetup, run_dir: Path
) -> dict[str, Any]:
    """The main process's monitor (fixed windows chosen now) and, with ``--eval_every``, the
    test split it evaluates (opened now, so that missing labels stop the run before it
    trains)."""
    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    test = first_test_video(dataset_dir, args.h, args.w, args.t_length)
    steps = len(epoch_batches_of_this_process(len(dataset), TrainConfig.from_args(args), 0))
    monitor = TrainingMonitor(
        run_dir, choose_fixed_windows(dataset, test), steps,
        args.batch_size * distributed.world_size(), (setup.start_epoch, setup.start_step),
        tensorboard=args.tensorboard == "on", flush_every=setup.sync_every,
    )  # fmt: skip
    evaluation = None
    if args.eval_every:
        cache_dir = Path(args.cache_dir) if args.cache_dir else None
        evaluation = open_test_evaluation(
            dataset_dir, args.dataset_type, (args.h, args.w), args.t_length, args.frames,
            cache_dir, setup.settings.dtype,
        )  # fmt: skip
    return {"monitor": monitor, "evaluation": evaluation}


def epoch_batches_of_this_process(
    num_windows: int, config: TrainConfig, epoch: int
) -> list[list[int]]:
    """This process's batches of ``epoch`` (all of them outside torchrun)."""
    rank, world_size = distributed.rank(), distributed.world_size()
    if world_size == 1:
        return epoch_batches(num_windows, config.batch_size, config.seed, epoch)
    return distributed.rank_batches(
        num_windows, config.batch_size, config.seed, epoch, rank, world_size
    )


def epoch_loader(
    dataset: FrameWindowDataset,
    batches: list[list[int]],
    num_workers: int,
    device: torch.device,
    device_windows: DeviceWindows | None,
) -> Iterable[torch.Tensor]:
    """The batches as windows ``(B, t_length*3, H, W)``: from the frames on the GPU when
    they are there, else from a DataLoader."""
    if device_windows is not None:
        return device_windows.loader(batches)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def train_epoch(
    setup: TrainingSetup,
    loader: Iterable[torch.Tensor],
    num_batches: int,
    args: argparse.Namespace,
    run_dir: Path,
    epoch: int,
    stop: StopRequested,
    watch: Watch,
) -> None:
    """Train one epoch (``loader`` holds its batches from ``setup.start_step`` on), then
    save the run and log the epoch; after a signal, save where the epoch stopped (with the
    epoch's sums so far) and exit."""
    began, lr = time.time(), setup.optimizer.param_groups[0]["lr"]
    position = EpochPosition(epoch, args.epochs, setup.start_step)
    resumed_without_sums = setup.start_step and watch.carried is None
    totals = watch.carried or EpochTotals()
    monitor = watch.monitor
    if monitor is not None:
        monitor.begin_epoch(epoch, lr)
    setup.items, losses, step = train_one_epoch(
        setup.runner, loader, setup.items, setup.optimizer, setup.device, setup.settings,
        position=position, stop=stop, sync_every=setup.sync_every, totals=totals,
        on_step=monitor.step if monitor is not None else None,
    )  # fmt: skip
    save = (run_dir, setup.model, setup.items, setup.optimizer, setup.scheduler, args)
    if step < num_batches:  # a signal (to any process) ended the epoch early
        totals.seconds += time.time() - began
        save_run_state(*save, epoch, step, epoch_totals=totals.as_data())
        exit_for_signal(stop, run_dir, f"at epoch {epoch + 1}, step {step}")
    setup.scheduler.step()
    first, setup.start_step = epoch == setup.start_epoch, 0
    save_run_state(*save, epoch + 1, 0)
    if distributed.is_main():
        seconds = totals.seconds + time.time() - began
        record = {"epoch": epoch + 1, **losses, "lr": lr, "seconds": round(seconds, 2)}
        record["steps"] = totals.count // distributed.world_size()
        if resumed_without_sums:  # a checkpoint older than the sums: the record is partial
            record["from_step"] = position.start_step
        if monitor is not None:
            record.update(monitor.end_epoch(epoch, setup.model, setup.items))
        if watch.evaluation is not None and (epoch + 1) % args.eval_every == 0:
            record.update(watch.evaluation(setup.model, setup.items))
        # Records of later epochs left by a replaced run or a resumed one's future go.
        append_log(run_dir / "log.jsonl", record, setup.start_epoch if first else None)
        if monitor is not None:
            monitor.log_record(record, epoch)
        auc = f"; test AUC {100 * record['auc']:.2f} %" if "auc" in record else ""
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {losses['loss']:.5f} "
            f"(pixel {losses['pixel']:.5f}, compact {losses['compact']:.5f}, "
            f"separate {losses['separate']:.5f}) in {record['seconds']:.0f}s{auc}",
            file=sys.stderr,
        )
    if distributed.any_rank(bool(stop)):
        exit_for_signal(stop, run_dir, f"after epoch {epoch + 1}")


if __name__ == "__main__":
    cli.run_cli(main, parse_args())
