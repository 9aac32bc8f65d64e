"""Frames per second of one training epoch: cached FrameWindowDataset vs per-window decoding.

The reference loader decodes all ``t_length`` frames of every window from disk, so each frame
is decoded ``t_length`` times per epoch; FrameWindowDataset decodes each frame once, up front.
Runs on the demo scene by default (generated on first use)::

    python benchmarks/loader_speed.py
    python benchmarks/loader_speed.py --dataset_path ./datasets --dataset_type ped2 --h 256 --w 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError  # noqa: E402
from data.decoding import decode_frame
from data.frame_cache import FrameCache
from data.frame_folders import find_split_dir, list_videos
from data.frames import FrameWindowDataset, frames_to_tensor


def per_window_epoch(dataset: FrameWindowDataset) -> float:
    """Seconds for one epoch decoding every window's frames from disk, as the reference does."""
    start = time.perf_counter()
    for video_index, first in dataset.windows:
        paths = dataset.videos[video_index].frame_paths[first : first + dataset.t_length]
        frames = [frames_to_tensor(decode_frame(p, dataset.height, dataset.width)) for p in paths]
        torch.cat(frames, dim=0)
    return time.perf_counter() - start


def cached_epoch(dataset: FrameWindowDataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_path", default="./datasets")
    parser.add_argument("--dataset_type", default="demo")
    parser.add_argument("--split", default="training", choices=("training", "testing"))
    parser.add_argument("--h", type=int, default=256)
    parser.add_argument("--w", type=int, default=256)
    parser.add_argument("--t_length", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker's view: one core per worker

    try:
        if args.dataset_type == "demo":
            from data.demo import ensure_demo_dataset

            dataset_dir = ensure_demo_dataset(Path(args.dataset_path))
        else:
            dataset_dir = Path(args.dataset_path) / args.dataset_type
        videos = list_videos(find_split_dir(dataset_dir, args.split))
    except InputError as error:
        sys.exit(f"error: {error}")

    setup_start = time.perf_counter()
    dataset = FrameWindowDataset(videos, args.h, args.w, args.t_length, FrameCache(args.h, args.w))
    setup = time.perf_counter() - setup_start
    epoch = cached_epoch(dataset)
    baseline = per_window_epoch(dataset)

    frames_per_epoch = len(dataset) * args.t_length  # frames delivered, counting repeats
    print(
        f"{dataset_dir} {args.split}: {len(dataset.videos)} videos, {len(dataset)} windows, "
        f"{args.h}x{args.w}, t_length {args.t_length}"
    )
    first_epoch = setup + epoch
    print(f"per-window decoding : {frames_per_epoch / baseline:10.0f} frames/s")
    print(
        f"cached, first epoch : {frames_per_epoch / first_epoch:10.0f} frames/s "
        f"(decoding {setup:.1f} s + indexing {epoch:.1f} s)"
    )
    print(f"cached, later epochs: {frames_per_epoch / epoch:10.0f} frames/s")
    print(
        f"speed-up: first epoch {baseline / first_epoch:.1f}x, later epochs {baseline / epoch:.1f}x"
    )


if __name__ == "__main__":
    main()
