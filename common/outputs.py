"""Checks of a command's outputs before any work: each can be written, no two share a path,
and none lands on, inside or around an input of the same command.

Every command line and ``python -m`` entry point calls :func:`check_outputs` once, with all
its outputs and all its inputs, so that a mistyped flag refuses to run instead of replacing a
checkpoint, a label file or footage, or dropping files into a frame folder that every later
run would then read as frames.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from common.errors import InputError

PathArg = str | os.PathLike | None


def check_creatable_folder(folder: str | os.PathLike, what: str, fix: str) -> None:
    """Raise InputError unless ``folder`` exists or could be created, and could be written
    to: the nearest existing folder above it is a folder and accepts a file. Creates nothing.
    ``what`` names the culprit in the message (e.g. ``--plot_dir``), ``fix`` says what to do."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(f"{what}: cannot write to {existing} ({error.strerror}); {fix}") from None


def _resolved(path: str | os.PathLike) -> Path:
    """Absolute, with ``~``, ``..`` and symbolic links resolved (as far as the path exists)."""
    return Path(path).expanduser().resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    """Equal paths, or two names of one existing file (a hard link)."""
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _collision(output: Path, is_folder: bool, source: Path) -> str | None:
    """How an output would touch an input, or None when it would not."""
    if _same_file(output, source):
        return "is"
    if source.is_dir() and _within(output, source):
        return "lies inside"
    if is_folder and _within(source, output):
        return "contains"
    return None


_RELATIONS = ("is", "contains", "lies inside")


def _collision_error(
    flag: str, target: PathArg, relation: str, source_flag: str, source: Path
) -> InputError:
    if relation == "is":
        return InputError(
            f"{flag} {target} is {source}, the {source_flag} this run reads; give {flag} its "
            "own path"
        )
    if relation == "contains":
        return InputError(
            f"{source_flag} {source} lies inside {target} ({flag}), which this run writes; "
            f"give {flag} a folder of its own"
        )
    return InputError(
        f"{flag} {target} lies inside {source} ({source_flag}), which this run reads; write "
        f"{flag} somewhere else"
    )


def check_outputs(
    files: Mapping[str, PathArg] | None = None,
    folders: Mapping[str, PathArg] | None = None,
    inputs: Mapping[str, PathArg] | None = None,
) -> None:
    """Fail before any work, not after it, when an output cannot or must not be written.

    Args:
        files: output files by the flag that names them (``{"--report": path}``); None
            values (not asked for) are skipped.
        folders: output folders by flag (``{"--plot_dir": path}``).
        inputs: what the command reads, by flag (``{"--checkpoint": path,
            "--dataset_path": dataset_folder}``): files or folders; None values (not given,
            or not local, such as a camera or a stream URL) are skipped.

    Rules, on absolute paths with symbolic links resolved: every output path is distinct; a
    file is not an existing folder (nor a folder an existing file); an output file is not an
    input (nor a hard link to one) and does not lie inside an input folder (a frame tree or
    a folder of footage would read it as data next time); an output folder is not an input,
    does not lie inside an input folder and does not contain an input; the nearest existing
    folder above each output accepts files. Nothing is created.

    Raises:
        InputError: one line naming the flags, the paths and the fix.
    """
    outputs = [(flag, path, False) for flag, path in (files or {}).items() if path]
    outputs += [(flag, path, True) for flag, path in (folders or {}).items() if path]
    sources = [(flag, _resolved(path)) for flag, path in (inputs or {}).items() if path]
    seen: dict[Path, str] = {}
    for flag, target, is_folder in outputs:
        resolved = _resolved(target)
        if resolved in seen:
            raise InputError(
                f"{seen[resolved]} and {flag} both name {target}; give each output its own path"
            )
        seen[resolved] = flag
        if not is_folder and Path(target).is_dir():
            raise InputError(f"{flag} {target} is a folder; give a file name")
        if is_folder and Path(target).exists() and not Path(target).is_dir():
            raise InputError(f"{flag} {target} is a file; give a folder")
    for flag, target, is_folder in outputs:
        touched = [
            (_RELATIONS.index(relation), relation, source_flag, source)
            for source_flag, source in sources
            if (relation := _collision(_resolved(target), is_folder, source)) is not None
        ]
        if touched:  # the closest relation first: the same file, then containment
            _, relation, source_flag, source = min(touched, key=lambda entry: entry[0])
            raise _collision_error(flag, target, relation, source_flag, source)
        folder = Path(target) if is_folder else Path(target).parent
        check_creatable_folder(folder, flag, "choose another path")
