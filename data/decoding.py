"""Decoding frames: one image file to a resized uint8 frame, with damaged JPEGs refused by
name, and the worker processes that decode many videos at once.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from common.errors import InputError

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
