"""Checks of a command's outputs before any work: each can be written, no two share a path,
none lands on, inside or around an input of the same command, and none replaces an existing
file of another kind than it writes (a report over a checkpoint, a CSV over footage).

Every command line and ``python -m`` entry point calls :func:`check_outputs` once, with all
its outputs and all its inputs, so that a mistyped flag refuses to run instead of replacing a
checkpoint, a label file or footage, or dropping files into a frame folder that every later
run would then read as frames.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
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
    kinds: Mapping[str, str] | None = None,
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
        kind = (kinds or {}).get(flag)
        if kind is None:
            continue
        if not is_folder:
            check_replaceable(flag, target, kind)
        elif folder.is_dir():
            for existing in sorted(folder.glob(f"*.{kind}")):
                check_replaceable(flag, existing, kind)


# --------------------------------------------------------------------------- output kinds

# What an output of each kind is, for messages; an existing file is replaced only by an
# output of the kind its content shows (see :func:`file_kind`).
KIND_NAMES = {
    "json": "a JSON file",
    "jsonl": "a JSON-lines log",
    "csv": "a CSV table",
    "png": "a PNG image",
    "video": "a video (MP4, AVI or Matroska)",
    "checkpoint": "a checkpoint written by this project",
    "torch": "a torch.save file",
}
# What else an existing file may be, for messages.
_OTHER_KIND_NAMES = {
    "text": "a text file",
    "zip": "a ZIP archive",
    "jpeg": "a JPEG image",
    "npy": "a NumPy array (.npy)",
    "mat": "a MATLAB file",
    "binary": "binary data of no kind this project writes",
}
# The kinds an existing file may have for an output of each kind to replace it.
_REPLACEABLE = {
    "json": {"json"},
    "jsonl": {"jsonl", "json"},  # a log of one record is one JSON document too
    "csv": {"csv"},
    "png": {"png"},
    "video": {"video"},
    "checkpoint": {"checkpoint"},
    "torch": {"torch", "checkpoint"},
}
_SNIFF_BYTES = 1 << 16
# Text outputs larger than this are not parsed whole to tell JSON from other text.
_PARSE_LIMIT_BYTES = 256 << 20


def _pickled_strings(*names: str) -> list[tuple[bytes, bytes]]:
    """Each name as pickle protocols 2 (torch.save's) and 4+ encode a short str."""
    encoded = [name.encode() for name in names]
    return [
        (b"X" + len(raw).to_bytes(4, "little") + raw, b"\x8c" + bytes([len(raw)]) + raw)
        for raw in encoded
    ]


def _names_all(pickle_bytes: bytes, names: tuple[str, ...]) -> bool:
    return all(old in pickle_bytes or new in pickle_bytes for old, new in _pickled_strings(*names))


def _zip_kind(path: Path) -> str:
    """``checkpoint``, ``torch`` or ``zip``, from the archive's names and the keys its pickle
    spells out (nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            if not pickles:
                return "zip"
            if pickles[0].file_size > _PARSE_LIMIT_BYTES:
                return "torch"
            data = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "binary"
    # Version 2 checkpoints say "format": "lgn-net"; version 1 files hold these entries.
    if _names_all(data, ("format", "lgn-net")) or _names_all(data, ("model", "items", "args")):
        return "checkpoint"
    return "torch"


def _text_kind(path: Path, head: bytes, size: int) -> str:
    """``json``, ``jsonl``, ``csv`` or ``text`` for a file whose start is UTF-8 text."""
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first in (b"{", b"[") and size <= _PARSE_LIMIT_BYTES:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return "text"
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
        # A log: a JSON document per line; only its first line is required to parse, as a
        # crash may have torn the last one.
        try:
            json.loads(next(line for line in text.splitlines() if line.strip()))
            return "jsonl"
        except (ValueError, StopIteration):
            return "text"
    first_line = head.decode("utf-8", errors="ignore").lstrip("\ufeff").split("\n", 1)[0]
    if len(next(csv.reader([first_line]), [])) >= 2:
        return "csv"
    return "text"


def file_kind(path: str | os.PathLike) -> str:
    """What an existing file is, from its content (not its name): ``empty``, one of
    :data:`KIND_NAMES` (``checkpoint``: a ``torch.save`` file whose pickle holds this
    project's checkpoint entries, read without unpickling), or ``text``, ``zip``, ``jpeg``,
    ``npy``, ``mat``, ``binary``."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not head:
        return "empty"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    is_avi = head[:4] == b"RIFF" and head[8:12] == b"AVI "
    if head[4:8] == b"ftyp" or is_avi or head[:4] == b"\x1a\x45\xdf\xa3":
        return "video"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"MATLAB"):
        return "mat"
    if b"\0" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a character cut at the end of the head
            return "binary"
    return _text_kind(path, head, path.stat().st_size)


def kind_name(kind: str) -> str:
    """A kind from :func:`file_kind` in words."""
    return {**KIND_NAMES, **_OTHER_KIND_NAMES, "empty": "an empty file"}.get(kind, kind)


def check_replaceable(flag: str, target: str | os.PathLike, kind: str) -> None:
    """Raise InputError when ``target`` exists and is not of the ``kind`` the output
    ``flag`` writes (an empty file may be replaced by any). One line naming the file, what
    it is and the fix."""
    target = Path(target)
    if not target.is_file():
        return
    try:
        found = file_kind(target)
    except OSError as error:
        raise InputError(
            f"{flag} {target} exists and cannot be read ({error.strerror}) to see what it is; "
            "give another path"
        ) from None
    if found == "empty" or found in _REPLACEABLE[kind]:
        return
    raise InputError(
        f"{flag} {target} exists and is {kind_name(found)}, not {KIND_NAMES[kind]}, which "
        f"{flag} writes; this run would replace it: give {flag} another path (or move the "
        "file away)"
    )
