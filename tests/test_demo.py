"""The synthetic demo dataset (data/demo.py): layout, labels, determinism, reuse."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import data.demo as demo_module
from data.demo import COMPLETE_MARKER, ensure_demo_dataset
from data.frame_folders import find_split_dir, list_videos
from data.labels import load_frame_labels

SMALL = dict(height=32, width=48, train_videos=2, test_videos=3, min_frames=30, max_frames=36)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return ensure_demo_dataset(tmp_path_factory.mktemp("first"), **SMALL)


def test_layout_and_labels_match_the_frames(small_demo):
    assert small_demo.name == "demo" and (small_demo / COMPLETE_MARKER).is_file()
    train = list_videos(find_split_dir(small_demo, "training"))
    test = list_videos(find_split_dir(small_demo, "testing"))
    assert find_split_dir(small_demo, "testing") == small_demo / "testing" / "frames"
    assert [video.name for video in train] == ["01", "02"]
    assert [video.name for video in test] == ["01", "02", "03"]
    for video in train + test:
        assert 30 <= len(video) <= 36
        assert video.frame_paths[0].name == "001.png"
        assert [p.name for p in video.frame_paths] == [
            f"{i:03d}.png" for i in range(1, len(video) + 1)
        ]
    image = cv2.imread(str(test[0].frame_paths[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8

    labels = load_frame_labels(small_demo, test)  # finds demo.mat
    for video in test:
        evaluated = labels[video.name][4:]  # evaluation drops the first 4 frames
        assert 0 < evaluated.sum() < len(evaluated), video.name


def test_anomalous_frames_differ_from_normal_ones(small_demo):
    """Abnormal frames carry a large bright object: far more pixels differ from the scene's
    per-pixel median than in normal frames (pedestrians are small and dark)."""
    test = list_videos(find_split_dir(small_demo, "testing"))
    labels = load_frame_labels(small_demo, test)
    for video in test:
        frames = np.stack([cv2.imread(str(p)) for p in video.frame_paths]).astype(np.int16)
        median = np.median(frames, axis=0)
        bright = (frames - median).max(axis=3) > 60  # much brighter than the scene
        counts = bright.reshape(len(frames), -1).sum(axis=1)
        abnormal = labels[video.name].astype(bool)
        assert counts[~abnormal].max() < np.median(counts[abnormal]), video.name


def test_generation_is_deterministic(small_demo, tmp_path):
    again = ensure_demo_dataset(tmp_path, **SMALL)
    sample = [
        Path("training/frames/01/001.png"),
        Path("training/frames/02/017.png"),
        Path("testing/frames/03/030.png"),
    ]
    for relative in sample:
        assert _digest(small_demo / relative) == _digest(again / relative), relative
    # demo.mat headers hold a creation time, so compare the labels, not the bytes.
    first = load_frame_labels(small_demo, list_videos(find_split_dir(small_demo, "testing")))
    second = load_frame_labels(again, list_videos(find_split_dir(again, "testing")))
    assert all(np.array_equal(first[name], second[name]) for name in first)

    other_seed = ensure_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    assert _digest(small_demo / sample[0]) != _digest(other_seed / sample[0])


def test_complete_dataset_is_reused_and_incomplete_one_replaced(tmp_path, monkeypatch):
    demo_dir = ensure_demo_dataset(tmp_path, **SMALL)
    frame = demo_dir / "training" / "frames" / "01" / "001.png"
    mtime = frame.stat().st_mtime_ns

    def must_not_generate(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(demo_module, "_generate", must_not_generate)
    assert ensure_demo_dataset(tmp_path, **SMALL) == demo_dir
    assert frame.stat().st_mtime_ns == mtime
    monkeypatch.undo()

    # Without its marker the copy counts as half-made and is replaced; no temp folders remain.
    (demo_dir / COMPLETE_MARKER).unlink()
    (demo_dir / "leftover.txt").write_text("from an interrupted run")
    ensure_demo_dataset(tmp_path, **SMALL)
    assert (demo_dir / COMPLETE_MARKER).is_file() and not (demo_dir / "leftover.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail_halfway(root, params):
        (root / "training").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_generate", fail_halfway)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_default_size_meets_the_quickstart_budget(tmp_path):
    """Default: 6 training and 4 test videos of 50-64 frames; 30-50 % abnormal frames."""
    demo_dir = ensure_demo_dataset(tmp_path)
    train = list_videos(find_split_dir(demo_dir, "training"))
    test = list_videos(find_split_dir(demo_dir, "testing"))
    assert len(train) == 6 and len(test) == 4
    assert all(50 <= len(video) <= 64 for video in train + test)
    labels = load_frame_labels(demo_dir, test)
    for video in test:
        assert 0.3 <= labels[video.name].mean() <= 0.5, video.name
        assert 0 < labels[video.name][4:].sum() < len(video) - 4


def _generate_and_read_everything(root: str) -> int:
    """In a separate process: what each torchrun process does first with the demo data."""
    from data.decoding import decode_frame

    demo_dir = ensure_demo_dataset(Path(root), **SMALL)
    frames = 0
    for split in ("training", "testing"):
        for video in list_videos(find_split_dir(demo_dir, split)):
            for path in video.frame_paths:
                decode_frame(path, 32, 48)
                frames += 1
    return frames


def test_processes_starting_together_generate_the_scene_once(tmp_path):
    """Several processes (torchrun, two quickstarts) asking for the scene at the same time:
    one generates it while the others wait, and all of them read every frame intact."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        counts = list(pool.map(_generate_and_read_everything, [str(tmp_path)] * 3))
    assert len(set(counts)) == 1 and counts[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
