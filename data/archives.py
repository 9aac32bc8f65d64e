"""Unpacking a data set archive (tar of any compression, or zip) without trusting it.

The extraction is done here member by member rather than by ``tarfile.extractall``, so its
safety does not depend on the interpreter's patch level (``filter="data"`` was bypassed by
symbolic-link chains longer than PATH_MAX before Python 3.11.13 / 3.12.11 / 3.13.4,
CVE-2025-4517). The rules:

- Only regular files and folders are unpacked. The data sets hold nothing else, so a symbolic
  link, hard link, device or FIFO member makes the whole archive refused: with no link ever
  created, no later member can be sent outside the target through one.
- A member name may not be absolute nor contain ``..``; each file is created new
  (``O_EXCL | O_NOFOLLOW``) below folders this function made, and its resolved folder is
  checked to be the one its name gives.
- The sizes the archive declares (zip directory, tar headers) are added up before anything is
  written where the format allows it (zip, uncompressed tar), else before each member as the
  stream is read (a compressed tar), and the archive is refused when they exceed the free disk
  space (less a margin) or :data:`MAX_EXPANSION` times the archive's own size (and 16 MB). A
  member never yields more bytes than it declares (tarfile and zipfile stop there).
- A refusal or failure removes everything unpacked so far: the target folder is new and is
  deleted as a whole.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from common.errors import InputError
from data.frame_store import gigabytes

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# The official archives expand less than 2x (TIFF, AVI and JPEG frames compress little); an
# archive declaring far more is a decompression bomb, not a data set.
MAX_EXPANSION = 20
# Room left on the disk after unpacking, for the converted frames' first files and for the
# system: a tenth of the archive's contents, at least this many bytes.
MIN_FREE_MARGIN = 64 * 10**6
# Below this, contents are never called a bomb (tiny archives of tar headers compress well).
ALWAYS_ALLOWED_BYTES = 16 * 10**6
CHUNK_BYTES = 1 << 20
# Magic numbers of the compressions tarfile opens (gzip, bzip2, xz): such a tar cannot be
# listed without decompressing it all, so its sizes are checked as it is read.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class ArchiveRefused(InputError):
    """An archive holding something a data set never does (a link, a device, a path out of
    the target, a decompression bomb): refused as a whole, with what was found."""


def is_archive(path: Path) -> bool:
    """Whether ``path`` is named like an archive :func:`extract_archive` unpacks."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class _Member:
    """One archive entry as this module sees it: ``kind`` is "file", "folder" or what the
    entry is instead (e.g. "symbolic link to x"); ``size`` in bytes as declared."""

    name: str
    kind: str
    size: int


def extract_archive(archive: Path, into: Path, progress: bool = True) -> None:
    """Unpack ``archive`` (.tar, .tar.gz, .tgz, any compressed tar, .zip) into the new folder
    ``into`` (see the module notes for what is refused).

    Raises:
        ArchiveRefused: a member that is not a file or folder, a name leaving ``into``, or
            declared sizes beyond the disk's free space or :data:`MAX_EXPANSION` times the
            archive (one line naming the archive, the member or both sizes).
        InputError: a damaged or truncated archive, or a full disk while unpacking.
        ``into`` is removed again whenever an error is raised.
    """
    into = Path(into)
    into.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, into, progress)
        else:
            _extract_tar(archive, into, progress)
    except BaseException as error:
        shutil.rmtree(into, ignore_errors=True)
        if isinstance(error, InputError):
            raise
        damaged = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError)
        # NotImplementedError: a zip compression method zipfile lacks.
        if isinstance(error, (*damaged, NotImplementedError)):
            raise InputError(
                f"cannot unpack {archive} ({error}); the archive is damaged or incomplete: "
                "delete it and download it again"
            ) from error
        if isinstance(error, OSError):
            raise _storage_error(archive, into, error) from error
        raise


# --------------------------------------------------------------------------- formats


def _extract_zip(archive: Path, into: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as handle:
        infos = handle.infolist()
        members = [_zip_member(info) for info in infos]
        # The central directory lists every member: all are checked before one is written.
        budget = _SizeBudget(archive, into)
        for member in members:
            _check_member(archive, member)
            budget.add(member, check=False)
        budget.check(complete=True)
        unpacker = _Unpacker(archive, into)
        for info, member in tqdm(
            list(zip(infos, members, strict=True)),
            desc=f"extracting {archive.name}",
            disable=not progress,
        ):
            if member.kind == "folder":
                unpacker.folder(member)
            else:
                with handle.open(info) as source:
                    unpacker.file(member, source)


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    if info.is_dir():
        return _Member(info.filename, "folder", 0)
    mode = info.external_attr >> 16
    if info.flag_bits & 0x1:
        return _Member(info.filename, "encrypted file", info.file_size)
    if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        # Unix zips keep the file type in the upper bits; zipfile would write a link's target
        # as a file's contents, which a later member could then meet as a "folder".
        return _Member(info.filename, _unix_kind(mode), info.file_size)
    return _Member(info.filename, "file", info.file_size)


def _unix_kind(mode: int) -> str:
    kinds = {stat.S_IFLNK: "symbolic link", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}
    return kinds.get(stat.S_IFMT(mode), "FIFO" if stat.S_ISFIFO(mode) else "special file")


def _extract_tar(archive: Path, into: Path, progress: bool) -> None:
    with open(archive, "rb") as raw:
        compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
    budget = _SizeBudget(archive, into)
    if not compressed:
        # Headers of an uncompressed tar are read by seeking past the data: cheap, so every
        # member is checked before one is written.
        with tarfile.open(archive, "r:") as handle:
            for info in handle:
                member = _tar_member(info)
                _check_member(archive, member)
                budget.add(member, check=False)
        budget.check(complete=True)
        budget = _SizeBudget(archive, into)
    unpacker = _Unpacker(archive, into)
    with tarfile.open(archive, "r:*") as handle:
        # Iterating reads each header just before its data, so a compressed tarball is
        # decompressed once; a member is checked (type, name, running total of the declared
        # sizes) before anything of it is written.
        for info in tqdm(handle, desc=f"extracting {archive.name}", disable=not progress):
            member = _tar_member(info)
            _check_member(archive, member)
            budget.add(member)
            if member.kind == "folder":
                unpacker.folder(member)
            else:
                source = handle.extractfile(info)
                assert source is not None  # a regular member always has data
                with source:
                    unpacker.file(member, source)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        return _Member(info.name, "file", info.size)
    if info.isdir():
        return _Member(info.name, "folder", 0)
    if info.issym():
        return _Member(info.name, f"symbolic link (to {info.linkname!r})", 0)
    if info.islnk():
        return _Member(info.name, f"hard link (to {info.linkname!r})", 0)
    kind = "device" if info.ischr() or info.isblk() else "FIFO" if info.isfifo() else None
    return _Member(info.name, kind or f"entry of unknown type {info.type!r}", info.size)


# --------------------------------------------------------------------------- checks


def _refused(archive: Path, reason: str) -> ArchiveRefused:
    return ArchiveRefused(
        f"refused to unpack {archive}: {reason}; nothing of it was kept (a data set archive "
        "holds only files and folders inside its own top folder, so this one is not the "
        "official release: get that, or pass an extracted folder you trust)"
    )


def _name_parts(name: str) -> list[str] | None:
    """The member's path components below the target, or None when it would leave it."""
    if "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    for separator in separators - {"/"}:
        name = name.replace(separator, "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return None if ".." in parts else parts


def _check_member(archive: Path, member: _Member) -> None:
    if member.kind not in ("file", "folder"):
        raise _refused(archive, f"member {member.name!r} is a {member.kind}")
    if _name_parts(member.name) is None:
        raise _refused(
            archive, f"member {member.name!r} names a path outside the folder it unpacks into"
        )


class _SizeBudget:
    """The total of declared sizes, refused past the free space (less a margin) or past
    :data:`MAX_EXPANSION` times the archive's size. ``add`` checks the running total (a
    stream); ``add(..., check=False)`` then ``check(complete=True)`` checks a full listing."""

    def __init__(self, archive: Path, into: Path) -> None:
        self.archive = archive
        self.archive_bytes = archive.stat().st_size
        self.free_bytes = shutil.disk_usage(into).free
        self.declared = 0

    def add(self, member: _Member, check: bool = True) -> None:
        self.declared += member.size
        if check:
            self.check(complete=False)

    def check(self, complete: bool) -> None:
        declared = _bytes(self.declared) + ("" if complete else " or more")
        if self.declared > max(MAX_EXPANSION * self.archive_bytes, ALWAYS_ALLOWED_BYTES):
            raise _refused(
                self.archive,
                f"its members declare {declared}, over {MAX_EXPANSION} times the archive's "
                f"{_bytes(self.archive_bytes)} (a decompression bomb)",
            )
        margin = max(MIN_FREE_MARGIN, self.declared // 10)
        if self.declared + margin > self.free_bytes:
            raise InputError(
                f"cannot unpack {self.archive}: its members declare {declared}, and the disk "
                f"has {_bytes(self.free_bytes)} free (keeping {gigabytes(margin)} spare); "
                "free space or give --root another disk"
            )


def _bytes(count: int) -> str:
    return f"{gigabytes(count)} ({count:,} bytes)"


class _Unpacker:
    """Creates the members' folders and files below ``into``, never through a link."""

    def __init__(self, archive: Path, into: Path) -> None:
        self.archive = archive
        self.into = into
        self.real_into = os.path.realpath(into)
        self.made: set[tuple[str, ...]] = set()  # folders made here (checked, no link inside)

    def _parent(self, member: _Member, parts: list[str]) -> Path:
        """Make (or reuse) the folders above the member; each must be a real folder."""
        folder = self.into
        for depth, part in enumerate(parts, start=1):
            folder = folder / part
            if tuple(parts[:depth]) in self.made:
                continue
            self.made.add(tuple(parts[:depth]))
            try:
                os.mkdir(folder)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    raise _refused(
                        self.archive,
                        f"member {member.name!r} needs the folder "
                        f"{folder.relative_to(self.into)}, which the archive made a file",
                    ) from None
        # Defence in depth: the folder the kernel resolves is the one the name gives.
        if os.path.realpath(folder) != os.path.join(self.real_into, *parts):
            raise _refused(self.archive, f"member {member.name!r} resolves outside {self.into}")
        return folder

    def folder(self, member: _Member) -> None:
        parts = _name_parts(member.name) or []
        self._parent(member, parts)

    def file(self, member: _Member, source: IO[bytes]) -> None:
        parts = _name_parts(member.name) or []
        if not parts:
            raise _refused(self.archive, f"member {member.name!r} has no file name")
        target = self._parent(member, parts[:-1]) / parts[-1]
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not stat.S_ISREG(existing.st_mode):
                raise _refused(
                    self.archive, f"member {member.name!r} is a file where a folder was unpacked"
                )
            os.unlink(target)  # a tar may hold a file twice: the later copy wins, as tar does
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        written = 0
        with os.fdopen(os.open(target, flags, 0o666), "wb") as out:
            for chunk in _chunks(source):
                written += len(chunk)
                if written > member.size:  # tarfile and zipfile stop there; never trust it
                    raise _refused(
                        self.archive, f"member {member.name!r} holds more than it declares"
                    )
                out.write(chunk)


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def _storage_error(archive: Path, into: Path, error: OSError) -> InputError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InputError(
            f"cannot unpack {archive} into {into}: the disk is full ({error.strerror}); "
            "nothing of it was kept; free space or give --root another disk"
        )
    if error.errno == errno.ENAMETOOLONG:
        return _refused(archive, f"a member's path is longer than the system allows ({error})")
    return InputError(f"cannot unpack {archive} into {into} ({error}); check the folder")
