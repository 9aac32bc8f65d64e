"""The training loop: one epoch of steps, the batches each epoch sees, and a clean stop on
SIGINT/SIGTERM between steps."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import distributed
from utils import InputError, autocast


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
    loader: Iterable[torch.Tensor],
    items: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    loss_compact: float = 10.0,
    loss_separate: float = 5.0,
    channels: int = 3,
    dtype: torch.dtype | None = None,
    epoch: int = 0,
    epochs: int = 1,
    start_step: int = 0,
    stop: StopRequested | None = None,
    scaler: torch.amp.GradScaler | None = None,
    sync_check_every: int = 0,
) -> tuple[torch.Tensor, dict[str, float], int]:
    """One pass over ``loader``'s batches: per batch one forward, the loss
    ``MSE(prediction, target) + loss_compact·compactness + loss_separate·separateness``,
    one backward and one optimizer step; the memory items move on with every step.

    Args:
        model: an ``LGNNet`` or, under torchrun, ``distributed.wrap_model``'s wrapper.
        loader: batches of windows ``(B, t_length*channels, H, W)`` in [-1, 1], the last
            ``channels`` being the frame to predict.
        items: memory items ``(msize, mdim)`` before the epoch.
        dtype: autocast dtype (None: fp32).
        epoch, epochs: 0-based epoch index and the run's length, for messages.
        start_step: index of the first batch (after a mid-epoch resume).
        stop: checked after every step; training stops early when set (on any process:
            all processes stop after the same step).
        sync_check_every: every N steps verify that all processes agree (0: never).

    Returns:
        ``(items, mean_losses, steps_done)``, where ``steps_done`` counts from the epoch start
        and the losses are pooled over all processes.
    """
    model.train()
    totals = {"loss": 0.0, "pixel": 0.0, "compact": 0.0, "separate": 0.0}
    count = 0
    step = start_step
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=not distributed.is_main(),
    )
    for windows in bar:
        windows = windows.to(device, non_blocking=True)
        with autocast(device, dtype):
            # Through __call__ (not forward_train) so a torch.compile'd model runs compiled.
            out = model(windows[:, :-channels], items)
            pixel = F.mse_loss(out.prediction.float(), windows[:, -channels:].float())
            loss = pixel + loss_compact * out.compactness + loss_separate * out.separateness
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
        if sync_check_every and step % sync_check_every == 0:
            check_processes_in_sync(model, items, f"after epoch {epoch + 1}, step {step}")
        for key, value in (
            ("loss", loss),
            ("pixel", pixel),
            ("compact", out.compactness),
            ("separate", out.separateness),
        ):
            totals[key] += float(value.detach())
        bar.set_postfix({k: f"{v / count:.4f}" for k, v in totals.items()})
        if distributed.any_rank(bool(stop)):
            break
    bar.close()
    return items, distributed.mean_over_ranks(totals, count), step


def check_processes_in_sync(model: torch.nn.Module, items: torch.Tensor, where: str) -> None:
    """``--sync_check_every``: stop with an error unless every process holds the same memory
    items and weights (a no-op outside torchrun)."""
    if not distributed.is_distributed():
        return
    digest = distributed.parameter_digest(model.parameters())
    distributed.check_in_sync({"memory items": items, "weights": digest}, where)
    if distributed.is_main():
        tqdm.write(
            f"sync check {where}: memory items and weights identical on "
            f"{distributed.world_size()} processes",
            file=sys.stderr,
        )
