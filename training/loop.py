"""The training loop: one epoch of steps, the batches each epoch sees, and a clean stop on
SIGINT/SIGTERM between steps."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.devices import autocast
from common.errors import InputError
from model.config import ModelConfig
from training import distributed
from training.config import TrainConfig


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


class EpochPosition(NamedTuple):
    """Where an epoch stands in its run: for messages, and after a mid-epoch resume."""

    epoch: int = 0  # 0-based index of this epoch
    epochs: int = 1  # the run's length
    start_step: int = 0  # index of the first batch (after a mid-epoch resume)


LOSS_NAMES = ("loss", "pixel", "compact", "separate")


@dataclass
class EpochTotals:
    """An epoch's loss sums so far, pooled over all processes, with the number of losses
    summed (steps × processes) and the seconds trained: what a mid-epoch checkpoint carries,
    so that the resumed epoch's record covers the whole epoch, not only its last part."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_NAMES, 0.0))
    count: int = 0  # losses summed: steps of every process together
    seconds: float = 0.0  # training time of the steps summed

    def add(self, sums: dict[str, float], count: int) -> None:
        for name in LOSS_NAMES:
            self.sums[name] += sums[name]
        self.count += count

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / max(self.count, 1) for name in LOSS_NAMES}

    def as_data(self) -> dict[str, object]:
        """Plain data for the checkpoint."""
        return {"sums": dict(self.sums), "count": self.count, "seconds": self.seconds}

    @classmethod
    def from_data(cls, saved: object) -> EpochTotals | None:
        """:meth:`as_data`'s values back; None for checkpoints written without them."""
        if not isinstance(saved, dict) or not isinstance(saved.get("sums"), dict):
            return None
        sums = {name: float(saved["sums"].get(name, 0.0)) for name in LOSS_NAMES}
        return cls(sums, int(saved.get("count", 0)), float(saved.get("seconds", 0.0)))


def train_one_epoch(
    model: torch.nn.Module,
    loader: Iterable[torch.Tensor],
    items: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    settings: StepSettings | None = None,
    *,
    position: EpochPosition | None = None,
    stop: StopRequested | None = None,
    sync_every: int = 1,
    totals: EpochTotals | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float], int]:
    """One pass over ``loader``'s batches: per batch one forward, the loss
    ``MSE(prediction, target) + loss_compact·compactness + loss_separate·separateness``,
    one backward and one optimizer step; the memory items move on with every step.
    (Eleven parameters: what the loop steps, how each step runs, where the epoch stands,
    and who watches it.)

    Args:
        model: an ``LGNNet``, under torchrun ``distributed.wrap_model``'s wrapper, or a
            :class:`StepModel` (compiled, with its fallback).
        loader: batches of windows ``(B, t_length*channels, H, W)`` in [-1, 1], the last
            ``channels`` being the frame to predict.
        items: memory items ``(msize, mdim)`` before the epoch.
        settings: loss weights, precision, loss scaling, sync checks (default
            :class:`StepSettings`'s: the paper's loss weights, fp32).
        position: the epoch's index, the run's length and the first step (messages, resume).
        stop: checked after every step; training stops early when set (on any process:
            all processes stop after the same step).
        sync_every: read the losses back (progress bar, non-finite check) every N steps
            only, so that on a GPU the host queues steps without waiting for each (1: every
            step, and a non-finite loss stops the run before its optimizer step).
        totals: the epoch's sums so far (after a mid-epoch resume), updated in place with
            this pass's pooled sums; the returned means are then those of the whole epoch.
        on_step: called after every step with the steps done in the epoch and the step's
            4 losses ``(4,)`` float64 on the device (process-local; not read back here).

    Returns:
        ``(items, mean_losses, steps_done)``, where ``steps_done`` counts from the epoch start
        and the losses are pooled over all processes (and over ``totals``' earlier steps).
    """
    runner = model if isinstance(model, StepModel) else StepModel(model)
    settings, position = settings or StepSettings(), position or EpochPosition()
    runner.eager.train()
    names = LOSS_NAMES
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step
    epoch, every = position.epoch, settings.sync_check_every
    count, step = 0, position.start_step
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{position.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=not distributed.is_main(),
    )
    for windows in bar:
        windows = windows.to(device, non_blocking=True)
        check = sync_every == 1  # else the first bad step is found at the next read-back
        loss, losses, out = runner.step(windows, items, optimizer, settings, check, (epoch, step))
        bad = ~torch.isfinite(loss)
        first_bad = torch.where((first_bad < 0) & bad, step, first_bad)
        sums += losses
        items = out.items
        step += 1
        count += 1
        if on_step is not None:
            on_step(step, losses)
        if count % sync_every == 0:  # the only places that wait for the device
            raise_if_not_finite(first_bad, loss, epoch)
            means = {k: f"{v / count:.4f}" for k, v in zip(names, sums.tolist(), strict=True)}
            bar.set_postfix(means)
        if every and step % every == 0:
            check_processes_in_sync(runner.eager, items, f"after epoch {epoch + 1}, step {step}")
        if distributed.any_rank(bool(stop)):
            break
    bar.close()
    if count:
        raise_if_not_finite(first_bad, loss, epoch)
    pooled = distributed.sum_over_ranks(dict(zip(names, sums.tolist(), strict=True)), count)
    totals = totals if totals is not None else EpochTotals()
    totals.add(*pooled)
    return items, totals.means(), step


def raise_if_not_finite(first_bad: torch.Tensor, loss: torch.Tensor, epoch: int) -> None:
    """Stop with a one-line error when a loss since the last check was NaN or infinite."""
    bad_step = int(first_bad)
    if bad_step >= 0:
        raise InputError(
            f"the training loss became {float(loss):.4g} at epoch {epoch + 1}, step "
            f"{bad_step + 1}; checkpoints already written are kept; try a lower --lr or "
            "--precision fp32"
        )


class StepSettings(NamedTuple):
    """How each training step runs (defaults: the paper's loss weights, fp32)."""

    loss_compact: float = TrainConfig.loss_compact  # weight of the compactness loss
    loss_separate: float = TrainConfig.loss_separate  # weight of the separateness loss
    channels: int = ModelConfig.channels  # channels per frame: the window's last are the target
    dtype: torch.dtype | None = None  # autocast dtype, None for fp32
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling
    sync_check_every: int = 0  # every N steps verify that all processes agree (0: never)


class StepModel:
    """The network a training step calls: the module itself or its ``torch.compile``'d form.

    If compiling fails on the first step (forward or backward: an unsupported torch, a
    missing compiler), training goes on eagerly after a one-line warning, from the state
    before that step (BatchNorm statistics restored, gradients cleared).
    """

    def __init__(self, module: torch.nn.Module, compile: bool = False) -> None:
        self.eager = module
        self.current = torch.compile(module) if compile else module
        self.trusted = not compile

    def step(
        self, windows: torch.Tensor, items: torch.Tensor, optimizer: torch.optim.Optimizer,
        *rest: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:  # fmt: skip
        """One optimisation step (the rest of :func:`_train_step`'s arguments: settings,
        check, where); returns ``(loss, the 4 losses as float64, model output)``."""
        args = (windows, items, optimizer, *rest)
        if self.trusted:
            return _train_step(self.current, *args)
        buffers = {name: b.detach().clone() for name, b in self.eager.named_buffers()}
        try:
            result = _train_step(self.current, *args)
        except (InputError, KeyboardInterrupt):
            raise
        except Exception as error:  # any failure of the compiler on its first use
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            print(
                f"warning: torch.compile failed ({type(error).__name__}: {reason}); "
                "training without compilation",
                file=sys.stderr,
            )
            with torch.no_grad():
                for name, buffer in self.eager.named_buffers():
                    buffer.copy_(buffers[name])
            optimizer.zero_grad(set_to_none=True)
            self.current = self.eager
            result = _train_step(self.current, *args)
        self.trusted = True
        return result


def _train_step(
    model: Any,
    windows: torch.Tensor,
    items: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    check: bool,
    where: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    channels, scaler = settings.channels, settings.scaler
    with autocast(windows.device, settings.dtype):
        # Through __call__ (not forward_train) so a torch.compile'd model runs compiled.
        out = model(windows[:, :-channels], items)
        pixel = F.mse_loss(out.prediction.float(), windows[:, -channels:].float())
        loss = (
            pixel
            + settings.loss_compact * out.compactness
            + settings.loss_separate * out.separateness
        )
    if check and not torch.isfinite(loss):  # before the step can spoil the weights
        epoch, step = where
        raise InputError(
            f"the training loss became {loss.item():.4g} at epoch {epoch + 1}, step "
            f"{step + 1}; checkpoints already written are kept; try a lower --lr or "
            "--precision fp32"
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    losses = torch.stack([loss, pixel, out.compactness, out.separateness]).detach().double()
    return loss.detach(), losses, out


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
