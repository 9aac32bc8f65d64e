"""What watching a run costs: the same training epoch timed without and with the monitor
(TensorBoard per-step scalars, the per-epoch sample grid and PNG, the memory health, the
epoch record as curves), in one process, from the same initial state.

The epoch is ``train.py``'s: the demo scene's training split (generated here unless
``--dataset_path`` holds ``<dataset_type>/``) at ``--h`` x ``--w``, batches of
``epoch_batches`` for epoch 0, fp32 on the CPU, the DataLoader in the main process. The two
variants alternate over ``--repeats`` (without, with, with, without, ...) and the medians are
compared; ``--steps`` cuts the epoch short for a quick look. ``--eval_every`` is not part of
the figure: its cost is an evaluation of the test split, reported by itself in ``log.jsonl``
(``auc_seconds``).

Example::

    python benchmarks/logging_overhead.py                       # 32x48, one whole demo epoch
    python benchmarks/logging_overhead.py --steps 3 --repeats 1 # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_path", default=None, help="default: a generated demo scene")
    parser.add_argument("--dataset_type", default="demo")
    parser.add_argument("--h", type=int, default=32)
    parser.add_argument("--w", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=6)
    parser.add_argument("--steps", type=int, default=0, help="steps per epoch (0: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args()


class _Timed:
    """Calls a method through, adding its seconds to ``spent``: the monitor's own time, a
    figure that the noise between two whole epochs does not blur."""

    def __init__(self, method, spent: list[float]) -> None:
        self.method, self.spent = method, spent

    def __call__(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.spent[0] += time.perf_counter() - began


def time_epoch(
    dataset, batches, monitored: bool, run_dir: Path, args, inside: list[float]
) -> float:
    """Seconds of one epoch from a fresh, seeded setup (the same for both variants); the
    seconds spent inside the monitor's calls are added to ``inside``."""
    from torch.utils.data import DataLoader

    from model.config import ModelConfig
    from training.config import TrainConfig
    from training.loop import train_one_epoch
    from training.monitor import TrainingMonitor, choose_fixed_windows
    from training.setup import prepare_training

    config = TrainConfig(
        model=ModelConfig(), h=args.h, w=args.w, batch_size=args.batch_size, epochs=1,
        precision="fp32",
    )  # fmt: skip
    setup = prepare_training(config, torch.device("cpu"))
    monitor = None
    if monitored:
        windows = choose_fixed_windows(dataset, None)
        monitor = TrainingMonitor(run_dir, windows, len(batches), args.batch_size)
        for name in ("begin_epoch", "step", "end_epoch", "log_record", "close"):
            setattr(monitor, name, _Timed(getattr(monitor, name), inside))
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=0)
    began = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        if monitor is not None:
            monitor.begin_epoch(0, setup.optimizer.param_groups[0]["lr"])
        items, losses, _ = train_one_epoch(
            setup.runner, loader, setup.items, setup.optimizer, setup.device, setup.settings,
            on_step=monitor.step if monitor is not None else None,
        )  # fmt: skip
        if monitor is not None:
            record = {"epoch": 1, **losses, **monitor.end_epoch(0, setup.model, items)}
            monitor.log_record(record, 0)
            monitor.close()
    return time.perf_counter() - began


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from data.datasets import dataset_dir_for
    from data.demo import ensure_demo_dataset
    from data.frame_folders import find_split_dir, list_videos
    from data.frames import FrameWindowDataset
    from model.config import ModelConfig
    from training.loop import epoch_batches

    # Imported once per run, not per epoch: timed apart from the epochs.
    began = time.perf_counter()
    import PIL.Image  # noqa: F401
    from torch.utils import tensorboard  # noqa: F401

    import_seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as scratch:
        if args.dataset_path is None:
            ensure_demo_dataset(Path(scratch), height=args.h, width=args.w)
            dataset_dir = Path(scratch) / "demo"
        else:
            dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
        videos = list_videos(find_split_dir(dataset_dir, "training"))
        dataset = FrameWindowDataset(videos, args.h, args.w, ModelConfig.t_length)
        batches = epoch_batches(len(dataset), args.batch_size, seed=0, epoch=0)
        batches = batches[: args.steps] if args.steps else batches
        times: dict[bool, list[float]] = {False: [], True: []}
        inside: list[float] = []
        for repeat in range(args.repeats):
            for monitored in (False, True) if repeat % 2 == 0 else (True, False):
                run_dir = Path(scratch) / f"run_{repeat}_{int(monitored)}"
                spent = [0.0]
                times[monitored].append(
                    time_epoch(dataset, batches, monitored, run_dir, args, spent)
                )
                if monitored:
                    inside.append(spent[0] / times[True][-1])
    plain, watched = (statistics.median(times[key]) for key in (False, True))
    print(
        f"{len(batches)} steps of {args.batch_size} at {args.h}x{args.w}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}:"
    )
    print(f"  without monitoring: {plain:.2f} s  ({', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"  with monitoring:    {watched:.2f} s  ({', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"  ratio {watched / plain:.4f}: logging costs {100 * (watched / plain - 1):+.2f} %")
    shares = ", ".join(f"{100 * share:.2f} %" for share in inside)
    print(
        f"  inside the monitor's calls: {100 * statistics.median(inside):.2f} % of the "
        f"epoch ({shares})"
    )
    print(
        f"  once per run, not in the epochs: importing TensorBoard and PIL {import_seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
