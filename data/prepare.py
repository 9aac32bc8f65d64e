"""Download the benchmark data sets and convert them to the frame trees the loaders read.

    python -m data.prepare {ped2,avenue,shanghai} --root <dir> [--source <archive or folder>]...
        [--overwrite]

Output, under ``<root>/<dataset>/``:

- ``training/frames/<video>/<NNN>.jpg`` and ``testing/frames/<video>/<NNN>.jpg``: 3-channel
  JPEG frames numbered from 0, zero-padded to 3 digits (more when a video is longer);
- ``<dataset>.mat``: frame labels in the ano_pred format (variable ``gt``: a 1xV cell of 2xK
  [first; last] 1-based inclusive abnormal ranges, 1 = abnormal);
- ShanghaiTech only: ``testing/test_frame_mask/<video>.npy``, the official per-frame labels.

Without ``--source`` the official archives are downloaded into ``<root>/downloads/`` (kept
with ``--keep_archive``, deleted after a successful conversion otherwise; an interrupted
download resumes). ``--source`` takes archives (.tar.gz, .tgz, .tar, .zip) or extracted
folders, and may be repeated (Avenue's videos and ground truth are separate archives).
Everything is built in a temporary folder inside ``<root>`` and renamed into place at the
end, so a failure never leaves a half-prepared data set where a good one was. An existing
``<root>/<dataset>/`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.download import download_file, file_sha256
from common.errors import InputError
from common.outputs import check_outputs
from common.progress import close_progress_bars
from data.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive
from data.frames import find_split_dir, list_videos, natural_sort_key
from data.labels import load_frame_labels, write_ano_pred_mat


@dataclass(frozen=True)
class Download:
    """An official archive. ``size`` (bytes) and ``sha256`` are checked when not None; a
    download with no known sha256 is announced as unchecked in one line before it starts."""

    url: str
    size: int | None = None
    sha256: str | None = None


# The one place that names the official download locations. The providers publish no
# checksums and serve plain http only; the sha256 of each archive is the one anomalib's video
# data modules pin for the same URL (anomalib/data/datamodules/video/ucsd_ped.py, avenue.py),
# so a substituted archive is refused before it is unpacked. The sizes are those of the files
# with these hashes (the hosts' Content-Length).
OFFICIAL_DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "ped2": (
        Download(
            "http://www.svcl.ucsd.edu/projects/anomaly/UCSD_Anomaly_Dataset.tar.gz",
            size=740_306_953,
            sha256="2329af326951f5097fdd114c50e853957d3e569493a49d22fc082a9fd791915b",
        ),
    ),
    "avenue": (
        Download(
            "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/Avenue_Dataset.zip",
            size=813_227_845,
            sha256="fc9cb8432a11ca79c18aa180c72524011411b69d3b0ff27c8816e41c0de61531",
        ),
        Download(
            "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/ground_truth_demo.zip",
            size=931_269,
            sha256="60fec1728ec8f73a58aad3aeb5729d70a805a47e0b8eb4bf91ab67ef06386d77",
        ),
    ),
    # Hosted on cloud drives behind a landing page: no direct URL, --source is required.
    "shanghai": (),
}
SHANGHAI_PAGE = "https://svip-lab.github.io/dataset/campus_dataset.html"
DATASETS = tuple(OFFICIAL_DOWNLOADS)
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


def _inputs(sources: Sequence[Path], scratch: Path, progress: bool) -> list[Path]:
    """Folders to look for the data set in: extracted archives and source folders as given."""
    roots = []
    for index, source in enumerate(sources):
        if source.is_dir():
            roots.append(source)
        elif source.is_file() and is_archive(source):
            extract_archive(source, scratch / str(index), progress)
            roots.append(scratch / str(index))
        elif source.exists():
            raise InputError(
                f"--source {source} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
            )
        else:
            raise InputError(f"--source {source} does not exist; check the path")
    return roots


def _fetch(download: Download, folder: Path, progress: bool) -> Path:
    """The official archive in ``folder``, downloaded unless a complete, verified copy is there."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(download.url).path)).name
    dest = folder / name
    if (
        dest.is_file()
        and (download.size is None or dest.stat().st_size == download.size)
        and (download.sha256 is None or file_sha256(dest) == download.sha256.lower())
    ):
        return dest
    if download.sha256 is None:
        print(
            f"note: no sha256 is known for {download.url}: the download cannot be checked "
            "against a substituted file",
            file=sys.stderr,
        )
    return download_file(
        download.url,
        dest,
        sha256=download.sha256,
        progress=progress,
        size=download.size,
        hint=f"download {download.url} by hand and pass it with --source",
    )


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


# --------------------------------------------------------------------------- driver


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished ``new`` folder to ``target``; an existing ``target`` is set aside
    first and deleted only after the new one is in place."""
    if not target.exists():
        os.rename(new, target)
        return
    previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
    os.rename(target, previous)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(previous, target)
        raise
    shutil.rmtree(previous)


# How many of the files an existing data set folder would lose a refusal names.
NAMED_LOSSES = 3


def files_only_in(old: Path, new: Path) -> list[str]:
    """The files under ``old`` (paths relative to it, ``/``-separated, in name order) that
    have no counterpart at the same place under ``new``."""
    return sorted(
        path.relative_to(old).as_posix()
        for path in old.rglob("*")
        if not path.is_dir() and not (new / path.relative_to(old)).exists()
    )


def check_replaceable(target: Path, new: Path, overwrite: bool) -> None:
    """Refuse, unless ``overwrite``, to replace the existing data set folder ``target`` with
    the freshly built ``new``, naming what ``target`` holds that ``new`` would not."""
    if overwrite or not target.exists():
        return
    lost = files_only_in(target, new)
    if lost:
        shown = ", ".join(lost[:NAMED_LOSSES]) + (", ..." if len(lost) > NAMED_LOSSES else "")
        plural = "s" if len(lost) > 1 else ""
        held = f"holds {len(lost)} file{plural} the new one would not ({shown})"
    else:
        held = "exists (every file in it would be replaced)"
    raise InputError(
        f"{target} already {held}; replace it with --overwrite, or give another --root"
    )


def prepare(
    dataset: str,
    root: Path,
    sources: Sequence[Path] | None = None,
    keep_archive: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build ``<root>/<dataset>/`` (see the module docstring) and return that path.

    Args:
        dataset: "ped2", "avenue" or "shanghai".
        root: folder that receives ``<dataset>/`` (and ``downloads/`` when downloading).
        sources: archives or folders holding the official release; None downloads it
            (not possible for ShanghaiTech).
        keep_archive: keep downloaded archives in ``<root>/downloads/`` after success.
        progress: show progress bars.
        overwrite: replace an existing ``<root>/<dataset>/`` (refused otherwise, after the
            new one is built, naming what the old one holds that the new one would not;
            downloaded archives are then kept for the next run).
    """
    if dataset not in CONVERTERS:
        raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root)
    target = root / dataset
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"--root {root} cannot hold the data set ({error.strerror}); give a writable folder"
        ) from None
    sources = [Path(s) for s in sources or ()]
    # The data set folder is replaced as a whole: no source may lie in it, be it or hold it.
    check_outputs(
        folders={"--root": target},
        inputs={
            f"--source #{i + 1}" if len(sources) > 1 else "--source": s
            for i, s in enumerate(sources)
        },
    )
    downloaded = []
    if not sources:
        if not OFFICIAL_DOWNLOADS[dataset]:
            raise InputError(
                f"{dataset} cannot be downloaded automatically: its archive is on cloud drives "
                f"linked from {SHANGHAI_PAGE}; download it there and run again with "
                "--source <archive or extracted folder>"
            )
        downloads_dir = root / "downloads"
        downloaded = [_fetch(d, downloads_dir, progress) for d in OFFICIAL_DOWNLOADS[dataset]]
        sources = downloaded
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dataset}.preparing-", dir=root))
    try:
        roots = _inputs(sources, work / "extracted", progress)
        CONVERTERS[dataset](roots, work / dataset, progress)
        check_replaceable(target, work / dataset, overwrite)
        _replace_dir(work / dataset, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_archive:
        for archive in downloaded:
            archive.unlink(missing_ok=True)
        if downloaded and not any(downloaded[0].parent.iterdir()):
            downloaded[0].parent.rmdir()
    return target


def _summary(dataset_dir: Path) -> str:
    parts = []
    for split in ("training", "testing"):
        videos = [d for d in (dataset_dir / split / "frames").iterdir() if d.is_dir()]
        n_frames = sum(len(list(d.glob("*.jpg"))) for d in videos)
        parts.append(f"{split} {len(videos)} videos / {n_frames} frames")
    return f"prepared {dataset_dir}: " + ", ".join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Download a benchmark data set and convert it to training/ and testing/ "
        "frame folders plus an ano_pred-style <dataset>.mat label file.",
    )
    parser.add_argument("dataset", choices=DATASETS, help="which benchmark to prepare")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("datasets"),
        help="folder that receives <dataset>/ (default: datasets)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        nargs="+",
        action="extend",
        help="official archive(s) (.tar.gz/.tgz/.tar/.zip) or extracted folder(s) instead of "
        "downloading; required for shanghai; for avenue give both Avenue_Dataset.zip and "
        "ground_truth_demo.zip",
    )
    parser.add_argument(
        "--keep_archive",
        action="store_true",
        help="keep downloaded archives in <root>/downloads/ (deleted after success otherwise)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing <root>/<dataset>/ (refused otherwise, naming what it holds "
        "that the new one would not)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    existed = (args.root / args.dataset).exists()
    try:
        dataset_dir = prepare(
            args.dataset, args.root, args.source, args.keep_archive, progress=not args.quiet,
            overwrite=args.overwrite,
        )  # fmt: skip
    except InputError as error:
        close_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        close_progress_bars()
        print("\ninterrupted: nothing was installed; run again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    if existed:
        print(f"replaced the earlier {dataset_dir} (--overwrite)", file=sys.stderr)
    print(_summary(dataset_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
