"""The Python API (inference.load_scorer), published weights by name, and torch.hub."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import model.pretrained as pretrained
from common.download import file_sha256
from common.errors import InputError
from data.sources import preprocess
from inference import load_scorer
from inference.calibration import calibration_from_scores, threshold_for_rate
from inference.video import evaluate_video
from model import LGNNet, update_memory
from model import checkpoint as checkpoint_format
from model.weights_file import load_for_inference

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The shared trained run's checkpoint (tiny network, t_length 2, 16x24) with a
    calibration added by the real writer."""
    calibration = calibration_from_scores(np.linspace(20.0, 22.0, 100), np.linspace(0.1, 0.3, 100))
    saved = checkpoint_format.with_calibration(checkpoint_format.read(checkpoint), calibration)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pth"
    checkpoint_format.write(saved, path)
    return path


def clip_frames(count: int = 11) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = np.full((count, 30, 40, 3), 90, np.uint8)
    for t in range(count):
        frames[t, 8:16, 2 + 2 * t : 10 + 2 * t] = 200
    return np.clip(frames + rng.integers(0, 8, frames.shape), 0, 255).astype(np.uint8)


def reference_scores(
    model: LGNNet, frames: torch.Tensor, items: torch.Tensor, gamma: float = 0.009
) -> tuple[np.ndarray, np.ndarray]:
    """The test-time protocol written out plainly, one window at a time: PSNR of the
    prediction, feature distance, and a memory update when the point score is below gamma."""
    psnrs, distances = [], []
    t_length = model.t_length
    with torch.no_grad():
        for start in range(frames.shape[0] - t_length + 1):
            window = frames[start : start + t_length - 1].reshape(1, -1, *frames.shape[-2:])
            out = model.forward_infer(window, items)
            target = frames[start + t_length - 1 : start + t_length]
            errors = ((out.prediction + 1) / 2 - (target + 1) / 2) ** 2
            psnrs.append(10 * math.log10(1 / float(errors.mean())))
            distances.append(float(out.feature_distance))
            weights = 1 - torch.exp(-errors)
            if float((weights * errors).sum() / weights.sum()) < gamma:
                items = update_memory(out.queries, items)
    return np.array(psnrs), np.array(distances)


def test_scorer_gives_the_protocols_numbers_for_arrays_folders_and_files(
    checkpoint: Path, tmp_path: Path
) -> None:
    frames = clip_frames()
    folder = tmp_path / "clip"
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame)

    scorer = load_scorer(checkpoint, device="cpu", precision="fp32")
    loaded = load_for_inference(checkpoint)
    tensors = torch.stack([preprocess(frame, 16, 24) for frame in frames])
    psnr, distance = reference_scores(loaded.model, tensors, loaded.items)

    for video in (frames, folder):
        scores = scorer.score(video, chunk=4)  # several chunks: the memory carries over
        assert list(scores.frame) == list(range(1, 11))
        np.testing.assert_allclose(scores.psnr, psnr, rtol=1e-5)
        np.testing.assert_allclose(scores.feature_distance, distance, rtol=1e-4)
        # The per-video fusion, written out (min-max would amplify the rounding above).
        p, d = scores.psnr, scores.feature_distance
        fused = 0.6 * (p - p.min()) / np.ptp(p) + 0.4 * (d.max() - d) / np.ptp(d)
        np.testing.assert_allclose(scores.normality, fused, atol=1e-12)
        threshold = threshold_for_rate(scorer.calibration, 0.01)
        assert np.array_equal(scores.anomaly, scores.calibrated_normality < threshold)

    with pytest.raises(InputError, match="fewer than the 2 frames"):
        scorer.score(frames[:1])


def test_export_keeps_what_inference_needs_in_fp16(checkpoint: Path, tmp_path: Path) -> None:
    published = tmp_path / "lgn_net_tiny.pth"
    assert pretrained.main(["export", str(checkpoint), str(published)]) == 0
    saved = torch.load(published, weights_only=True)
    assert (saved["format"], saved["kind"]) == ("lgn-net", "inference") and "optimizer" not in saved
    assert saved["model"]["decoder.moduleDeconv1.6.weight"].dtype == torch.float16
    source = torch.load(checkpoint, weights_only=True)
    assert saved["items"].dtype == torch.float32 and saved["epoch"] == source["epoch"]
    assert saved["calibration"] == source["calibration"]
    # The trainer's folders stay behind; the run's settings travel.
    assert source["args"]["dataset_path"] and "dataset_path" not in saved["args"]
    assert {"cache_dir", "output_root", "exp_dir"}.isdisjoint(saved["args"])
    assert (saved["args"]["h"], saved["args"]["w"]) == (source["args"]["h"], source["args"]["w"])

    full, half = load_for_inference(checkpoint), load_for_inference(published)
    frames = torch.rand(6, 3, 16, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    a = evaluate_video(full.model, frames, full.items, gamma=0.009)
    b = evaluate_video(half.model, frames, half.items, gamma=0.009)
    np.testing.assert_allclose(b.psnr, a.psnr, atol=0.05)  # fp16 weights: hundredths of a dB


@pytest.fixture
def published(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tiny`` published: the exported file in a private weights/ folder."""
    weights = tmp_path / "weights"
    weights.mkdir()
    pretrained.export_weights(checkpoint, weights / "lgn_net_tiny.pth")
    entry = {"file": "lgn_net_tiny.pth", "sha256": file_sha256(weights / "lgn_net_tiny.pth")}
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(pretrained, "PUBLISHED_WEIGHTS", {"tiny": entry})
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "cache"))
    return weights / "lgn_net_tiny.pth"


def test_a_published_name_resolves_to_the_bundled_file_else_its_mirror(
    published: Path, tmp_path: Path
) -> None:
    assert pretrained.resolve_checkpoint("tiny") == published
    data = published.read_bytes()

    published.write_bytes(data[:-10])  # damaged: refused, never used
    with pytest.raises(InputError, match="does not match its sha256"):
        pretrained.resolve_checkpoint("tiny")

    mirror = tmp_path / "mirror" / "lgn_net_tiny.pth"
    mirror.parent.mkdir()
    mirror.write_bytes(data)
    published.unlink()
    with pytest.raises(InputError, match="missing, and have no download address"):
        pretrained.resolve_checkpoint("tiny")
    pretrained.PUBLISHED_WEIGHTS["tiny"]["url"] = mirror.as_uri()
    downloaded = pretrained.resolve_checkpoint("tiny")
    assert downloaded.parent == tmp_path / "cache" and downloaded.read_bytes() == data

    mirror.write_bytes(data[:-10])  # a mirror serving another file is refused too
    downloaded.unlink()
    with pytest.raises(InputError, match="sha256"):
        pretrained.resolve_checkpoint("tiny")


def test_published_weights_through_the_api_and_torch_hub(published: Path) -> None:
    scorer = load_scorer("tiny", device="cpu")
    assert (scorer.height, scorer.width) == (16, 24) and scorer.model.t_length == 2
    hub = torch.hub.load(str(REPO_ROOT), "lgn_net", weights="tiny", source="local", device="cpu")
    frames = clip_frames(6)
    np.testing.assert_array_equal(hub.score(frames).psnr, scorer.score(frames).psnr)
    untrained = torch.hub.load(
        str(REPO_ROOT), "lgn_net", weights="untrained", source="local", device="cpu"
    )
    assert sum(p.numel() for p in untrained.model.parameters()) == 22_753_667


def test_frames_in_memory_follow_one_contract(checkpoint: Path) -> None:
    scorer = load_scorer(checkpoint, device="cpu", precision="fp32")
    frames = clip_frames(6)
    expected = scorer.score(frames).psnr
    # Converted exactly: floats in [0, 1], other integer types, lists, tensors.
    for same in (
        frames.astype(np.float32) / 255,
        frames / 255.0,
        frames.astype(np.int64),
        list(frames),
        torch.from_numpy(frames),
        torch.from_numpy(frames).half() / 255,
    ):
        np.testing.assert_array_equal(scorer.score(same).psnr, expected)
    grey = np.stack([cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) for frame in frames])
    np.testing.assert_array_equal(
        scorer.score(grey).psnr, scorer.score(np.repeat(grey[..., None], 3, axis=-1)).psnr
    )
    # Refused in one line that says what was given and what is expected, naming no flag.
    nan = frames.astype(np.float32) / 255
    nan[0, 0, 0, 0] = np.nan
    for given, says in (
        (frames[0], "one frame"),
        (frames.transpose(0, 3, 1, 2), "channels first"),
        (frames.astype(np.uint16) * 257, f"values up to {int(frames.max()) * 257}"),
        (frames.astype(np.float32), f"values in [{frames.min()}, {frames.max()}]"),
        (frames.astype(np.float32) / 127.5 - 1, "(frames + 1) / 2"),
        (nan, "with 1 NaN of its"),
        ([frames[0], frames[1][:10]], "different shapes"),
        (frames.astype(bool), "dtype bool"),
        (np.zeros((6, 8)), "shape (6, 8)"),
    ):
        with pytest.raises(InputError) as raised:
            scorer.score(given)
        message = str(raised.value)
        assert says in message and "(T, H, W, 3) in BGR" in message, message
        assert "--" not in message and "\n" not in message


def test_api_errors_name_no_command_line_flag(
    checkpoint: Path, trained_run: Path, tmp_path: Path
) -> None:
    scorer = load_scorer(checkpoint, device="cpu")
    (tmp_path / "state_dict.pth").write_bytes((trained_run / "model.pth").read_bytes())
    for call in (
        lambda: load_scorer(tmp_path / "missing.pth"),
        lambda: load_scorer(model_dir=tmp_path / "missing.pth", m_items_dir=tmp_path / "x.pt"),
        lambda: load_scorer(tmp_path / "state_dict.pth"),
        lambda: load_scorer(checkpoint, precision="fp64"),
        lambda: load_scorer(checkpoint, device="nonsense"),
        lambda: scorer.score(tmp_path / "missing.mp4"),
        lambda: load_scorer(),
    ):
        with pytest.raises(InputError) as raised:
            call()
        assert "--" not in str(raised.value), str(raised.value)


def test_the_memory_carries_across_calls_only_when_asked(checkpoint: Path) -> None:
    # gamma 1: every frame updates the memory, so where the memory starts shows.
    scorer = load_scorer(checkpoint, device="cpu", precision="fp32", gamma=1.0)
    loaded = load_for_inference(checkpoint)
    first, second = clip_frames(6), clip_frames(7)[::-1].copy()
    as_tensors = [torch.stack([preprocess(f, 16, 24) for f in clip]) for clip in (first, second)]

    scorer.score(first, carry_memory=True)
    carried = scorer.score(second, carry_memory=True)
    fresh = scorer.score(second)
    # evaluate.py's way: the second video starts from the memory the first one left.
    after_first = evaluate_video(loaded.model, as_tensors[0], loaded.items, gamma=1.0).items
    expected_carried = reference_scores(loaded.model, as_tensors[1], after_first, gamma=1.0)[0]
    expected_fresh = reference_scores(loaded.model, as_tensors[1], loaded.items, gamma=1.0)[0]
    np.testing.assert_allclose(carried.psnr, expected_carried, rtol=1e-5)
    np.testing.assert_allclose(fresh.psnr, expected_fresh, rtol=1e-5)
    assert not np.allclose(carried.feature_distance, fresh.feature_distance, rtol=1e-6)
    scorer.reset_memory()
    np.testing.assert_array_equal(scorer.score(second, carry_memory=True).psnr, fresh.psnr)
