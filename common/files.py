"""Writing files so that nothing is ever half-written: atomic replacement, outputs pending
until committed, and a lock for work that several processes may start at once."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same
    folder, which then replaces ``path`` in one rename. A crash leaves the old file intact
    and no partial file behind; a full disk or a refused write is an :class:`InputError`
    naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _give_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_storage_error(error):
            raise InputError(
                f"could not write {path} ({error}); the previous file, if any, is kept; "
                "free disk space or write to another folder"
            ) from error
        raise


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
