"""The CUDA fast path's pieces, checked on the CPU against the plain path: frames served from
the device, steps that read the losses back only now and then, the per-frame test-time step
without host synchronisation, and compiled training and scoring steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import training_windows, window_by_window_scores
from torch.utils.data import DataLoader

import training.loop
from common.errors import InputError
from data.device_frames import DeviceWindows
from data.frames import FrameWindowDataset
from inference.video import compiled_scoring_functions, evaluate_video
from model import LGNNet, init_memory_items
from training.loop import StepModel, epoch_batches, train_one_epoch

TINY = {"msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}


@pytest.fixture(scope="module")
def dataset(tiny_dataset: Path) -> FrameWindowDataset:
    return training_windows(tiny_dataset, 16, 24, 3)


def test_device_windows_equal_the_dataloader_batches(dataset: FrameWindowDataset) -> None:
    batches = epoch_batches(len(dataset), 4, seed=1, epoch=2)
    served = list(DeviceWindows.of(dataset, torch.device("cpu")).loader(batches))
    loaded = list(DataLoader(dataset, batch_sampler=batches))
    assert len(served) == len(loaded) == len(batches)
    for a, b in zip(served, loaded, strict=True):
        assert torch.equal(a, b)


def run_epoch(dataset: FrameWindowDataset, sync_every: int, compile: bool = False):
    torch.manual_seed(0)
    model = LGNNet(t_length=3, **TINY)
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = epoch_batches(len(dataset), 3, seed=0, epoch=0)[:6]
    loader = DataLoader(dataset, batch_sampler=batches)
    runner = StepModel(model, compile=compile)
    items, losses, steps = train_one_epoch(
        runner, loader, items, optimizer, torch.device("cpu"), sync_every=sync_every
    )
    return model, items, losses, steps


def test_reading_losses_back_every_few_steps_changes_nothing(dataset) -> None:
    every_step = run_epoch(dataset, sync_every=1)
    every_four = run_epoch(dataset, sync_every=4)
    assert every_step[3] == every_four[3] == 6
    assert every_step[2] == every_four[2]  # the logged mean losses, bit for bit
    assert torch.equal(every_step[1], every_four[1])
    after_four = every_four[0].state_dict()
    for name, tensor in every_step[0].state_dict().items():
        assert torch.equal(tensor, after_four[name]), name


def test_a_non_finite_loss_is_reported_at_its_step_when_read_back_late(
    dataset: FrameWindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = training.loop.F.mse_loss
    calls = {"n": 0}

    def nan_from_the_third(prediction: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        value = real(prediction, *args, **kw)
        if prediction.dim() != 4:  # the compactness loss (same function): leave it alone
            return value
        calls["n"] += 1
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(training.loop.F, "mse_loss", nan_from_the_third)
    with pytest.raises(InputError, match="loss became nan at epoch 1, step 3;"):
        run_epoch(dataset, sync_every=5)


def test_a_failing_compiler_falls_back_to_the_eager_step(
    dataset: FrameWindowDataset, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken_compile(module: torch.nn.Module) -> object:
        def run(*args: object, **kwargs: object) -> object:
            module(*args, **kwargs)  # the forward ran (BatchNorm statistics moved) ...
            raise RuntimeError("backend compiler failed")  # ... then compiling failed

        return run

    monkeypatch.setattr(training.loop.torch, "compile", broken_compile)
    fallen_back = run_epoch(dataset, sync_every=1, compile=True)
    monkeypatch.undo()
    eager = run_epoch(dataset, sync_every=1)
    assert "torch.compile failed (RuntimeError: backend compiler failed)" in capsys.readouterr().err
    assert fallen_back[2] == eager[2]
    after_eager = eager[0].state_dict()
    for name, tensor in fallen_back[0].state_dict().items():
        assert torch.equal(tensor, after_eager[name]), name


def test_per_frame_values_read_back_once_per_video_equal_reading_each_frame() -> None:
    torch.manual_seed(2)
    model = LGNNet(t_length=3, **TINY).eval()
    frames = torch.rand(14, 3, 16, 16) * 2 - 1
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(3))
    # gamma between the frames' point scores: some frames update the memory, some do not.
    probe = evaluate_video(model, frames, items, gamma=0.0, batch_size=4)
    assert probe.memory_updates == 0
    lazy = evaluate_video(model, frames, items, gamma=1.0, batch_size=4)
    eager = evaluate_video(model, frames, items, gamma=1.0, batch_size=4, sync_each_frame=True)
    assert lazy.memory_updates == eager.memory_updates == 12
    for a, b in ((lazy.psnr, eager.psnr), (lazy.feature_distance, eager.feature_distance)):
        np.testing.assert_array_equal(a, b)
    assert torch.equal(lazy.items, eager.items)


def one_step(dataset: FrameWindowDataset, compile: bool):
    """One training step of a tiny model with a zero learning rate: the step's losses,
    gradients, BatchNorm statistics and memory update, with nothing amplified by Adam."""
    torch.manual_seed(5)
    model = LGNNet(t_length=3, **TINY)
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = epoch_batches(len(dataset), 4, seed=0, epoch=0)[:1]
    items, losses, _ = train_one_epoch(
        StepModel(model, compile=compile), DataLoader(dataset, batch_sampler=batches), items,
        optimizer, torch.device("cpu"),
    )  # fmt: skip
    return model, items, losses


def test_the_device_side_gate_updates_exactly_where_the_host_side_loop_does() -> None:
    torch.manual_seed(3)
    model = LGNNet(t_length=3, **TINY).eval()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(4))
    frames = torch.rand(14, 3, 16, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1
    frames[6:] = frames[6:] * 0.2  # a calmer second half: lower errors, other point scores
    # gamma at the median point score of a pass without updates: some frames fall below it.
    point_scores = window_by_window_scores(model, frames, items, gamma=-math.inf)[2]
    gamma = float(np.median(point_scores))
    psnr, distance, _, updated, final_items = window_by_window_scores(model, frames, items, gamma)
    assert 0 < sum(updated) < len(updated)  # a mixed gate: both branches of torch.where

    scores = evaluate_video(model, frames, items, gamma, batch_size=1)
    assert scores.memory_updates == sum(updated)
    # evaluate_video encodes each frame once for all its windows, in other batches than the
    # loop's windows: the convolutions round differently, nothing more.
    np.testing.assert_allclose(scores.psnr, psnr, rtol=1e-6)
    np.testing.assert_allclose(scores.feature_distance, distance, rtol=1e-6)
    torch.testing.assert_close(scores.items, final_items, rtol=1e-6, atol=1e-7)


@pytest.mark.slow_compile
def test_compiled_training_and_scoring_steps_give_the_eager_numbers(dataset) -> None:
    """torch.compile (inductor, here on the CPU) fuses and reorders floating-point work, so
    the numbers agree to fp32 rounding, not bit for bit."""
    eager_model, eager_items, eager_losses = one_step(dataset, compile=False)
    compiled_model, compiled_items, compiled_losses = one_step(dataset, compile=True)
    for key, value in eager_losses.items():
        assert compiled_losses[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # The items are unit rows: an entry's rounding error scales with its row's norm (1), not
    # with the entry, so a small entry may differ by ~1e-6 relative to itself (seen: 4.6e-4).
    torch.testing.assert_close(compiled_items, eager_items, atol=1e-5, rtol=1e-5)
    # Gradients against the largest one of the model: the biases of convolutions followed by
    # BatchNorm have a gradient of 0 in exact arithmetic, so only rounding noise to compare.
    grads = {n: p.grad for n, p in eager_model.named_parameters() if p.grad is not None}
    scale = max(grad.abs().max().item() for grad in grads.values())
    compiled_parameters = dict(compiled_model.named_parameters())
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_parameters[name].grad, grad,
                                   atol=2e-5 * scale, rtol=1e-3, msg=name)  # fmt: skip
    compiled_buffers = dict(compiled_model.named_buffers())
    for name, buffer in eager_model.named_buffers():
        torch.testing.assert_close(compiled_buffers[name], buffer, atol=1e-6, rtol=1e-5, msg=name)

    model = eager_model.eval()
    frames = torch.rand(9, 3, 16, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1
    reference = evaluate_video(model, frames, eager_items, gamma=1.0, batch_size=4)
    compiled = evaluate_video(
        model, frames, eager_items, gamma=1.0, batch_size=4,
        functions=compiled_scoring_functions(model),
    )  # fmt: skip
    np.testing.assert_allclose(compiled.psnr, reference.psnr, rtol=1e-5)
    np.testing.assert_allclose(compiled.feature_distance, reference.feature_distance, rtol=1e-4)
    assert compiled.memory_updates == reference.memory_updates
