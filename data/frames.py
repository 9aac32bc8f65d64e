"""Frame trees on disk -> windows of consecutive frames for training and evaluation.

A dataset folder holds ``training/`` and ``testing/`` (``train/`` and ``test/`` also work),
each with one folder per video, either under ``frames/`` or directly. Frames are ordered by
file name within a video and videos by folder name; digit runs compare as numbers, so
``2.jpg`` comes before ``10.jpg`` and zero-padded names sort as usual. Frames are addressed by
position, never by the number in their name, so trees that start at ``001`` work; the names
must still carry a frame number each, once, in name order (``check_frame_order``).

Every frame is decoded once per run (``FrameCache``), optionally once per machine
(``cache_dir``), instead of once per window as in the reference loader. Splits too large for
memory are served from decoded frames on disk instead (``data.frame_store.FrameStore``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import cv2
import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError
from common.files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT_FOLDER_NAMES = {"training": ("training", "train"), "testing": ("testing", "test")}
# Bump when the on-disk cache layout or decoding changes, so stale caches are not reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Video:
    """One video: its folder name and its frame files in playback order."""

    name: str
    frame_paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.frame_paths)


def natural_sort_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers (``2`` < ``10``), then the plain name."""
    parts = re.split(r"(\d+)", name)
    return (tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name)


def find_split_dir(dataset_dir: Path, split: str) -> Path:
    """The folder whose subfolders are the videos of ``split`` ("training" or "testing").

    Accepts ``training``/``train`` and ``testing``/``test``; returns ``<split>/frames`` when
    it exists, else the split folder itself.
    """
    if split not in SPLIT_FOLDER_NAMES:
        raise ValueError(f"split must be 'training' or 'testing', got {split!r}")
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(
            f"dataset folder {dataset_dir} does not exist; it should contain "
            f"'training/' and 'testing/' folders of videos (check --dataset_path/--dataset_type)"
        )
    for folder_name in SPLIT_FOLDER_NAMES[split]:
        split_dir = dataset_dir / folder_name
        if split_dir.is_dir():
            frames_dir = split_dir / "frames"
            return frames_dir if frames_dir.is_dir() else split_dir
    raise InputError(
        f"no '{split}' folder in {dataset_dir}; expected {dataset_dir / split} "
        f"(or {dataset_dir / SPLIT_FOLDER_NAMES[split][1]}) holding one folder per video"
    )


def _is_image(path: Path) -> bool:
    # Dot-files (e.g. macOS "._001.jpg" resource forks) carry image extensions but no image.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def check_frame_order(folder: Path, frames: list[Path]) -> None:
    """Frames sorted by name must be numbered, once each, in increasing order: the number is
    the last digit run of the name without its extension (``001`` in ``img_001.jpg``).

    Raises InputError naming the files when a name carries no number, when two files carry
    the same one (``100.png`` beside ``100.jpg`` would shift every later frame and label),
    or when the name order disagrees with the numbers.
    """
    previous: tuple[int, Path] | None = None
    seen: dict[int, Path] = {}
    for path in frames:
        match = _LAST_NUMBER.search(path.stem)
        if match is None:
            raise InputError(
                f"frame {path} has no frame number in its name, so the order of the frames in "
                f"{folder} is unknown; name them by number (000.jpg, 001.jpg, ...)"
            )
        number = int(match.group(1))
        if number in seen:
            raise InputError(
                f"{seen[number].name} and {path.name} in {folder} carry the same frame number "
                f"{number}; keep one of them"
            )
        if previous is not None and number < previous[0]:
            raise InputError(
                f"in {folder}, {path.name} sorts after {previous[1].name} by name but carries a "
                "smaller frame number; rename the frames so that name and number order agree"
            )
        seen[number] = path
        previous = (number, path)


def list_videos(split_dir: Path) -> list[Video]:
    """Videos under ``split_dir`` (one subfolder each), sorted by name; see module notes."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise InputError(f"video folder {split_dir} does not exist")
    video_dirs = sorted(
        (entry for entry in split_dir.iterdir() if entry.is_dir() and entry.name[0] != "."),
        key=lambda entry: natural_sort_key(entry.name),
    )
    if not video_dirs:
        raise InputError(
            f"no video folders in {split_dir}; put each video's frames in its own subfolder "
            f"(e.g. {split_dir / '01' / '000.jpg'})"
        )
    videos = []
    for video_dir in video_dirs:
        frames = sorted(
            (entry for entry in video_dir.iterdir() if _is_image(entry)),
            key=lambda entry: natural_sort_key(entry.name),
        )
        if not frames:
            raise InputError(
                f"video folder {video_dir} has no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its frames"
            )
        check_frame_order(video_dir, frames)
        videos.append(Video(video_dir.name, tuple(frames)))
    return videos


_JPEG_SUFFIXES = (".jpg", ".jpeg")
_capture_file: IO[bytes] | None = None


@contextlib.contextmanager
def _native_stderr_lines() -> Iterator[list[str]]:
    """Collect what native code prints to the process's stderr (file descriptor 2) in the
    block. libjpeg reports a damaged file there as a warning that names no file, and still
    returns an image; this lets the caller name the file and refuse it."""
    global _capture_file
    lines: list[str] = []
    try:
        if _capture_file is None:
            _capture_file = tempfile.TemporaryFile()
            atexit.register(_capture_file.close)
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: decode without the check
        yield lines
        return
    _capture_file.seek(0)
    _capture_file.truncate()
    os.dup2(_capture_file.fileno(), 2)
    try:
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        _capture_file.seek(0)
        lines.extend(_capture_file.read().decode(errors="replace").splitlines())


def read_image(path: Path) -> np.ndarray:
    """One image file as BGR uint8 ``(H, W, 3)`` (grey becomes 3 channels), as OpenCV reads it.

    Raises InputError naming the file when it cannot be decoded, or when it is a JPEG that the
    decoder reports as damaged (corrupt data, premature end): OpenCV would return a partly
    garbled frame for it with a warning that names no file.
    """
    if Path(path).suffix.lower() not in _JPEG_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    else:
        with _native_stderr_lines() as messages:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        damage = [line for line in messages if "JPEG" in line]
        others = [line for line in messages if "JPEG" not in line]
        if others:  # someone else's output: pass it on
            print("\n".join(others), file=sys.stderr)
        if damage and image is not None:
            raise InputError(
                f"image {path} is damaged ({damage[0].strip()}); replace it with an intact "
                "copy (e.g. extract the video's frames again)"
            )
    if image is None:
        raise InputError(f"cannot read image {path}; the file is corrupt or not an image")
    return image


def decode_frame(path: Path, height: int, width: int) -> np.ndarray:
    """Read one image as BGR (grey becomes 3 channels), bilinear-resized: uint8 ``(H, W, 3)``."""
    return cv2.resize(read_image(path), (width, height), interpolation=cv2.INTER_LINEAR)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers' cpusets set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _init_decode_worker() -> None:
    global _capture_file
    # A forked worker must not share the parent's capture file: its offset is shared too.
    _capture_file = None
    # Ctrl-C is the parent's to handle; SIGTERM (Pool.terminate) unwinds, so atomic_write
    # removes a half-written file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # No cv2.setNumThreads here: in a forked child it waits forever on the parent's thread
    # pool's condition variable (its waiters were threads that did not survive the fork).


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(143)


def _call_indexed(job: tuple[Callable, int, tuple]) -> tuple[int, object]:
    function, index, arguments = job
    return index, function(*arguments)


def map_in_processes(
    function: Callable, jobs: Sequence[tuple], processes: int
) -> Iterator[tuple[int, object]]:
    """``(index, function(*jobs[index]))`` for every job, in the order they finish, computed
    by ``processes`` worker processes (forked where the platform can, as DataLoader workers
    are). The first exception of a job is raised here; leaving the loop early (Ctrl-C, an
    error) terminates the workers."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    tasks = [(function, index, tuple(arguments)) for index, arguments in enumerate(jobs)]
    with context.Pool(processes, initializer=_init_decode_worker) as pool:
        yield from pool.imap_unordered(_call_indexed, tasks)
        pool.close()
        pool.join()


def decode_video(frame_paths: Sequence[Path], height: int, width: int) -> np.ndarray:
    """Every frame of a video, decoded and resized: uint8 ``(T, H, W, 3)`` BGR."""
    frames = np.empty((len(frame_paths), height, width, 3), dtype=np.uint8)
    for index, path in enumerate(frame_paths):
        frames[index] = decode_frame(path, height, width)
    return frames


def _video_fingerprint(video: Video) -> str:
    """Hash of the frame paths with their sizes, modification times, inode change times and
    inodes: changes when any frame changes.

    The modification time alone misses an edit that keeps it and the size (``cp -p``,
    ``rsync -a``, ``tar -x`` of a corrected copy, a re-encode at a fixed size such as BMP);
    the inode change time is set by the kernel on every write, rename or copy over the file
    and no tool can set it back, and a file copied in place of another has a new inode. (A
    ``chmod`` or a new hard link also moves the change time: the video is then decoded
    once more, which costs time, never correctness.)
    """
    digest = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for path in video.frame_paths:
        stat = path.stat()
        digest.update(
            f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
            f"\0{stat.st_ino}\n".encode()
        )
    return digest.hexdigest()[:20]


def cache_file(cache_dir: Path, height: int, width: int, video: Video) -> Path:
    """Where a video's decoded ``height x width`` frames are kept on disk:
    ``<cache_dir>/<H>x<W>/<video>-<fingerprint>.npy``, the fingerprint covering the frame
    paths, sizes, modification and inode change times and inodes (an edited frame tree gets
    a new file, however the edit was made)."""
    safe_name = re.sub(r"[^\w.-]", "_", video.name)
    size_dir = Path(cache_dir) / f"{int(height)}x{int(width)}"
    return size_dir / f"{safe_name}-{_video_fingerprint(video)}.npy"


def _memory_key(video: Video) -> tuple[str, tuple[Path, ...]]:
    return (video.name, video.frame_paths)


# Below this many frames to decode, starting worker processes costs more than it saves.
_POOL_MIN_FRAMES = 2000


class FrameCache:
    """Decoded, resized frames per video, held in memory, each file decoded at most once per
    run.

    With ``cache_dir`` the frames of each video are also kept as ``.npy`` under
    ``<cache_dir>/<H>x<W>/<video>-<fingerprint>.npy`` (:func:`cache_file`), so an edited frame
    tree is decoded afresh. ``processes`` > 1 lets :meth:`get_all` decode several videos at
    once in worker processes.
    """

    def __init__(self, height: int, width: int, cache_dir: Path | None = None, processes: int = 1):
        self.height = int(height)
        self.width = int(width)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.processes = max(1, int(processes))
        self._memory: dict[tuple[str, tuple[Path, ...]], np.ndarray] = {}

    def _disk_path(self, video: Video) -> Path | None:
        if self.cache_dir is None:
            return None
        return cache_file(self.cache_dir, self.height, self.width, video)

    def _load_from_disk(self, path: Path | None, num_frames: int) -> np.ndarray | None:
        if path is None or not path.is_file():
            return None
        try:
            frames = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable cache entry: decode again and overwrite it
        if frames.dtype != np.uint8 or frames.shape != (num_frames, self.height, self.width, 3):
            return None
        return frames

    def is_decoded(self, video: Video) -> bool:
        """Whether ``get(video)`` is served from memory without touching the image files."""
        return _memory_key(video) in self._memory

    def get(self, video: Video, progress: tqdm | None = None, keep: bool = True) -> np.ndarray:
        """All frames of ``video``: uint8 ``(T, H, W, 3)`` BGR.

        ``progress`` (optional) is advanced by one per frame actually decoded. With ``keep``
        False the frames are not held for later calls (one video at a time).
        """
        key = _memory_key(video)
        frames = self._memory.get(key)
        if frames is not None:
            return frames
        disk_path = self._disk_path(video)
        frames = self._load_from_disk(disk_path, len(video))
        if frames is None:
            frames = self._decode(video, disk_path, progress)
        if keep:
            self._memory[key] = frames
        return frames

    def _decode(self, video: Video, disk_path: Path | None, progress: tqdm | None) -> np.ndarray:
        frames = np.empty((len(video), self.height, self.width, 3), dtype=np.uint8)
        for index, path in enumerate(video.frame_paths):
            frames[index] = decode_frame(path, self.height, self.width)
            if progress is not None:
                progress.update(1)
        if disk_path is not None:
            self._save_to_disk(disk_path, frames)
        return frames

    def load(self, video: Video) -> np.ndarray:
        """``video``'s frames without holding them afterwards (see :meth:`get`)."""
        return self.get(video, keep=False)

    def prepare(self, videos: Sequence[Video]) -> None:
        """Nothing to do ahead of :meth:`load`: frames are decoded when asked for."""

    def get_all(self, videos: Sequence[Video], progress: tqdm | None = None) -> list[np.ndarray]:
        """:meth:`get` of every video, in order; with ``processes`` > 1 the videos still to
        decode (2,000 frames or more in all) are decoded by that many worker processes.
        Without ``progress`` a bar is shown on a terminal when 500 frames or more are to be
        decoded."""
        if progress is None:
            to_decode = sum(len(video) for video in videos if not self.is_decoded(video))
            # A bar only where decoding takes a while, and only on a terminal (disable=None).
            with tqdm(
                total=to_decode,
                desc="loading frames",
                unit="frame",
                leave=False,
                mininterval=1.0,
                disable=to_decode < 500 or None,
            ) as bar:
                return self.get_all(videos, bar)
        frames: list[np.ndarray | None] = []
        for video in videos:
            frames.append(self._memory.get(_memory_key(video)))
        disk_paths: dict[int, Path | None] = {}
        for index, video in enumerate(videos):
            if frames[index] is None:
                disk_paths[index] = self._disk_path(video)
                frames[index] = self._load_from_disk(disk_paths[index], len(video))
        missing = [index for index, array in enumerate(frames) if array is None]
        decode_frames = sum(len(videos[index]) for index in missing)
        if self.processes > 1 and len(missing) > 1 and decode_frames >= _POOL_MIN_FRAMES:
            # Longest first, so that no long video starts last and leaves the others idle.
            missing.sort(key=lambda index: -len(videos[index]))
            jobs = [(videos[i].frame_paths, self.height, self.width) for i in missing]
            for job, array in map_in_processes(decode_video, jobs, self.processes):
                index = missing[job]
                frames[index] = array
                if disk_paths[index] is not None:
                    self._save_to_disk(disk_paths[index], array)
                if progress is not None:
                    progress.update(len(videos[index]))
        for index, video in enumerate(videos):
            if frames[index] is None:
                frames[index] = self._decode(video, disk_paths[index], progress)
            self._memory[_memory_key(video)] = frames[index]
        return frames  # type: ignore[return-value]

    @staticmethod
    def _save_to_disk(path: Path, frames: np.ndarray) -> None:
        def write(tmp_path: Path) -> None:
            # np.save on a name would append ".npy" to the temp name; a handle writes in place.
            with open(tmp_path, "wb") as handle:
                np.save(handle, frames)

        try:
            atomic_write(path, write)
        except (OSError, InputError) as error:
            # The cache is an optimisation: a full or read-only disk must not stop training.
            warnings.warn(f"could not write frame cache {path}: {error}", stacklevel=3)


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1] (x / 127.5 - 1)."""
    tensor = torch.as_tensor(frames)
    if tensor.ndim < 3 or tensor.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (..., H, W, 3), got {tuple(tensor.shape)}")
    channels_first = tensor.movedim(-1, -3)
    # One strided copy into a contiguous float buffer, then in-place scaling: about twice as
    # fast as chaining out-of-place ops on the permuted view.
    scaled = torch.empty(channels_first.shape, dtype=torch.float32, device=tensor.device)
    scaled.copy_(channels_first)
    return scaled.div_(127.5).sub_(1.0)


class FrameSource(Protocol):
    """Where a :class:`FrameWindowDataset` gets decoded frames: :class:`FrameCache` (in
    memory) or ``data.frame_store.FrameStore`` (memory-mapped files on disk)."""

    height: int
    width: int

    def get_all(self, videos: Sequence[Video]) -> list[np.ndarray]:
        """Every video's frames, uint8 ``(T, H, W, 3)``, in order, for the dataset to keep."""
        ...

    def prepare(self, videos: Sequence[Video]) -> None:
        """Whatever makes :meth:`load` of these videos cheap later."""
        ...

    def load(self, video: Video) -> np.ndarray:
        """One video's frames, not held by the source afterwards."""
        ...


def open_video_file(path: str | os.PathLike) -> np.memmap:
    """A stored video's frames (``.npy``), memory-mapped copy-on-write: uint8 ``(T, H, W, 3)``
    that numpy and torch can wrap as writable, although nothing is ever written back."""
    return np.load(path, mmap_mode="c")


def _mapped_file(frames: np.ndarray) -> str | os.PathLike | None:
    """The file ``frames`` are memory-mapped from, or None for frames held in memory."""
    return frames.filename if isinstance(frames, np.memmap) else None


def skipped_video_line(name: str, num_frames: int, t_length: int) -> str:
    """The one line that says a video is too short to give a window and is left out."""
    frames = f"{num_frames} frame{'' if num_frames == 1 else 's'}"
    return f"skipping video {name}: {frames}, fewer than the {t_length} of one window (--t_length)"


class FrameWindowDataset(torch.utils.data.Dataset):
    """Every run of ``t_length`` consecutive frames (stride 1) of every video.

    Item ``i`` is float32 ``(t_length * 3, H, W)`` in [-1, 1]: frames stacked on channels in
    time order, so the first ``(t_length - 1) * 3`` channels are the input and the last 3 the
    frame to predict.

    ``cache`` says where the decoded frames live: a :class:`FrameCache` decodes them all up
    front into memory, which DataLoader worker processes then share instead of decoding
    again; a ``data.frame_store.FrameStore`` writes them to disk once and maps the files, so
    the process holds none of them. With ``preload`` False nothing is held:
    :meth:`video_frames` loads one video per call, for sequential use (evaluation).
    """

    def __init__(
        self,
        videos: list[Video],
        height: int,
        width: int,
        t_length: int = 5,
        cache: FrameSource | None = None,
        preload: bool = True,
    ):
        if t_length < 1:
            raise ValueError(f"t_length must be at least 1, got {t_length}")
        self.height = int(height)
        self.width = int(width)
        self.t_length = int(t_length)
        self.cache = cache if cache is not None else FrameCache(height, width)
        if (self.cache.height, self.cache.width) != (self.height, self.width):
            raise ValueError(
                f"cache holds {self.cache.height}x{self.cache.width} frames, "
                f"dataset wants {self.height}x{self.width}"
            )
        self.videos: list[Video] = []
        self.skipped: list[str] = []
        for video in videos:
            if len(video) < self.t_length:
                print(skipped_video_line(video.name, len(video), self.t_length), file=sys.stderr)
                self.skipped.append(video.name)
            else:
                self.videos.append(video)
        self.preload = bool(preload)
        self._frames: list[np.ndarray | None] | None = None
        # The file behind each memory-mapped video (None: frames held in memory).
        self._files: list[str | os.PathLike | None] = []
        if self.preload:
            loaded = self.cache.get_all(self.videos)
            self._files = [_mapped_file(frames) for frames in loaded]
            # Plain views of the maps: slicing an np.memmap subclass costs about a microsecond
            # more per window.
            self._frames = [np.asarray(frames) for frames in loaded]
        else:
            self.cache.prepare(self.videos)
        self.windows: list[tuple[int, int]] = [
            (video_index, start)
            for video_index, video in enumerate(self.videos)
            for start in range(len(video) - self.t_length + 1)
        ]
        # Items are found from these offsets rather than from the list of tuples above: a
        # forked DataLoader worker reading Python objects writes their reference counts and
        # so copies their pages, which for a large split would add up in every worker.
        counts = [len(video) - self.t_length + 1 for video in self.videos]
        self._first_window = np.cumsum([0] + counts[:-1], dtype=np.int64)

    def __getstate__(self) -> dict:
        # Memory-mapped frames travel as their file names (numpy would pickle a memmap as a
        # full in-memory copy); the receiving process maps the files again when it reads.
        state = self.__dict__.copy()
        if self._frames is not None:
            state["_frames"] = [
                None if file is not None else frames
                for frames, file in zip(self._frames, self._files, strict=True)
            ]
        return state

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        video_index = int(np.searchsorted(self._first_window, index, side="right")) - 1
        start = index - int(self._first_window[video_index])
        window = self.video_frames(video_index)[start : start + self.t_length]
        return frames_to_tensor(window).reshape(-1, self.height, self.width)

    def video_frames(self, video_index: int) -> np.ndarray:
        """All frames of ``self.videos[video_index]``: uint8 ``(T, H, W, 3)`` BGR (a view of
        a file mapped copy-on-write when the frames come from a frame store)."""
        if self._frames is None:
            return self.cache.load(self.videos[video_index])
        frames = self._frames[video_index]
        if frames is None:  # unpickled in another process: map the file again
            frames = self._frames[video_index] = np.asarray(
                open_video_file(self._files[video_index])
            )
        return frames


def open_split(
    dataset_dir: Path,
    split: str,
    height: int,
    width: int,
    t_length: int = 5,
    cache_dir: Path | None = None,
) -> FrameWindowDataset:
    """Windows of one split ("training" or "testing") of the dataset in ``dataset_dir``."""
    videos = list_videos(find_split_dir(dataset_dir, split))
    return FrameWindowDataset(videos, height, width, t_length, FrameCache(height, width, cache_dir))
