"""Frame trees, decoding, windows and the frame cache (data/frame_folders.py,
data/decoding.py, data/frame_cache.py, data/frames.py)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import data.decoding as decoding
from common.errors import InputError
from data.decoding import decode_frame
from data.frame_cache import FrameCache
from data.frame_folders import Video, find_split_dir, list_videos
from data.frames import FrameWindowDataset, frames_to_tensor, open_split

H, W = 6, 8


def _write_image(path: Path, seed: int, shape=(12, 10, 3)) -> np.ndarray:
    """A random image at ``path`` (lossless formats only, so tests can compare pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def _make_video(folder: Path, num_frames: int, first: int = 0, ext: str = ".png", seed: int = 0):
    for index in range(num_frames):
        _write_image(folder / f"{first + index:03d}{ext}", seed * 1000 + index)


def _expected_window(paths: list[Path]) -> torch.Tensor:
    """Independent reference: cv2 decode, resize, scale, stack channels in time order."""
    parts = []
    for path in paths:
        image = cv2.resize(cv2.imread(str(path)), (W, H), interpolation=cv2.INTER_LINEAR)
        parts.append(image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return torch.from_numpy(np.concatenate(parts, axis=0))


@pytest.mark.parametrize(
    ("split_folder", "with_frames_dir"),
    [("training", True), ("train", False), ("testing", False), ("test", True)],
)
def test_find_split_dir_accepts_both_names_and_layouts(tmp_path, split_folder, with_frames_dir):
    video_parent = (
        tmp_path / split_folder / "frames" if with_frames_dir else tmp_path / split_folder
    )
    _make_video(video_parent / "01", 2)
    split = "training" if split_folder.startswith("train") else "testing"
    assert find_split_dir(tmp_path, split) == video_parent
    assert [video.name for video in list_videos(video_parent)] == ["01"]


def test_missing_dataset_or_split_names_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nowhere.*training"):
        find_split_dir(tmp_path / "nowhere", "training")
    (tmp_path / "training").mkdir()
    with pytest.raises(InputError) as error:
        find_split_dir(tmp_path, "testing")
    assert str(tmp_path / "testing") in str(error.value)


def test_list_videos_sorts_filters_and_accepts_mixed_extensions(tmp_path):
    _make_video(tmp_path / "02", 3, first=1)  # frames 001..003
    _write_image(tmp_path / "01" / "f_2.JPG", 1)
    _write_image(tmp_path / "01" / "f_1.png", 2)
    _write_image(tmp_path / "01" / "f_3.bmp", 3)
    _write_image(tmp_path / "01" / "f_4.TIFF", 4)
    (tmp_path / "01" / "notes.txt").write_text("not a frame")
    (tmp_path / "01" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "01" / "._f_1.png").write_bytes(b"resource fork")
    (tmp_path / "readme.md").write_text("not a video")
    # digit runs compare as numbers: 9 before 10
    for name in ("10.png", "9.png"):
        _write_image(tmp_path / "03" / name, 5)

    videos = list_videos(tmp_path)
    assert [video.name for video in videos] == ["01", "02", "03"]
    assert [p.name for p in videos[0].frame_paths] == ["f_1.png", "f_2.JPG", "f_3.bmp", "f_4.TIFF"]
    assert [p.name for p in videos[1].frame_paths] == ["001.png", "002.png", "003.png"]
    assert [p.name for p in videos[2].frame_paths] == ["9.png", "10.png"]
    assert len(videos[0]) == 4


def test_empty_video_and_no_videos_raise_input_error(tmp_path):
    _make_video(tmp_path / "01", 2)
    (tmp_path / "02").mkdir()
    (tmp_path / "02" / "info.txt").write_text("x")
    with pytest.raises(InputError, match="02"):
        list_videos(tmp_path)
    empty = tmp_path / "empty_split"
    empty.mkdir()
    with pytest.raises(InputError, match="no video folders"):
        list_videos(empty)


def test_decode_frame_grey_becomes_three_channels_and_resizes(tmp_path):
    grey = _write_image(tmp_path / "grey.png", 0, shape=(12, 10))
    decoded = decode_frame(tmp_path / "grey.png", H, W)
    assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
    expected = cv2.resize(grey, (W, H), interpolation=cv2.INTER_LINEAR)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], expected)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "01").mkdir()
    (tmp_path / "01" / "000.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="000.jpg"):
        decode_frame(tmp_path / "01" / "000.jpg", H, W)
    with pytest.raises(InputError, match="000.jpg"):
        FrameWindowDataset(list_videos(tmp_path), H, W, t_length=1)


def test_frames_to_tensor_scales_and_moves_channels():
    frames = np.array([[[[0, 127, 255]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    tensor = frames_to_tensor(frames)
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == torch.float32
    expected = torch.tensor([-1.0, 127 / 127.5 - 1.0, 1.0])
    torch.testing.assert_close(tensor.flatten(), expected, rtol=0, atol=1e-7)
    assert frames_to_tensor(torch.zeros(2, 4, 5, 3, dtype=torch.uint8)).shape == (2, 3, 4, 5)


def test_windows_cover_every_start_and_match_independent_decoding(tmp_path):
    lengths = {"01": 7, "02": 5, "03": 9}
    for seed, (name, length) in enumerate(lengths.items()):
        _make_video(tmp_path / name, length, first=1, seed=seed)  # frames from 001
    dataset = FrameWindowDataset(list_videos(tmp_path), H, W, t_length=5)
    assert len(dataset) == sum(length - 5 + 1 for length in lengths.values()) == 9
    assert dataset.windows[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert dataset.windows[-1] == (2, 4)

    for index in (0, 2, 3, len(dataset) - 1):  # first, last of a video, other videos
        video_index, start = dataset.windows[index]
        paths = list(dataset.videos[video_index].frame_paths[start : start + 5])
        item = dataset[index]
        assert item.shape == (15, H, W) and item.dtype == torch.float32
        torch.testing.assert_close(item, _expected_window(paths), rtol=0, atol=1e-6)

    whole = dataset.video_frames(2)
    assert whole.shape == (9, H, W, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(whole[8], decode_frame(dataset.videos[2].frame_paths[8], H, W))


def test_short_videos_are_skipped_with_one_plain_line_each(tmp_path, capsys):
    _make_video(tmp_path / "01", 6)
    _make_video(tmp_path / "02", 3)
    _make_video(tmp_path / "03", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a line, not a warning with its source line
        dataset = FrameWindowDataset(list_videos(tmp_path), H, W, t_length=5)
    assert [video.name for video in dataset.videos] == ["01"]
    assert dataset.skipped == ["02", "03"]
    assert len(dataset) == 2
    assert capsys.readouterr().err.splitlines() == [
        "skipping video 02: 3 frames, fewer than the 5 of one window (--t_length)",
        "skipping video 03: 1 frame, fewer than the 5 of one window (--t_length)",
    ]


def test_open_split_finds_the_videos(tmp_path):
    _make_video(tmp_path / "testing" / "frames" / "01", 6)
    dataset = open_split(tmp_path, "testing", H, W, t_length=3)
    assert len(dataset) == 4 and dataset[0].shape == (9, H, W)


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts decode_frame calls per file, still decoding for real."""
    calls: dict[Path, int] = {}
    real_decode = decoding.decode_frame

    def counting_decode(path, height, width):
        calls[path] = calls.get(path, 0) + 1
        return real_decode(path, height, width)

    monkeypatch.setattr(decoding, "decode_frame", counting_decode)
    return calls


def test_each_frame_is_decoded_once_per_run(tmp_path, count_decodes):
    _make_video(tmp_path / "01", 8)
    _make_video(tmp_path / "02", 6, seed=1)
    videos = list_videos(tmp_path)
    cache = FrameCache(H, W)
    dataset = FrameWindowDataset(videos, H, W, t_length=5, cache=cache)
    for index in range(len(dataset)):
        dataset[index]
    FrameWindowDataset(videos, H, W, t_length=3, cache=cache)  # same cache: no new decoding
    assert len(count_decodes) == 14 and set(count_decodes.values()) == {1}


def test_disk_cache_is_reused_and_invalidated_by_mtime(tmp_path, count_decodes):
    frame_dir = tmp_path / "frames" / "01"
    _make_video(frame_dir, 4)
    cache_dir = tmp_path / "cache"
    video = list_videos(tmp_path / "frames")[0]

    first = FrameCache(H, W, cache_dir).get(video)
    assert len(count_decodes) == 4
    assert len(list(cache_dir.rglob("*.npy"))) == 1
    assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]

    count_decodes.clear()
    second = FrameCache(H, W, cache_dir).get(video)  # a new run
    assert count_decodes == {}
    np.testing.assert_array_equal(first, second)

    # Another size is cached separately.
    FrameCache(H + 2, W, cache_dir).get(video)
    assert len(count_decodes) == 4

    count_decodes.clear()
    changed = video.frame_paths[2]
    new_image = _write_image(changed, 99)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = FrameCache(H, W, cache_dir).get(video)
    assert len(count_decodes) == 4
    expected = cv2.resize(new_image, (W, H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(third[2], expected)


def test_corrupt_disk_cache_entry_is_decoded_again(tmp_path, count_decodes):
    _make_video(tmp_path / "frames" / "01", 3)
    video = list_videos(tmp_path / "frames")[0]
    FrameCache(H, W, tmp_path / "cache").get(video)
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    entry.write_bytes(b"truncated")
    count_decodes.clear()
    frames = FrameCache(H, W, tmp_path / "cache").get(video)
    assert len(count_decodes) == 3 and frames.shape == (3, H, W, 3)


def test_full_disk_while_caching_warns_and_keeps_the_frames(tmp_path, monkeypatch):
    _make_video(tmp_path / "frames" / "01", 3)
    video = list_videos(tmp_path / "frames")[0]

    def disk_full(handle, array):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.warns(UserWarning, match="could not write frame cache"):
        frames = FrameCache(H, W, tmp_path / "cache").get(video)
    assert frames.shape == (3, H, W, 3)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_video_is_a_sized_value():
    video = Video("01", (Path("a.png"), Path("b.png")))
    assert len(video) == 2 and video == Video("01", (Path("a.png"), Path("b.png")))
