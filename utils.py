"""Scoring, metrics and small shared helpers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class InputError(Exception):
    """A problem with the user's input (data, flags, files) that a message can explain.

    The CLIs print ``str(error)`` as one line and exit non-zero, without a traceback.
    The message should name the culprit (file, flag, video) and the fix.
    """


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same
    folder, which then replaces ``path`` in one rename. A crash leaves the old file intact
    and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
