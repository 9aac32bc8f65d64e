"""Each benchmark's release layout converted to the frame trees the loaders read.

Output, under the folder given: ``training/frames/<video>/<NNN>.jpg`` and
``testing/frames/<video>/<NNN>.jpg`` (3-channel JPEG frames numbered from 0, zero-padded to 3
digits, more when a video is longer), ``<dataset>.mat`` (frame labels in the ano_pred format)
and, for ShanghaiTech, ``testing/test_frame_mask/<video>.npy``. The official labels are read
with the project's label loader, which checks them against the converted test videos.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.errors import InputError
from data.frame_folders import find_split_dir, list_videos, natural_sort_key
from data.labels import load_frame_labels, write_ano_pred_mat
from data.official_sources import OFFICIAL_DOWNLOADS, SHANGHAI_PAGE

# How deep below a --source folder the expected layout is looked for.
SEARCH_DEPTH = 4


# --------------------------------------------------------------------------- helpers


def _sorted_by_name(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda path: natural_sort_key(path.name))


def _visible(path: Path) -> bool:
    # macOS archives carry "._name" resource forks and ".DS_Store" next to the real files.
    return not path.name.startswith(".")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return _sorted_by_name(
        p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in suffixes
    )


def _frame_name(index: int, n_frames: int) -> str:
    """0-based frame file name, zero-padded to 3 digits or as many as the video needs."""
    return f"{index:0{max(3, len(str(n_frames - 1)))}d}.jpg"


def _write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise InputError(f"could not write {path}; check free disk space and permissions")


def _find_dir(roots: Sequence[Path], accept: Callable[[Path], bool]) -> Path | None:
    """First folder (breadth-first, at most SEARCH_DEPTH below a root) that ``accept``s."""
    level = list(roots)
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [
            child
            for folder in level
            for child in sorted(folder.iterdir())
            if child.is_dir() and _visible(child)
        ]
    return None


def _layout_error(dataset: str, roots: Sequence[Path], expected: str) -> InputError:
    shown = ", ".join(str(r) for r in roots)
    return InputError(f"{shown} does not look like the {dataset} source: expected {expected}")


def _write_labels(out: Path, dataset: str, label_source: Path) -> None:
    """Read the official labels with the project's label loader, which checks them against
    the converted test videos (count and frames per video), and save ``<dataset>.mat``."""
    videos = list_videos(find_split_dir(out, "testing"))
    per_video = load_frame_labels(out, videos, label_path=label_source, dataset_type=dataset)
    write_ano_pred_mat(out / f"{dataset}.mat", [per_video[video.name] for video in videos])


# --------------------------------------------------------------------------- frames


def _copy_image_frames(frames: Sequence[Path], out_dir: Path, bar: tqdm) -> int:
    """Image files -> ``out_dir/<NNN>.jpg``; JPEGs are copied byte for byte, others re-encoded
    as 3-channel JPEG. Returns the frame count."""
    out_dir.mkdir(parents=True)
    for index, frame in enumerate(frames):
        target = out_dir / _frame_name(index, len(frames))
        if frame.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(frame, target)
        else:
            image = cv2.imread(str(frame), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"cannot decode frame {frame}; the file is damaged")
            _write_image(target, image)
        bar.update(1)
    return len(frames)


def _decode_video(video: Path, out_dir: Path) -> int:
    """Every frame of ``video`` -> ``out_dir/<NNN>.jpg`` (3-channel). Returns the frame count.

    Each frame is written as soon as it is decoded (one frame in memory at a time, whatever
    the video's length) under a provisional name; the container's frame total can be off, so
    the final zero-padding is known only at the end, when the files are renamed to it.
    """
    out_dir.mkdir(parents=True)
    capture = cv2.VideoCapture(str(video))
    provisional = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            provisional.append(out_dir / f".{len(provisional)}.decoded.jpg")
            _write_image(provisional[-1], image)
            del image  # not held while the next frame decodes
    finally:
        capture.release()
    if not provisional:
        raise InputError(
            f"cannot decode any frame of {video}; the file is damaged or OpenCV lacks its codec"
        )
    for index, path in enumerate(provisional):
        os.replace(path, out_dir / _frame_name(index, len(provisional)))
    return len(provisional)


def _decode_videos(videos: Sequence[Path], out_split: Path, desc: str, progress: bool) -> dict:
    counts = {}
    for video in tqdm(videos, desc=desc, unit="video", disable=not progress):
        counts[video.stem] = _decode_video(video, out_split / "frames" / video.stem)
    return counts


# --------------------------------------------------------------------------- UCSD Ped2


def _ucsd_videos(split_dir: Path, prefix: str) -> list[Path]:
    # Test/ also holds "Test001_gt" folders of pixel masks, which are not videos.
    return _sorted_by_name(
        d
        for d in split_dir.iterdir()
        if d.is_dir() and d.name.startswith(prefix) and not d.name.lower().endswith("_gt")
    )


def convert_ped2(roots: Sequence[Path], out: Path, progress: bool = True) -> None:
    """UCSD ``UCSDped2/{Train,Test}/{Train,Test}NNN/NNN.tif`` -> frame tree + ``ped2.mat``.

    Videos are renamed 01, 02, ... in sorted order; labels come from ``Test/UCSDped2.m``.
    """
    expected = (
        "a folder UCSDped2/ with Train/Train001/001.tif ... and Test/Test001/001.tif ... "
        "(as in UCSD_Anomaly_Dataset.tar.gz)"
    )
    ucsd = _find_dir(
        roots,
        lambda d: (
            (d / "Train").is_dir()
            and (d / "Test").is_dir()
            and (d.name.lower() == "ucsdped2" or (d / "Test" / "UCSDped2.m").is_file())
        ),
    )
    if ucsd is None:
        raise _layout_error("ped2", roots, expected)
    gt_file = ucsd / "Test" / "UCSDped2.m"
    if not gt_file.is_file():
        raise InputError(f"missing {gt_file}, the official Ped2 ground truth; expected {expected}")
    for split, prefix in (("training", "Train"), ("testing", "Test")):
        videos = [(v, _files(v, (".tif", ".tiff"))) for v in _ucsd_videos(ucsd / prefix, prefix)]
        videos = [(v, frames) for v, frames in videos if frames]
        if not videos:
            raise InputError(f"no {prefix}NNN folders of .tif frames in {ucsd / prefix}")
        total = sum(len(frames) for _, frames in videos)
        width = max(2, len(str(len(videos))))
        with tqdm(total=total, desc=f"ped2 {split}", unit="frame", disable=not progress) as bar:
            for number, (_, frames) in enumerate(videos, start=1):
                name = f"{number:0{width}d}"
                _copy_image_frames(frames, out / split / "frames" / name, bar)
    _write_labels(out, "ped2", gt_file)


# --------------------------------------------------------------------------- CUHK Avenue


def convert_avenue(roots: Sequence[Path], out: Path, progress: bool = True) -> None:
    """CUHK Avenue ``{training,testing}_videos/NN.avi`` -> frame tree + ``avenue.mat``.

    Two frame-label versions of Avenue circulate and differ on 441 of its 15,324 test
    frames; the labels written here are derived from the official pixel masks
    (``ground_truth_demo/testing_label_mask/<n>_label.mat``): a frame is abnormal when its
    mask has any pixel set. Say so when reporting results.
    """
    videos_dir = _find_dir(
        roots, lambda d: (d / "training_videos").is_dir() and (d / "testing_videos").is_dir()
    )
    if videos_dir is None:
        raise _layout_error(
            "avenue",
            roots,
            "a folder (Avenue Dataset/) with training_videos/01.avi ... and "
            "testing_videos/01.avi ... (as in Avenue_Dataset.zip)",
        )
    masks_dir = _find_dir(roots, lambda d: d.name == "testing_label_mask")
    if masks_dir is None:
        raise InputError(
            "Avenue ground truth not found: expected ground_truth_demo/testing_label_mask/"
            f"<n>_label.mat; pass {OFFICIAL_DOWNLOADS['avenue'][1].url} (or its extracted "
            "folder) as a second --source"
        )
    split_videos = {}
    for split in ("training", "testing"):
        split_videos[split] = _files(videos_dir / f"{split}_videos", (".avi",))
        if not split_videos[split]:
            raise InputError(f"no .avi videos in {videos_dir / f'{split}_videos'}")
    _decode_videos(split_videos["training"], out / "training", "avenue training", progress)
    _decode_videos(split_videos["testing"], out / "testing", "avenue testing", progress)
    _write_labels(out, "avenue", masks_dir)


# --------------------------------------------------------------------------- ShanghaiTech


def convert_shanghai(roots: Sequence[Path], out: Path, progress: bool = True) -> None:
    """ShanghaiTech ``training/videos/*.avi``, ``testing/frames/<video>/*.jpg`` and
    ``testing/test_frame_mask/<video>.npy`` -> frame tree, the masks and ``shanghai.mat``."""
    base = _find_dir(
        roots,
        lambda d: (d / "training" / "videos").is_dir() and (d / "testing" / "frames").is_dir(),
    )
    if base is None:
        raise _layout_error(
            "shanghai",
            roots,
            "a folder with training/videos/01_001.avi ..., testing/frames/01_0014/000.jpg ... "
            "and testing/test_frame_mask/01_0014.npy ... "
            f"(the archive linked from {SHANGHAI_PAGE})",
        )
    masks_dir = base / "testing" / "test_frame_mask"
    if not masks_dir.is_dir():
        raise InputError(f"missing {masks_dir}, the ShanghaiTech frame labels (<video>.npy)")
    train_videos = _files(base / "training" / "videos", (".avi",))
    if not train_videos:
        raise InputError(f"no .avi videos in {base / 'training' / 'videos'}")
    _decode_videos(train_videos, out / "training", "shanghai training", progress)

    image_suffixes = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
    test_videos = [
        (d, _files(d, image_suffixes))
        for d in _sorted_by_name(p for p in (base / "testing" / "frames").iterdir() if p.is_dir())
    ]
    test_videos = [(d, frames) for d, frames in test_videos if frames]
    if not test_videos:
        raise InputError(f"no test videos (folders of frames) in {base / 'testing' / 'frames'}")
    out_masks = out / "testing" / "test_frame_mask"
    out_masks.mkdir(parents=True)
    total = sum(len(frames) for _, frames in test_videos)
    with tqdm(total=total, desc="shanghai testing", unit="frame", disable=not progress) as bar:
        for folder, frames in test_videos:
            mask_file = masks_dir / f"{folder.name}.npy"
            if not mask_file.is_file():
                raise InputError(f"missing {mask_file}, the labels of test video {folder.name}")
            _copy_image_frames(frames, out / "testing" / "frames" / folder.name, bar)
            shutil.copyfile(mask_file, out_masks / mask_file.name)
    # Reading the copied masks back checks their values and lengths against the frames.
    _write_labels(out, "shanghai", out_masks)


CONVERTERS: dict[str, Callable[[Sequence[Path], Path, bool], None]] = {
    "ped2": convert_ped2,
    "avenue": convert_avenue,
    "shanghai": convert_shanghai,
}
