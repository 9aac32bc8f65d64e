"""Decoded frames held in memory for a run, and optionally on disk for the next one.

Every frame is decoded once per run (:class:`FrameCache`), optionally once per machine
(``cache_dir``), instead of once per window as in the reference loader. Splits too large for
memory are served from decoded frames on disk instead (``data.frame_store.FrameStore``).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data.decoding as decoding
from common.errors import InputError
from common.files import atomic_write
from data.frame_folders import Video

# Bump when the on-disk cache layout or decoding changes, so stale caches are not reused.
_CACHE_VERSION = 1


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
            frames[index] = decoding.decode_frame(path, self.height, self.width)
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
            decoded = decoding.map_in_processes(decoding.decode_video, jobs, self.processes)
            for job, array in decoded:
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
