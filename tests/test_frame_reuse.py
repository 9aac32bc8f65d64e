"""Evaluation encodes each frame's per-frame part (the spatiotemporal branch's frame encoder
and its first cell's input convolution) once and reuses it in all ``t_length - 1`` windows
the frame is an input of: the benchmark's evaluate_video, the Python API and the streaming
scorer. Checked against the reference order, one window at a time with nothing reused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import window_by_window_scores

from data.sources import preprocess
from inference.api import Scorer
from inference.streaming import StreamingScorer
from inference.video import evaluate_video
from model import LGNNet, init_memory_items
from model.weights_file import LoadedModel

# t_length 5 as in the paper: every frame is an input of 4 windows.
TINY = {"t_length": 5, "msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}
HEIGHT, WIDTH = 16, 24


def tiny_model() -> LGNNet:
    """A tiny network in eval mode whose BatchNorms hold non-trivial running statistics, so
    that a per-frame result that wrongly depended on its batch would show."""
    torch.manual_seed(0)
    model = LGNNet(**TINY)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model.eval()


def video(frames: int, seed: int) -> torch.Tensor:
    """``(frames, 3, H, W)`` in [-1, 1], as preprocessed from BGR uint8 images (so that the
    streaming scorer, which takes images, sees the same frames); the second half calmer, for
    other point scores."""
    clip = torch.rand(frames, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))
    clip = clip * 2 - 1
    clip[frames // 2 :] *= 0.2
    return torch.stack([preprocess(image_of(frame), HEIGHT, WIDTH) for frame in clip])


def mixed_gamma(model: LGNNet, frames: torch.Tensor, items: torch.Tensor) -> float:
    """A gamma between the frames' point scores: some frames update the memory, some not."""
    return float(np.median(window_by_window_scores(model, frames, items, -math.inf)[2]))


@pytest.fixture(scope="module")
def case():
    model = tiny_model()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(2))
    frames = video(14, seed=3)
    gamma = mixed_gamma(model, frames, items)
    return model, items, frames, gamma, window_by_window_scores(model, frames, items, gamma)


def assert_same_scores(psnr, distance, updates, final_items, reference) -> None:
    expected_psnr, expected_distance, _, expected_updated, expected_items = reference
    expected_updates = sum(expected_updated)
    assert 0 < expected_updates < len(expected_psnr)  # both branches of the update gate
    assert updates == expected_updates
    np.testing.assert_allclose(psnr, expected_psnr, rtol=1e-6)
    np.testing.assert_allclose(distance, expected_distance, rtol=1e-6)
    torch.testing.assert_close(final_items, expected_items, rtol=1e-6, atol=1e-7)


# 1: a frame per call; 3, 4: frames shared across batches; 32: a video shorter than a batch.
@pytest.mark.parametrize("batch_size", [1, 3, 4, 32])
def test_evaluate_video_equals_the_window_by_window_order(case, batch_size: int) -> None:
    model, items, frames, gamma, reference = case
    scores = evaluate_video(model, frames, items, gamma, batch_size=batch_size)
    assert_same_scores(
        scores.psnr, scores.feature_distance, scores.memory_updates, scores.items, reference
    )


def test_the_streaming_scorer_equals_the_window_by_window_order(case) -> None:
    model, items, frames, gamma, reference = case
    scorer = StreamingScorer(model, items, HEIGHT, WIDTH, gamma=gamma)
    # A first, other video: start_video must forget its frames' encodings too.
    for image in video(7, seed=9):
        scorer.push(image_of(image))
    scorer.start_video()
    scores = [scorer.push(image_of(frame)) for frame in frames]
    assert scores[: model.t_length - 1] == [None] * (model.t_length - 1)
    scored = scores[model.t_length - 1 :]
    assert [s.frame for s in scored] == list(range(model.t_length - 1, len(frames)))
    assert_same_scores(
        [s.psnr for s in scored],
        [s.feature_distance for s in scored],
        sum(s.memory_updated for s in scored),
        scorer.items,
        reference,
    )


def image_of(frame: torch.Tensor) -> np.ndarray:
    """A model frame ``(3, H, W)`` in [-1, 1] as the BGR uint8 image it came from, exactly:
    the frames below are built from such images."""
    return ((frame.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def test_the_python_api_equals_the_window_by_window_order() -> None:
    """Scorer.score in chunks of 3 windows (each chunk's frames encoded once) against the
    reference order on the same preprocessed frames."""
    model = tiny_model()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(4))
    frames = video(13, seed=5)
    images = np.stack([image_of(frame) for frame in frames])
    gamma = mixed_gamma(model, frames, items)
    loaded = LoadedModel(model, items, HEIGHT, WIDTH, "tiny", {}, None)
    scorer = Scorer(loaded, precision="fp32", gamma=gamma)
    scores = scorer.score(images, chunk=3, carry_memory=True)
    reference = window_by_window_scores(model, frames, items, gamma)
    assert_same_scores(
        scores.psnr, scores.feature_distance, scores.memory_updates, scorer.carried_items,
        reference,
    )  # fmt: skip


def test_encoding_from_per_frame_gates_equals_encoding_the_windows() -> None:
    model = tiny_model()
    frames = video(6, seed=6)
    windows = torch.stack([frames[k : k + 4].flatten(0, 1) for k in range(3)])
    gates = model.encode_frames(frames)
    with torch.no_grad():
        reused = model.encode_with_gates(windows, [gates[t : t + 3] for t in range(4)])
        whole = model.encode(windows)
    for part_reused, part_whole in zip(reused, whole, strict=True):
        torch.testing.assert_close(part_reused, part_whole, rtol=1e-6, atol=1e-6)


def test_per_frame_encoding_is_refused_in_training_mode() -> None:
    """In training BatchNorm normalises with each time step's batch statistics: a frame's
    result depends on its batch, so it may not be reused."""
    with pytest.raises(RuntimeError, match="eval mode"):
        tiny_model().train().encode_frames(video(2, seed=7))


def test_precast_convolutions_give_the_autocast_numbers_exactly(case) -> None:
    """In bf16 the streaming scorer runs a copy whose convolution weights are cast once,
    instead of autocast casting them for every frame: the same numbers, bit for bit."""
    model, items, frames, gamma, _ = case
    images = [image_of(frame) for frame in frames]
    precast = StreamingScorer(model, items, HEIGHT, WIDTH, gamma=gamma, dtype=torch.bfloat16)
    assert precast.network is not model
    assert precast.network.pred.encoder[0].weight.dtype == torch.bfloat16
    assert precast.network.pred.encoder[1].weight.dtype == torch.float32  # BatchNorm
    assert model.pred.encoder[0].weight.dtype == torch.float32  # the model is left alone
    autocast_casts = StreamingScorer(model, items, HEIGHT, WIDTH, gamma=gamma,
                                     dtype=torch.bfloat16)  # fmt: skip
    autocast_casts.network = model
    for image in images:
        a, b = precast.push(image), autocast_casts.push(image)
        if a is None:
            assert b is None
            continue
        assert (a.psnr, a.feature_distance, a.memory_updated) == (
            b.psnr, b.feature_distance, b.memory_updated,
        )  # fmt: skip
    assert torch.equal(precast.items, autocast_casts.items)
