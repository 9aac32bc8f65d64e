"""Archives that try to write outside the target, hold links or devices, or fill the disk:
each is refused in one line that says what was found, on every Python (the extraction does
not rely on tarfile's ``filter="data"``), and nothing of it is left anywhere."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from common.errors import InputError
from data import archives
from data import prepare as prep
from data.archives import ArchiveRefused, extract_archive


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_entry(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


def deep_symlink_chain_tar(path: Path) -> Path:
    """CVE-2025-4517: symbolic links through folders named 247 characters long push the
    link's resolved path past PATH_MAX, where ``os.path.realpath`` (which ``filter="data"``
    trusts) stops resolving while the kernel goes on; ``escape`` then leads four folders up
    from the target (out of ``--root``, past data.prepare's work folder), and
    ``escape/outside.txt`` is written there."""
    long_name, steps, prefix = "d" * 247, "abcdefghijklmnop", ""
    with tarfile.open(path, "w") as tar:
        for step in steps:
            add_entry(tar, os.path.join(prefix, long_name), tarfile.DIRTYPE)
            add_entry(tar, os.path.join(prefix, step), tarfile.SYMTYPE, long_name)
            prefix = os.path.join(prefix, long_name)
        chain = os.path.join(*steps, "l" * 254)
        add_entry(tar, chain, tarfile.SYMTYPE, "../" * len(steps))
        add_entry(tar, "escape", tarfile.SYMTYPE, chain + "/../../../../")
        add_file(tar, "escape/outside.txt", b"written outside the target\n")
    return path


def test_a_deep_symlink_chain_cannot_write_outside_root(tmp_path, capsys):
    """Before this extraction, Python 3.11.7's filter="data" let ``outside.txt`` through."""
    evil = deep_symlink_chain_tar(tmp_path / "evil.tar")
    root = tmp_path / "deep" / "er" / "root"
    root.mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        prep.main(["ped2", "--root", str(root), "--source", str(evil), "--quiet"])
    assert tree(tmp_path) == ["deep", "deep/er", "deep/er/root", "evil.tar"]
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: refused to unpack")
    assert str(evil) in err and "symbolic link" in err and "damaged" not in err


@pytest.mark.parametrize(
    ("kind", "linkname", "said"),
    [
        (tarfile.SYMTYPE, "/etc/passwd", "symbolic link (to '/etc/passwd')"),
        (tarfile.SYMTYPE, "inside.txt", "symbolic link (to 'inside.txt')"),
        (tarfile.LNKTYPE, "top/inside.txt", "hard link (to 'top/inside.txt')"),
        (tarfile.CHRTYPE, "", "device"),
        (tarfile.BLKTYPE, "", "device"),
        (tarfile.FIFOTYPE, "", "FIFO"),
    ],
)
@pytest.mark.parametrize("compression", ["", "gz"])
def test_links_devices_and_fifos_are_refused_by_name(tmp_path, kind, linkname, said, compression):
    archive = tmp_path / f"a.tar{'.gz' if compression else ''}"
    with tarfile.open(archive, f"w:{compression}") as tar:
        add_file(tar, "top/inside.txt", b"fine")
        add_entry(tar, "top/odd", kind, linkname)
        add_file(tar, "top/after.txt", b"never reached")
    with pytest.raises(ArchiveRefused) as info:
        extract_archive(archive, tmp_path / "into", progress=False)
    message = str(info.value)
    assert f"member 'top/odd' is a {said}" in message and str(archive) in message
    assert "\n" not in message and "damaged" not in message
    assert tree(tmp_path) == [archive.name]  # the first member, unpacked, was removed again


@pytest.mark.parametrize("name", ["../up.txt", "top/../../up.txt", "/abs.txt", "C:/win.txt"])
@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_names_leaving_the_target_are_refused(tmp_path, name, fmt):
    archive = tmp_path / f"a.{fmt}"
    if fmt == "tar":
        with tarfile.open(archive, "w") as tar:
            add_file(tar, name, b"x")
    else:
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr(zipfile.ZipInfo(name), b"x")  # ZipInfo keeps the name as given
    with pytest.raises(ArchiveRefused, match="names a path outside the folder"):
        extract_archive(archive, tmp_path / "x" / "into", progress=False)
    assert tree(tmp_path) == [archive.name, "x"]


def zip_with_symlink(path: Path, link_target: str) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        link = zipfile.ZipInfo("top/link")
        link.create_system = 3  # Unix: the upper bits of external_attr are st_mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(link, link_target)
        handle.writestr("top/link/through.txt", b"x")
    return path


def test_a_zip_symlink_used_as_a_folder_ends_in_one_line(tmp_path, capsys):
    archive = zip_with_symlink(tmp_path / "a.zip", "../../..")
    with pytest.raises(SystemExit):
        prep.main(["ped2", "--root", str(tmp_path / "root"), "--source", str(archive), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "member 'top/link' is a symbolic link" in err and "damaged" not in err
    assert tree(tmp_path) == ["a.zip", "root"]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_a_file_used_as_a_folder_is_refused_in_one_line(tmp_path, fmt):
    archive = tmp_path / f"a.{fmt}"
    if fmt == "tar":
        with tarfile.open(archive, "w") as tar:
            add_file(tar, "top/plain", b"a file")
            add_file(tar, "top/plain/inner.txt", b"x")
    else:
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("top/plain", b"a file")
            handle.writestr("top/plain/inner.txt", b"x")
    with pytest.raises(ArchiveRefused, match=r"needs the folder top/plain, which the archive"):
        extract_archive(archive, tmp_path / "into", progress=False)
    assert not (tmp_path / "into").exists()


def test_files_and_folders_unpack_byte_for_byte_with_the_later_copy_winning(tmp_path):
    archive = tmp_path / "a.tar.gz"
    payload = bytes(range(256)) * 5000  # over one read chunk
    with tarfile.open(archive, "w:gz") as tar:
        add_entry(tar, "top", tarfile.DIRTYPE)
        add_file(tar, "./top/data.bin", payload)
        add_file(tar, "top/twice.txt", b"first")
        add_file(tar, "top/twice.txt", b"second")  # tar keeps the later copy
    extract_archive(archive, tmp_path / "into", progress=False)
    assert tree(tmp_path / "into") == ["top", "top/data.bin", "top/twice.txt"]
    assert (tmp_path / "into/top/data.bin").read_bytes() == payload
    assert (tmp_path / "into/top/twice.txt").read_bytes() == b"second"


# --------------------------------------------------------------------------- declared sizes


def test_a_compressed_bomb_is_refused_as_it_streams_with_both_sizes(tmp_path, capsys):
    """A tar.gz is sized only as it is read: the small first member is unpacked, then the
    header declaring 20 MB of zeros (some 20 kB compressed) stops it, and all is removed."""
    archive = tmp_path / "bomb.tar.gz"
    declared = 20 * 10**6
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "top/first.txt", b"12345")
        info = tarfile.TarInfo("top/zeros.bin")
        info.size = declared
        tar.addfile(info, io.BytesIO(bytes(declared)))
    size = archive.stat().st_size
    assert 20 * size < declared  # the premise: over MAX_EXPANSION times the archive
    with pytest.raises(SystemExit):
        prep.main(["ped2", "--root", str(tmp_path / "root"), "--source", str(archive), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decompression bomb" in err
    assert f"({declared + 5:,} bytes)" in err and f"({size:,} bytes)" in err
    assert tree(tmp_path) == ["bomb.tar.gz", "root"]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_contents_beyond_the_free_space_are_refused_before_writing(tmp_path, monkeypatch, fmt):
    """Zip and uncompressed tar declare every size up front: the refusal comes before the
    first byte is written (the first member is small and would fit)."""
    archive = tmp_path / f"a.{fmt}"
    big = 3 * 10**6
    if fmt == "tar":
        with tarfile.open(archive, "w") as tar:
            add_file(tar, "top/small.txt", b"x")
            add_file(tar, "top/big.bin", bytes(big))
    else:
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("top/small.txt", b"x")
            handle.writestr("top/big.bin", bytes(big))
    free = 50 * 10**6  # less than 3 MB + the 64 MB margin
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda _: usage(10**12, 0, free))
    written = []
    monkeypatch.setattr(archives._Unpacker, "file", lambda _, member, __: written.append(member))
    with pytest.raises(InputError) as info:
        extract_archive(archive, tmp_path / "into", progress=False)
    message = str(info.value)
    assert f"declare 3 MB ({big + 1:,} bytes), and" in message
    assert f"50 MB ({free:,} bytes) free" in message and "64 MB spare" in message
    assert written == [] and not (tmp_path / "into").exists()


def test_the_disk_filling_up_while_unpacking_ends_in_one_line(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "top/a.bin", bytes(1000))

    def full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archives.os, "fdopen", full)
    with pytest.raises(InputError, match=r"a.tar into .*into: the disk is full \(No space"):
        extract_archive(archive, tmp_path / "into", progress=False)
    assert not (tmp_path / "into").exists()
