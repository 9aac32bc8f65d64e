"""Everything a training run steps, built in one place for ``train.py`` and the benchmarks:
the network and its memory items, Adam and the cosine schedule, the step function (compiled
on the CUDA fast path, wrapped for DistributedDataParallel under torchrun), the step settings,
and, with ``--resume``, the state of the run being continued."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from common.devices import precision_name, resolve_precision
from common.errors import InputError
from model import LGNNet, init_memory_items
from training import distributed
from training.config import TrainConfig
from training.loop import StepModel, StepSettings
from training.run_state import restore_run_state, seed_everything

# On the CUDA fast path the host reads the losses back every this many steps.
FAST_SYNC_EVERY = 25


@dataclass
class TrainingSetup:
    """What :func:`prepare_training` builds. Checkpoints are saved from ``model``; the
    steps run through ``runner`` (its DDP and compiled wrappers)."""

    model: LGNNet
    runner: StepModel
    items: torch.Tensor  # (msize, mdim) memory items, on the device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    settings: StepSettings
    device: torch.device
    fast: bool  # the CUDA fast path is on
    start_epoch: int = 0
    start_step: int = 0

    @property
    def sync_every(self) -> int:
        """How often the loop reads the losses back (see ``train_one_epoch``)."""
        return FAST_SYNC_EVERY if self.fast else 1

    def describe(self) -> str:
        """Device, processes and precision, for the run's first line."""
        processes = distributed.world_size()
        return (
            f"device {self.device}{f', {processes} processes' if processes > 1 else ''}, "
            f"precision {precision_name(self.settings.dtype)}"
        )


def check_devices(config: TrainConfig, device: torch.device) -> None:
    """Refuse settings the device cannot run (before any data is read)."""
    if config.sync_bn and device.type != "cuda":
        raise InputError("--sync_bn needs CUDA (SyncBatchNorm has no CPU version); drop it on CPU")


def prepare_training(
    config: TrainConfig,
    device: torch.device,
    resume: dict[str, Any] | None = None,
    sync_check_every: int = 0,
) -> TrainingSetup:
    """Build a run of ``config`` on ``device`` (under torchrun: this process's replica),
    seeded with ``config.seed`` + rank; with ``resume`` (``run_state.load_resume_state``) the
    weights, memory, optimizer, schedule and RNGs continue from that checkpoint."""
    check_devices(config, device)
    dtype = resolve_precision(config.precision, device)
    seed_everything(config.seed + distributed.rank())
    model = LGNNet.from_config(config.model).to(device)
    if config.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(config.model.msize, config.model.mdim, device=device)
    fast = config.fast_path == "auto" and device.type == "cuda"
    if fast:
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest kernels once
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fast or None)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    start_epoch, start_step = 0, 0
    if resume is not None:
        items, scheduler = restore_run_state(resume, model, optimizer, config.epochs, fast)
        start_epoch, start_step = resume["epoch"], resume["step"]
        if distributed.is_main():
            lr = optimizer.param_groups[0]["lr"]
            print(f"resuming at epoch {start_epoch + 1}, step {start_step}, lr {lr:.3g}",
                  file=sys.stderr)  # fmt: skip
    items = distributed.broadcast_from_main(items)
    runner = StepModel(distributed.wrap_model(model, device), compile=fast or config.compile)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    settings = StepSettings(
        config.loss_compact, config.loss_separate, config.model.channels, dtype, scaler,
        sync_check_every,
    )  # fmt: skip
    return TrainingSetup(
        model, runner, items, optimizer, scheduler, settings, device, fast, start_epoch, start_step
    )
