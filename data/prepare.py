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
from collections.abc import Sequence
from pathlib import Path

from common.errors import InputError
from common.outputs import check_outputs
from common.progress import close_progress_bars
from data.converters import CONVERTERS
from data.official_sources import (
    DATASETS,
    OFFICIAL_DOWNLOADS,
    SHANGHAI_PAGE,
    fetch_official,
    source_folders,
)


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
        downloaded = [
            fetch_official(d, downloads_dir, progress) for d in OFFICIAL_DOWNLOADS[dataset]
        ]
        sources = downloaded
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dataset}.preparing-", dir=root))
    try:
        roots = source_folders(sources, work / "extracted", progress)
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
