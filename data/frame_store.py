"""Decoded frames on disk for splits larger than memory, and the choice between memory and disk.

A split's decoded frames take ``frames x H x W x 3`` bytes: ShanghaiTech's 274,515 training
frames at 256x256 are 54 GB, more than most machines hold. :class:`FrameStore` writes each
video's frames once to ``<folder>/<H>x<W>/<video>-<fingerprint>.npy`` (the layout of
``--cache_dir``, so existing caches are reused), in worker processes that each hold one video
at most, and then serves them memory-mapped: the frames live in files and the operating
system's page cache, not in the process's own (anonymous) memory, which therefore does not
grow with the split. Every file is written atomically, so a pass stopped halfway resumes with
the videos it has not written yet.

:func:`choose_frames` picks the path for a run (``--frames memory|disk|auto``): ``auto`` keeps
the frames in memory when they fit in half of what :func:`memory_budget` finds the process may
use (a cgroup v2 or v1 memory limit when there is one, else the system's available memory),
and on disk otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data.decoding as decoding
from common.errors import InputError
from common.files import atomic_write, exclusive_lock
from common.outputs import check_creatable_folder
from data.decoding import map_in_processes, usable_cpus
from data.frame_cache import FrameCache, cache_file
from data.frame_folders import Video
from data.frames import open_video_file

FRAMES_CHOICES = ("auto", "memory", "disk")
FRAMES_HELP = (
    "where the decoded frames live: memory (decoded up front into RAM; evaluation: one video "
    "at a time), disk (decoded once by all CPUs into .npy files under --cache_dir, default "
    "$LGN_CACHE/frames or ~/.cache/lgn-net/frames, then read memory-mapped), auto (memory when "
    "the decoded frames fit in half of the memory this process may use, else disk)"
)
# Shares of the memory budget the in-memory path may take: the model, the optimiser and the
# DataLoader's batches need the rest.
_MEMORY_SHARE = 0.5
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number.
_NO_LIMIT = 1 << 62


def add_frames_flag(group: argparse._ActionsContainer) -> None:
    """Add ``--frames`` (shared by train.py and evaluate.py) to an argument group."""
    group.add_argument("--frames", default="auto", choices=FRAMES_CHOICES, help=FRAMES_HELP)


def gigabytes(size: float) -> str:
    """A size in bytes for messages, in decimal units: ``54.0 GB``, ``120 MB``, ``4 kB``."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


# --------------------------------------------------------------------------- memory budget


@dataclass(frozen=True)
class MemoryBudget:
    """Memory this process may still use, in bytes (None: unknown), and where that came
    from, in words (``MemAvailable``, ``cgroup v2 limit 24.0 GB less 3.1 GB in use``)."""

    available: int | None
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, *keys: str) -> int:
    """The first of ``keys`` found in a cgroup ``memory.stat`` file (0 when none is)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(None, 1) for line in lines if len(line.split()) == 2)
    for key in keys:
        if key in values and values[key].strip().isdigit():
            return int(values[key])
    return 0


def _cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """This process's cgroup per hierarchy: ``{"v2": "/a/b", "memory": "/c"}``."""
    paths: dict[str, str] = {}
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["memory"] = path
    return paths


def _own_and_ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup folder of ``path`` under ``mount`` and every folder above it up to the
    mount: a limit set on any of them applies. Inside a container with its own cgroup
    namespace the path is ``/`` and the mount's root is the container's cgroup."""
    folder = mount / path.lstrip("/")
    folders = []
    while True:
        folders.append(folder)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return folders


def _cgroup_room(cgroup_root: Path, proc_self_cgroup: Path) -> tuple[int, int, int, str] | None:
    """``(room, limit, in_use, version)`` of the tightest cgroup memory limit over this
    process, where room = limit - in_use and in_use leaves out the inactive file cache
    (reclaimable, as ``docker stats`` counts); None without a limit."""
    paths = _cgroup_paths(proc_self_cgroup)
    found: list[tuple[int, int, int, str]] = []
    if (cgroup_root / "cgroup.controllers").is_file():  # a unified (v2) hierarchy
        for folder in _own_and_ancestors(cgroup_root, paths.get("v2", "/")):
            limit = _read_int(folder / "memory.max")  # "max" (no limit) reads as None
            if limit is None:
                continue
            current = _read_int(folder / "memory.current") or 0
            in_use = max(0, current - _stat_value(folder / "memory.stat", "inactive_file"))
            found.append((limit - in_use, limit, in_use, "cgroup v2"))
    v1_mount = cgroup_root / "memory"
    if (v1_mount / "memory.limit_in_bytes").is_file():
        for folder in _own_and_ancestors(v1_mount, paths.get("memory", "/")):
            limit = _read_int(folder / "memory.limit_in_bytes")
            if limit is None or limit >= _NO_LIMIT:
                continue
            usage = _read_int(folder / "memory.usage_in_bytes") or 0
            inactive = _stat_value(folder / "memory.stat", "total_inactive_file", "inactive_file")
            in_use = max(0, usage - inactive)
            found.append((limit - in_use, limit, in_use, "cgroup v1"))
    return min(found) if found else None


def _mem_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: the physical memory, the best cheap guess
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_budget(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    meminfo: Path = Path("/proc/meminfo"),
) -> MemoryBudget:
    """The memory this process may still use: the smaller of the system's ``MemAvailable``
    and the room under the tightest cgroup memory limit over the process (v2 ``memory.max``
    or v1 ``memory.limit_in_bytes`` of its own cgroup and those above, less what the cgroup
    already uses). A container's limit binds long before the host runs out. The paths are
    parameters so tests can point them at a fake tree."""
    available = _mem_available(meminfo)
    room = _cgroup_room(cgroup_root, proc_self_cgroup)
    if room is not None and (available is None or room[0] < available):
        free, limit, in_use, version = room
        return MemoryBudget(
            max(0, free), f"{version} limit {gigabytes(limit)} less {gigabytes(in_use)} in use"
        )
    if available is None:
        return MemoryBudget(None, "memory size unknown")
    return MemoryBudget(available, "MemAvailable")


# --------------------------------------------------------------------------- the store


def default_store_dir() -> Path:
    """``$LGN_CACHE/frames`` when set, else ``$XDG_CACHE_HOME/lgn-net/frames`` (usually
    ``~/.cache/lgn-net/frames``): a folder of its own, never inside a dataset."""
    if os.environ.get("LGN_CACHE"):
        return Path(os.environ["LGN_CACHE"]).expanduser() / "frames"
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home folder known
            base = os.path.join(os.sep, "tmp", "lgn-net-cache")
    return Path(base).expanduser() / "lgn-net" / "frames"


def _npy_header(num_frames: int, height: int, width: int) -> dict:
    return {"descr": "|u1", "fortran_order": False, "shape": (num_frames, height, width, 3)}


def write_video_file(path: Path, frame_paths: Sequence[Path], height: int, width: int) -> int:
    """Decode and resize ``frame_paths`` into ``path`` (``.npy``, uint8 ``(T, H, W, 3)``),
    one frame at a time, atomically. Returns the number of frames.

    The frames are written, not mapped: a full disk then fails with an error naming the file
    instead of a SIGBUS on a page of a sparse mapping. The bytes equal ``np.save``'s.
    """

    def write(tmp_path: Path) -> None:
        with open(tmp_path, "wb") as handle:
            np.lib.format.write_array_header_1_0(
                handle, _npy_header(len(frame_paths), height, width)
            )
            for frame_path in frame_paths:
                handle.write(decoding.decode_frame(frame_path, height, width).tobytes())

    atomic_write(path, write)
    return len(frame_paths)


class FrameStore:
    """Decoded, resized frames of each video in an ``.npy`` file under ``folder``, served
    memory-mapped (see the module notes).

    Args:
        folder: the store's root; files go to ``<folder>/<H>x<W>/`` (the ``--cache_dir``
            layout, so a FrameCache's files are reused and the other way round).
        processes: decoding processes for the first pass (default: every usable CPU).
    """

    def __init__(self, folder: Path, height: int, width: int, processes: int | None = None):
        self.folder = Path(folder)
        self.height = int(height)
        self.width = int(width)
        self.processes = max(1, int(processes)) if processes else usable_cpus()

    @property
    def size_dir(self) -> Path:
        """Where this frame size's files are."""
        return self.folder / f"{self.height}x{self.width}"

    def file(self, video: Video) -> Path:
        """The file holding ``video``'s frames (whether written yet or not)."""
        return cache_file(self.folder, self.height, self.width, video)

    def is_stored(self, path: Path, num_frames: int) -> bool:
        """Whether ``path`` is a complete file of ``num_frames`` frames of this size (reads
        its header only; a damaged file counts as missing and is written again)."""
        try:
            frames = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        expected = (num_frames, self.height, self.width, 3)
        return frames.dtype == np.uint8 and frames.shape == expected

    def fill(self, videos: Sequence[Video]) -> list[Path]:
        """The first pass: write every video not stored yet, ``processes`` at a time, with a
        progress bar in frames; returns each video's file, in order.

        Checks the free disk space first. Resumable: videos written by an earlier, stopped
        pass are kept. Processes filling the same folder take turns, so each video is
        decoded once.

        Raises:
            InputError: naming the folder and the space needed when the disk is too small,
                or a frame that cannot be decoded.
        """
        files = [self.file(video) for video in videos]
        if all(self.is_stored(f, len(v)) for f, v in zip(files, videos, strict=True)):
            return files
        check_creatable_folder(
            self.folder, "frame store", "give --cache_dir a writable folder (or set LGN_CACHE)"
        )
        self.size_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.size_dir):
            missing = [
                index
                for index, (path, video) in enumerate(zip(files, videos, strict=True))
                if not self.is_stored(path, len(video))
            ]
            if missing:
                self._write(videos, files, missing)
        return files

    def _write(self, videos: Sequence[Video], files: list[Path], missing: list[int]) -> None:
        frame_bytes = self.height * self.width * 3
        frames = sum(len(videos[index]) for index in missing)
        needed = frames * frame_bytes + 128 * len(missing)
        free = shutil.disk_usage(self.size_dir).free
        if needed > free:
            raise InputError(
                f"the frame store {self.size_dir} needs {gigabytes(needed)} for "
                f"{len(missing)} videos but its disk has {gigabytes(free)} free; free space, "
                "give --cache_dir another disk (or set LGN_CACHE), or use --frames memory"
            )
        stored = len(videos) - len(missing)
        resumed = f", {stored} of {len(videos)} videos already stored" if stored else ""
        print(
            f"frames: writing {frames:,} frames of {len(missing)} videos to {self.size_dir} "
            f"({gigabytes(needed)}{resumed})",
            file=sys.stderr,
        )
        # Longest first: a long video started last would leave the other processes idle.
        missing = sorted(missing, key=lambda index: -len(videos[index]))
        jobs = [(files[i], videos[i].frame_paths, self.height, self.width) for i in missing]
        processes = min(self.processes, len(jobs))
        with tqdm(
            total=frames,
            desc="writing frame store",
            unit="frame",
            unit_scale=True,
            mininterval=1.0,
            dynamic_ncols=True,
            disable=frames < 500,
        ) as bar:
            if processes == 1:
                for job in jobs:
                    bar.update(write_video_file(*job))
            else:
                for _, written in map_in_processes(write_video_file, jobs, processes):
                    bar.update(written)

    def get_all(self, videos: Sequence[Video]) -> list[np.ndarray]:
        """Every video's frames, memory-mapped, in order (writing the missing ones first)."""
        return [open_video_file(path) for path in self.fill(videos)]

    def prepare(self, videos: Sequence[Video]) -> None:
        """Write the videos not stored yet, so that :meth:`load` only maps a file."""
        self.fill(videos)

    def load(self, video: Video) -> np.ndarray:
        """One video's frames, memory-mapped (written first when missing)."""
        (path,) = self.fill([video])
        return open_video_file(path)


# --------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class FramesChoice:
    """Where a run's frames come from, and the line that says so and why."""

    source: FrameCache | FrameStore
    line: str

    @property
    def on_disk(self) -> bool:
        return isinstance(self.source, FrameStore)


def _is_inside(folder: Path, tree: Path) -> bool:
    folder, tree = folder.resolve(), tree.resolve()
    return folder == tree or tree in folder.parents


def choose_frames(
    mode: str,
    videos: Sequence[Video],
    height: int,
    width: int,
    cache_dir: Path | None = None,
    dataset_dir: Path | None = None,
    *,
    one_video_at_a_time: bool = False,
    budget: MemoryBudget | None = None,
    processes: int | None = None,
    copies: int | None = None,
) -> FramesChoice:
    """The frame source of a run for ``--frames`` ``mode`` (``auto``, ``memory``, ``disk``).
    (Ten parameters: the run's mode, videos and frame size, where a store may go, and, keyword
    only, what tests and torchrun set: the evaluation case, the budget, the processes.)

    What must fit in memory is the whole split, or with ``one_video_at_a_time`` (evaluation,
    which scores the videos one after the other) its longest video as uint8 and float32. The
    in-memory source is a :class:`FrameCache` (which also keeps ``.npy`` files in
    ``cache_dir`` when given), the disk one a :class:`FrameStore` in ``cache_dir`` or
    :func:`default_store_dir`. ``budget`` defaults to :func:`memory_budget`; ``processes``
    (decoding processes) to the usable CPUs shared among ``copies`` (processes on this machine
    that each hold the frames in memory: torchrun's ``LOCAL_WORLD_SIZE``, else 1).

    Raises:
        InputError: for an unknown mode, or a default store folder inside ``dataset_dir``.
    """
    if mode not in FRAMES_CHOICES:
        raise InputError(f"--frames {mode!r} is unknown; use {', '.join(FRAMES_CHOICES)}")
    frame_bytes = height * width * 3
    lengths = [len(video) for video in videos] or [0]
    if one_video_at_a_time:
        # Evaluation converts the whole video to float32 for the model: 1 + 4 bytes a value.
        needed = max(lengths) * frame_bytes * 5
        what = f"largest video {gigabytes(needed)} as uint8 and float32"
    else:
        needed = sum(lengths) * frame_bytes
        what = f"{gigabytes(needed)} decoded"
    if copies is None:
        local = os.environ.get("LOCAL_WORLD_SIZE", "1")
        copies = int(local) if local.isdigit() else 1
    if copies > 1:  # each process on the machine would hold its own copy
        needed *= copies
        what = f"{copies} processes x {what}"
    budget = budget if budget is not None else memory_budget()
    if budget.available is None:
        fits, limit = True, "memory size unknown"
    else:
        share = int(budget.available * _MEMORY_SHARE)
        fits = needed <= share
        limit = f"{gigabytes(share)}: half of {gigabytes(budget.available)} free, {budget.source}"
    comparison = f"{what} {'<=' if fits else '>'} {limit}"
    # Processes on one machine decoding at the same time share its CPUs.
    processes = processes or max(1, usable_cpus() // copies)
    in_memory = "in memory, one video at a time" if one_video_at_a_time else "in memory"

    if mode == "memory" or (mode == "auto" and fits):
        reason = comparison if mode == "auto" else f"--frames memory; {comparison}"
        warning = "" if fits else "; it may run out of memory, --frames disk would not"
        cache = FrameCache(height, width, cache_dir, processes=processes)
        return FramesChoice(cache, f"frames: {in_memory} ({reason}){warning}")

    folder = Path(cache_dir) if cache_dir is not None else default_store_dir()
    if cache_dir is None and dataset_dir is not None and _is_inside(folder, Path(dataset_dir)):
        raise InputError(
            f"the default frame store {folder} lies inside the dataset {dataset_dir}; give "
            "--cache_dir a folder outside it (or set LGN_CACHE)"
        )
    store = FrameStore(folder, height, width, processes)
    reason = comparison if mode == "auto" else "--frames disk"
    return FramesChoice(store, f"frames: disk-backed ({reason}) in {store.size_dir}")
