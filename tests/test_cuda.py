"""The CUDA fast path against the plain path on a GPU (skipped without one): frames on the
device, compiled and fused training steps, compiled scoring, and both CLIs end to end.

Run on a GPU machine with ``python -m pytest tests/test_cuda.py`` (``benchmarks/gpu_check.sh``
does, among its other checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import training_windows
from torch.utils.data import DataLoader

import evaluate
import train
from data.device_frames import DeviceWindows
from data.frames import FrameWindowDataset
from inference.video import compiled_scoring_functions, evaluate_video
from model import LGNNet, init_memory_items
from training.loop import StepModel, epoch_batches, train_one_epoch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
TINY = {"msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}


@pytest.fixture(scope="module")
def dataset(tiny_dataset: Path) -> FrameWindowDataset:
    return training_windows(tiny_dataset, 32, 48, 5)


def test_device_windows_equal_the_dataloader_on_cuda(dataset: FrameWindowDataset) -> None:
    batches = epoch_batches(len(dataset), 6, seed=0, epoch=0)
    served = DeviceWindows.of(dataset, CUDA).loader(batches)
    for a, b in zip(served, DataLoader(dataset, batch_sampler=batches), strict=True):
        assert torch.equal(a.cpu(), b)


def train_steps(dataset: FrameWindowDataset, fast: bool, steps: int = 8):
    torch.manual_seed(0)
    model = LGNNet(**TINY).to(CUDA)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(1)).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=fast or None)
    batches = epoch_batches(len(dataset), 6, seed=0, epoch=0)[:steps]
    loader = (DeviceWindows.of(dataset, CUDA).loader(batches) if fast
              else DataLoader(dataset, batch_sampler=batches))  # fmt: skip
    items, losses, _ = train_one_epoch(
        StepModel(model, compile=fast), loader, items, optimizer, CUDA,
        sync_every=4 if fast else 1,
    )  # fmt: skip
    return model, items, losses


def test_fast_training_steps_give_the_plain_numbers(
    dataset: FrameWindowDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 on both paths: compilation and the fused optimizer reorder floating-point work,
    and cuDNN may pick other kernels (TF32 is off for this comparison), so the numbers agree
    to rounding accumulated over 8 steps."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    plain_model, plain_items, plain_losses = train_steps(dataset, fast=False)
    fast_model, fast_items, fast_losses = train_steps(dataset, fast=True)
    for key, value in plain_losses.items():
        assert fast_losses[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
    torch.testing.assert_close(fast_items, plain_items, atol=1e-4, rtol=1e-3)
    fast_state = fast_model.state_dict()
    for name, tensor in plain_model.state_dict().items():
        torch.testing.assert_close(fast_state[name], tensor, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_compiled_scoring_gives_the_eager_scores(dtype: torch.dtype | None) -> None:
    torch.manual_seed(2)
    model = LGNNet(**TINY).to(CUDA).eval()
    frames = torch.rand(40, 3, 64, 64, device=CUDA) * 2 - 1
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(3)).to(CUDA)
    eager = evaluate_video(model, frames, items, gamma=1.0, batch_size=1, dtype=dtype,
                           sync_each_frame=True)  # fmt: skip
    fast = evaluate_video(model, frames, items, gamma=1.0, batch_size=32, dtype=dtype,
                          functions=compiled_scoring_functions(model))  # fmt: skip
    tolerance = 1e-4 if dtype is None else 2e-2  # bf16: batch-dependent kernels
    np.testing.assert_allclose(fast.psnr, eager.psnr, rtol=tolerance)
    np.testing.assert_allclose(fast.feature_distance, eager.feature_distance, rtol=50 * tolerance)
    assert fast.memory_updates == eager.memory_updates


def test_both_clis_on_cuda_with_and_without_the_fast_path(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    runs = {}
    for fast_path in ("auto", "off"):
        run_dir = train.main(train.get_args_parser().parse_args([
            "--dataset_type", "ped2", "--dataset_path", str(tiny_dataset), "--h", "32", "--w", "48",
            "--epochs", "1", "--output_root", str(tmp_path / fast_path), "--device", "cuda",
            "--fast_path", fast_path, "--precision", "fp32", "--num_workers", "0",
        ]))  # fmt: skip
        report = evaluate.main(evaluate.get_args_parser().parse_args([
            "--dataset_type", "ped2", "--dataset_path", str(tiny_dataset), "--device", "cuda",
            "--checkpoint", str(run_dir / "checkpoint.pth"), "--fast_path", fast_path,
            "--precision", "fp32", "--report", str(tmp_path / f"{fast_path}.json"),
        ]))  # fmt: skip
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        runs[fast_path] = (log[0]["loss"], report["auc"], report["fast_path"])
    assert runs["auto"][2] is True and runs["off"][2] is False
    assert runs["auto"][0] == pytest.approx(runs["off"][0], rel=1e-2)
    assert runs["auto"][1] == pytest.approx(runs["off"][1], abs=0.02)
