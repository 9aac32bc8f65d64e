"""Resumable, checksum-verified downloads for data sets and pretrained weights.

``download_file`` streams a URL (http, https or file) into ``<dest>.part`` and renames it to
``dest`` only once it is complete and, when a SHA-256 is given, verified. An interrupted
download keeps its ``.part`` file; the next call asks the server for the rest with an HTTP
``Range`` request and starts over when the server does not honour it.
``cached_download`` keeps one verified copy per URL in a cache folder (archives are unpacked
by :mod:`data.archives`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch.hub
from tqdm import tqdm

from common.errors import InputError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
MANUAL_HINT = "download it by hand and pass the local file with --source"


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (as torch.hub.download_url_to_file hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int):
    """Open ``url``; for http(s) with ``offset > 0`` ask for the bytes from ``offset`` on.

    Returns (response, resumed): ``resumed`` is True only when the server answered 206 with a
    Content-Range that starts exactly at ``offset``; otherwise the body is the whole file.
    """
    headers = {"User-Agent": "lgn-net-reproduction"}
    is_http = urllib.parse.urlparse(url).scheme in ("http", "https")
    if is_http and offset > 0:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset > 0:
            # The .part file is not a prefix the server can continue (e.g. the file changed).
            return _open(url, 0)
        raise
    content_range = response.headers.get("Content-Range", "")
    resumed = (
        offset > 0
        and getattr(response, "status", None) == 206
        and re.match(rf"bytes\s+{offset}-", content_range) is not None
    )
    return response, resumed


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    size: int | None = None,
    hint: str = MANUAL_HINT,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    Args:
        url: http(s):// or file:// URL.
        dest: final path; the data is streamed to ``dest + ".part"`` first, and an existing
            ``.part`` file is resumed with a Range request when the server supports it
            (HTTP 206), otherwise the download restarts from byte 0.
        sha256: expected hex SHA-256 of the whole file, or None to skip the check.
        progress: show a tqdm progress bar (bytes).
        size: expected size in bytes, or None to trust the server's Content-Length.
        hint: what to suggest when the network fails (the manual fallback).

    Raises:
        InputError: network failure (naming the URL and ``hint``; a partial ``.part`` file is
            kept for resuming), a truncated or oversized file, or a checksum mismatch (the
            downloaded file is deleted; the message names the URL, expected and actual hashes).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    try:
        response, resumed = _open(url, offset)
        with response:
            if resumed:
                with open(part, "rb") as handle:
                    while chunk := handle.read(CHUNK_BYTES):
                        digest.update(chunk)
            else:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else size
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        if urllib.parse.urlparse(url).scheme == "file":  # a local file: no connection involved
            local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
            problem = "does not exist" if not local.exists() else f"cannot be read ({reason})"
            raise InputError(f"{url}: the file {local} {problem}; check the path") from error
        raise InputError(
            f"could not download {url} ({reason}); check the connection and run again "
            f"(a partial download resumes), or {hint}"
        ) from error

    received = part.stat().st_size
    expected_size = size if size is not None else total
    if expected_size is not None and received != expected_size:
        if received > expected_size:
            part.unlink()
        raise InputError(
            f"download of {url} has {received} bytes, expected {expected_size}; run again to "
            f"resume, or {hint}"
        )
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
        part.unlink()
        raise InputError(
            f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; the "
            f"file was deleted; run again, or {hint}"
        )
    os.replace(part, dest)
    return dest


def default_cache_dir() -> Path:
    """``$LGN_CACHE`` if set, else torch.hub's ``<hub dir>/checkpoints``."""
    env = os.environ.get("LGN_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def cache_path_for(url: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`cached_download` keeps ``url``: ``cache_dir`` (default
    :func:`default_cache_dir`) / the URL's last path component."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise InputError(f"cannot name a cache file for {url}: the URL has no file name")
    return cache_dir / name


def cached_download(
    url: str,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    hint: str = "download it by hand and pass the local file's path instead of the URL",
) -> Path:
    """Return a local copy of ``url`` in ``cache_dir`` (default ``default_cache_dir()``),
    named after the URL's last path component; download it only when no copy exists or
    the existing copy fails the ``sha256`` check."""
    dest = cache_path_for(url, cache_dir)
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256.lower()):
        return dest
    return download_file(url, dest, sha256=sha256, progress=progress, hint=hint)
