"""Watching a training run while it trains: TensorBoard curves, sample predictions, the health
of the memory, the test split's AUC every few epochs, and the curves drawn at the end.

Only the main process monitors (``train.py`` builds a :class:`TrainingMonitor` there alone).
Every value is logged at a global step derived from ``(epoch, step)``, so a resumed run
continues the same curves: its writer purges what the first run logged after the checkpoint
(TensorBoard's ``purge_step``), and no step appears twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import InputError
from common.files import atomic_write
from data.frames import FrameWindowDataset
from inference.benchmark import ScoringSettings, benchmark_metrics, evaluate_split
from model import LGNNet
from model.memory import flatten_query, similarity
from training.loop import LOSS_NAMES

# Windows whose queries the memory-health figures are computed on (spread over the split).
HEALTH_WINDOWS = 16
# An item is "used" when it is the nearest item of at least this share of the queries.
USED_SHARE = 0.01
# One item nearest to more than this share of the queries: the memory has collapsed.
COLLAPSE_SHARE = 0.9
# Absolute error (frames in [-1, 1]) shown as white in the error map; a fixed scale, so that
# the maps of different epochs compare.
ERROR_FULL_SCALE = 0.5
# Sample tiles are enlarged (nearest neighbour) to at least this height, pixels.
MIN_TILE_HEIGHT = 96


def global_step(epoch: int, step: int, steps_per_epoch: int) -> int:
    """The x coordinate of every curve: optimizer steps since the run began, after ``step``
    steps of the 0-based ``epoch`` (the steps per epoch are fixed for a run)."""
    return epoch * steps_per_epoch + step


class FixedWindows(NamedTuple):
    """The windows the monitor looks at every epoch, chosen before training."""

    training: torch.Tensor  # (t_length*c, H, W): the middle window of the first training video
    test: torch.Tensor | None  # the same of the first test video; None without a test split
    health: torch.Tensor  # (K, t_length*c, H, W): K training windows spread over the split


def middle_window(dataset: FrameWindowDataset) -> torch.Tensor | None:
    """The middle window of the dataset's first video ``(t_length*c, H, W)``; None when the
    dataset has no window."""
    if not dataset.videos:
        return None
    windows = len(dataset.videos[0]) - dataset.t_length + 1
    return dataset[windows // 2]


def choose_fixed_windows(
    training: FrameWindowDataset, test: FrameWindowDataset | None, count: int = HEALTH_WINDOWS
) -> FixedWindows:
    """The training split's middle window of its first video, the test split's (``test``:
    a dataset of at least its first video, or None) and ``count`` training windows evenly
    spaced over the split."""
    picks = np.unique(np.linspace(0, len(training) - 1, num=min(count, len(training))).round())
    health = torch.stack([training[int(index)] for index in picks])
    test_window = middle_window(test) if test is not None else None
    return FixedWindows(middle_window(training), test_window, health)


@dataclass
class MemoryHealth:
    """How the queries of a set of windows spread over the memory items."""

    usage: np.ndarray  # (M,) share of the queries whose nearest item is each item
    assignment: np.ndarray  # (N,) each query's nearest item
    mean_item_similarity: float  # mean cosine similarity over all pairs of distinct items

    @property
    def items_used(self) -> int:
        """Items nearest to at least ``USED_SHARE`` of the queries."""
        return int((self.usage >= USED_SHARE).sum())

    @property
    def top_item_share(self) -> float:
        return float(self.usage.max())

    @property
    def collapsed(self) -> bool:
        return self.top_item_share > COLLAPSE_SHARE

    def warning(self) -> str | None:
        """A one-line warning when one item takes more than ``COLLAPSE_SHARE`` of the
        queries; None otherwise."""
        if not self.collapsed:
            return None
        item = int(self.usage.argmax())
        return (
            f"warning: memory collapse: item {item} is the nearest item of "
            f"{100 * self.top_item_share:.1f} % of the queries ({self.items_used} of "
            f"{len(self.usage)} items used by >= {100 * USED_SHARE:g} %)"
        )

    def as_record(self) -> dict[str, float | int]:
        return {
            "memory_items_used": self.items_used,
            "memory_top_item_share": round(self.top_item_share, 6),
            "memory_item_similarity": round(self.mean_item_similarity, 6),
        }


def memory_health(queries: torch.Tensor, items: torch.Tensor) -> MemoryHealth:
    """Nearest-item usage of unit-norm ``queries`` ``(N, D)`` over ``items`` ``(M, D)`` and
    the items' mean pairwise cosine similarity (M >= 2; 0 for a single item)."""
    assignment = similarity(queries, items).argmax(dim=1).cpu().numpy()
    msize = items.shape[0]
    usage = np.bincount(assignment, minlength=msize) / max(len(assignment), 1)
    unit = F.normalize(items.float(), dim=1)
    cosine = (unit @ unit.t()).double()
    pairs = msize * (msize - 1)
    off_diagonal = (cosine.sum() - cosine.diagonal().sum()) / pairs if pairs else 0.0
    return MemoryHealth(usage, assignment, float(off_diagonal))


@torch.no_grad()
def memory_health_of(model: LGNNet, items: torch.Tensor, windows: torch.Tensor) -> MemoryHealth:
    """:func:`memory_health` of the queries the prototype encoder makes of ``windows``
    ``(K, t_length*c, H, W)`` (inputs and target; the target is not read)."""
    was_training = model.training
    model.eval()
    inputs = windows[:, : -model.channels].to(items.device)
    queries = flatten_query(model.encoder(inputs))
    model.train(was_training)
    return memory_health(queries, items)


@torch.no_grad()
def sample_grid(
    model: LGNNet, items: torch.Tensor, windows: Sequence[torch.Tensor]
) -> torch.Tensor:
    """One image: per window a row of its input frames, the predicted frame, the target and
    the error map (``|prediction - target|`` averaged over channels; white at
    ``ERROR_FULL_SCALE``). Frames are BGR in [-1, 1]; returns RGB ``(3, H', W')`` in [0, 1].
    The memory is read, never updated."""
    from torchvision.utils import make_grid

    was_training = model.training
    model.eval()
    channels = model.channels
    batch = torch.stack(list(windows)).to(items.device)
    prediction = model.forward_infer(batch[:, :-channels], items).prediction.float()
    model.train(was_training)
    target = batch[:, -channels:]
    error = (prediction - target).abs().mean(dim=1, keepdim=True) / ERROR_FULL_SCALE
    tiles = []
    for row in range(len(batch)):
        inputs = batch[row, :-channels].reshape(-1, channels, *batch.shape[-2:])
        for frame in (*inputs, prediction[row], target[row]):
            tiles.append(((frame.clamp(-1, 1) + 1) / 2).flip(0))  # BGR -> RGB
        tiles.append(error[row].clamp(0, 1).expand(3, -1, -1))
    stacked = torch.stack(tiles).cpu()
    scale = max(1, -(-MIN_TILE_HEIGHT // stacked.shape[-2]))
    if scale > 1:
        stacked = F.interpolate(stacked, scale_factor=scale, mode="nearest")
    return make_grid(stacked, nrow=len(tiles) // len(batch), padding=2, pad_value=1.0)


def save_png(image: torch.Tensor, path: Path) -> None:
    """An RGB image ``(3, H, W)`` in [0, 1] as a PNG, atomically."""
    from PIL import Image

    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


class TestEvaluation:
    """``--eval_every``: the test split's frame AUC by ``evaluate.py``'s protocol and code
    (:func:`inference.benchmark.evaluate_split` and ``benchmark_metrics``), with default
    scoring settings (λ, γ, PSNR, test-time memory updates) at the run's precision."""

    def __init__(
        self,
        dataset: FrameWindowDataset,
        labels_by_video: Mapping[str, np.ndarray],
        settings: ScoringSettings,
    ) -> None:
        self.dataset, self.labels_by_video, self.settings = dataset, labels_by_video, settings

    def __call__(self, model: LGNNet, items: torch.Tensor) -> dict[str, float]:
        """``{"auc", "auc_seconds"}`` of ``model`` with a copy of the training ``items``:
        the test-time updates never reach the memory training goes on with."""
        began = time.time()
        was_training = model.training
        results = evaluate_split(
            model, items.detach().clone(), self.dataset, self.labels_by_video, self.settings
        )
        model.train(was_training)
        metrics = benchmark_metrics(results, self.settings.lambda_, self.settings.smooth)
        return {"auc": metrics["auc"], "auc_seconds": round(time.time() - began, 2)}


class TrainingMonitor:
    """What the main process records besides ``log.jsonl``: per step the losses, learning
    rate and samples/s (TensorBoard); per epoch the log record, the sample grid (TensorBoard
    and ``samples/epoch_NNN.png``) and the memory health (TensorBoard, the record, a warning
    on collapse). With ``tensorboard`` False no event file is written; the pictures and the
    memory health remain."""

    def __init__(
        self,
        run_dir: Path,
        windows: FixedWindows,
        steps_per_epoch: int,
        samples_per_step: int,
        start: tuple[int, int] = (0, 0),
        tensorboard: bool = True,
        flush_every: int = 1,
    ) -> None:
        """``start``: (epoch, step) the run begins or resumes at; ``samples_per_step``:
        windows of all processes per step; ``flush_every``: read the step losses back every
        this many steps (the loop's own read-back interval, so no extra device wait)."""
        self.run_dir, self.windows = run_dir, windows
        self.steps_per_epoch, self.samples_per_step = steps_per_epoch, samples_per_step
        self.flush_every = max(1, flush_every)
        self.tensorboard = tensorboard
        if tensorboard:  # now, rather than at the first step
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise InputError(
                    "--tensorboard on needs the tensorboard package; install it "
                    "(pip install -r requirements.txt) or give --tensorboard off"
                ) from None
        # Everything the first run logged from the resumed step on is dropped by readers.
        self.purge_step = global_step(*start, steps_per_epoch) + 1
        self._writer: Any = None
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._lr, self._epoch = 0.0, 0
        self._window_began = time.perf_counter()

    @property
    def writer(self) -> Any:
        """The SummaryWriter, made at the first value logged (it creates the run folder)."""
        if self._writer is None and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.purge_step)
        return self._writer

    def begin_epoch(self, epoch: int, lr: float) -> None:
        self._epoch, self._lr = epoch, lr
        self._window_began = time.perf_counter()

    def step(self, step: int, losses: torch.Tensor) -> None:
        """After ``step`` steps of the epoch, its 4 losses ``(4,)`` (on the device)."""
        if not self.tensorboard:
            return
        self._pending.append((global_step(self._epoch, step, self.steps_per_epoch), losses))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the pending steps: losses read back together, samples/s over their span."""
        if not self._pending:
            return
        now = time.perf_counter()
        rate = len(self._pending) * self.samples_per_step / max(now - self._window_began, 1e-9)
        values = torch.stack([losses for _, losses in self._pending]).tolist()
        for (step, _), row in zip(self._pending, values, strict=True):
            for name, value in zip(LOSS_NAMES, row, strict=True):
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/lr", self._lr, step)
            self.writer.add_scalar("train/samples_per_s", rate, step)
        self._pending.clear()
        self._window_began = now

    def end_epoch(self, epoch: int, model: LGNNet, items: torch.Tensor) -> dict[str, Any]:
        """After the 0-based ``epoch``: the sample grid (PNG and TensorBoard) and the memory
        health (TensorBoard, a warning on stderr on collapse). Returns the health's entries
        for the log record."""
        self.flush()
        step = global_step(epoch + 1, 0, self.steps_per_epoch)
        chosen = [w for w in (self.windows.training, self.windows.test) if w is not None]
        grid = sample_grid(model, items, chosen)
        save_png(grid, self.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png")
        health = memory_health_of(model, items, self.windows.health)
        if (warning := health.warning()) is not None:
            print(f"epoch {epoch + 1}: {warning}", file=sys.stderr)
        if self.tensorboard:
            self.writer.add_image("samples", grid, step)
            bins = np.arange(len(health.usage) + 1) - 0.5  # one bin per item
            self.writer.add_histogram("memory/nearest_item", health.assignment, step, bins=bins)
        return health.as_record()

    def log_record(self, record: Mapping[str, Any], epoch: int) -> None:
        """The epoch's ``log.jsonl`` record as ``epoch/<key>`` curves (numbers only)."""
        if not self.tensorboard:
            return
        step = global_step(epoch + 1, 0, self.steps_per_epoch)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` (lines torn by a crash skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_training_curves(log_path: Path, out_path: Path) -> None:
    """``training_curves.png``: the four losses per epoch (log scale) and, where measured,
    the test AUC, from the run's ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log_path) if "epoch" in r]
    with_auc = [r for r in records if r.get("auc") is not None]
    panels = 2 if with_auc else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2), dpi=100, squeeze=False)
    losses = axes[0][0]
    epochs = [r["epoch"] for r in records]
    for name in LOSS_NAMES:
        losses.plot(epochs, [r.get(name, np.nan) for r in records], marker="o", ms=3, label=name)
    losses.set_yscale("log")
    losses.set_xlabel("epoch")
    losses.set_ylabel("mean loss")
    losses.legend(fontsize=7)
    if with_auc:
        auc = axes[0][1]
        auc.plot([r["epoch"] for r in with_auc], [100 * r["auc"] for r in with_auc], marker="o")
        auc.set_xlabel("epoch")
        auc.set_ylabel("test frame AUC, %")
    fig.tight_layout()
    atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def first_test_video(
    dataset_dir: Path, height: int, width: int, t_length: int
) -> FrameWindowDataset | None:
    """The first video of the test split (decoded now, at the run's size) for the sample
    grid; None when the dataset has no test split or its first video is too short."""
    from data.frame_cache import FrameCache
    from data.frame_folders import find_split_dir, list_videos

    try:
        videos = list_videos(find_split_dir(dataset_dir, "testing"))
    except InputError:
        return None
    first = FrameWindowDataset(videos[:1], height, width, t_length, FrameCache(height, width))
    return first if len(first) else None


def open_test_evaluation(
    dataset_dir: Path,
    dataset_type: str,
    size: tuple[int, int],
    t_length: int,
    frames: str,
    cache_dir: Path | None,
    dtype: torch.dtype | None,
) -> TestEvaluation:
    """``--eval_every``'s test split (windows and labels, checked now, before training),
    as ``evaluate.py`` opens it with its default flags.

    Raises:
        InputError: no test split, or no labels for it (naming the file and the fix).
    """
    from data.frame_folders import find_split_dir, list_videos
    from data.labels import load_frame_labels, locate_labels
    from inference.benchmark import open_test_windows

    videos = list_videos(find_split_dir(dataset_dir, "testing"))
    label_path = locate_labels(dataset_dir, None, dataset_type)
    labels_by_video = load_frame_labels(dataset_dir, videos, label_path)
    dataset, line = open_test_windows(
        videos, dataset_dir, size[0], size[1], t_length, frames, cache_dir
    )
    print(f"--eval_every: {line}", file=sys.stderr)
    return TestEvaluation(dataset, labels_by_video, ScoringSettings(dtype=dtype))
