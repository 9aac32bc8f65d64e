"""Writing files so that nothing is ever half-written: atomic replacement, outputs pending
until committed, and a lock for work that several processes may start at once."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from common.errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same
    folder (``.<name>.<random>.tmp``), which is flushed to the disk and then replaces
    ``path`` in one rename (the folder is flushed too, where the platform allows). A crash
    or power loss leaves the old file intact; a full disk or a refused write is an
    :class:`InputError` naming the file. Only a process killed outright (SIGKILL) can leave
    the temporary behind: see :func:`remove_stale_temporaries`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _give_default_permissions(tmp)
        _flush_to_disk(tmp)  # else a crash just after the rename can leave an empty file
        os.replace(tmp, path)
        _flush_folder(path.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_storage_error(error):
            raise InputError(
                f"could not write {path} ({error}); the previous file, if any, is kept; "
                "free disk space or write to another folder"
            ) from error
        raise


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` left in ``folder`` for ``names`` when a
    process writing them was killed outright; returns them. Only for a folder that no other
    process is writing (one a :func:`folder_lock` is held on), as a live write's temporary
    looks the same."""
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _flush_to_disk(path: str | os.PathLike) -> None:
    # POSIX flushes through a read-only descriptor; Windows' _commit needs a writable one.
    fd = os.open(path, (os.O_RDWR | os.O_BINARY) if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)
    or flushed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class PendingFile:
    """An output written under a temporary name beside its destination (same suffix, so
    OpenCV can pick the container from it, which :func:`atomic_write`'s ``.tmp`` names
    prevent) and renamed over it by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        _give_default_permissions(self.tmp)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def _give_default_permissions(path: str | os.PathLike) -> None:
    """mkstemp creates 0600 files; give a result the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def exclusive_lock(resource: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock named after ``resource`` (e.g. a folder being generated), so
    processes doing the same work at the same time take turns. The lock file lives in the
    system's temporary folder; POSIX ``flock``, and no lock where that is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    key = hashlib.sha256(str(Path(resource).resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"lgn-{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, holder: str, other_folder: str = "another folder"
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block, or
    raise an :class:`InputError` at once when another process holds it, naming the folder
    and that process. ``holder`` says what holds it ("training run"), ``other_folder`` how
    to pick another ("another --exp_dir"). The lock is
    ``.lock`` inside the folder (POSIX ``flock``; the kernel releases it when a process
    dies, however it dies); it is removed on leaving, as are the folder and its parents
    when they were created here and are empty. Where ``flock`` is missing, nothing is
    locked. Yields ``folder``."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle = None
    try:
        if fcntl is not None:
            handle = _take_folder_lock(fcntl, folder / ".lock", holder, other_folder)
        yield folder
    finally:
        if handle is not None:
            # Removed while still held: a process waiting on the old file sees it is gone.
            (folder / ".lock").unlink(missing_ok=True)
            handle.close()
        for path in created:  # innermost first
            try:
                path.rmdir()
            except OSError:
                break  # not empty: the run wrote into it, and it stays


def _take_folder_lock(fcntl: Any, lock_path: Path, holder: str, other_folder: str) -> Any:
    while True:
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            other = handle.read().strip()
            handle.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = f" (process {other})" if other.isdigit() else ""
            raise InputError(
                f"{lock_path.parent} is in use by another {holder}{who}; wait for it to end, "
                f"or choose {other_folder}"
            ) from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()  # the holder removed it as we opened it: lock the new one


def _is_storage_error(error: BaseException) -> bool:
    """Full disk, quota, file-size limit or permissions: failures of the storage, not of
    the program.

    torch.save reports a failed write as a RuntimeError from its C++ zip writer: "file write
    failed", or "unexpected pos" when the file stopped growing (e.g. at ``ulimit -f``).
    """
    if isinstance(error, OSError):
        storage = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG)
        return error.errno in storage
    return isinstance(error, RuntimeError) and any(
        pattern in str(error) for pattern in ("write failed", "unexpected pos")
    )
