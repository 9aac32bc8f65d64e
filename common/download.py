"""Resumable, checksum-verified, bounded downloads for data sets and pretrained weights.

``download_file`` streams a URL (http, https or file) into ``<dest>.part`` and renames it to
``dest`` only once it is complete and, when a SHA-256 is given, verified. An interrupted
download keeps its ``.part`` file and, beside it, the server's validator (ETag or
Last-Modified) recorded when the ``.part`` was started; the next call asks for the rest with
``Range`` + ``If-Range``, so a server whose file changed since answers with the whole new file
instead of a splice of two versions; without a validator the download starts over. A download
may not exceed its known size or, when none is known, ``LGN_MAX_DOWNLOAD_MB``, nor take longer
than ``LGN_MAX_DOWNLOAD_MINUTES`` in all; a known size is checked against the free disk space
first.
``cached_download`` keeps one verified copy per URL in a cache folder (archives are unpacked
by :mod:`data.archives`).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.hub
from tqdm import tqdm

from common.errors import InputError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
MANUAL_HINT = "download it by hand and pass the local file with --source"
# Bounds of a download whose size is not known beforehand, and of any download's duration;
# the environment variables raise (or lower) them.
MAX_MB_VARIABLE = "LGN_MAX_DOWNLOAD_MB"
MAX_MINUTES_VARIABLE = "LGN_MAX_DOWNLOAD_MINUTES"
DEFAULT_MAX_MB = 4096
DEFAULT_MAX_MINUTES = 120
# Room left on the disk beyond a download of known size (the rest of the system needs some).
FREE_SPACE_MARGIN_BYTES = 64 << 20


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _validator_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (as torch.hub.download_url_to_file hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _positive_number(variable: str, default: float) -> float:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(f"{variable}={text} must be a positive number; fix or unset it")
    return value


def download_limits() -> tuple[int, float]:
    """``(max_bytes, max_seconds)``: the largest download of unknown size (bytes, from
    ``LGN_MAX_DOWNLOAD_MB``, default 4096 MB) and the longest any download may take
    (seconds, from ``LGN_MAX_DOWNLOAD_MINUTES``, default 120 minutes)."""
    max_mb = _positive_number(MAX_MB_VARIABLE, DEFAULT_MAX_MB)
    max_minutes = _positive_number(MAX_MINUTES_VARIABLE, DEFAULT_MAX_MINUTES)
    return int(max_mb * 1e6), max_minutes * 60.0


def _read_validator(dest: Path, url: str) -> dict[str, str]:
    """The ETag / Last-Modified recorded when ``dest``'s ``.part`` was started from ``url``
    (empty when there is none, it is unreadable, or it belongs to another URL)."""
    try:
        recorded = json.loads(_validator_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict) or recorded.get("url") != url:
        return {}
    return {key: value for key, value in recorded.items() if isinstance(value, str)}


def _if_range(validator: dict[str, str]) -> str | None:
    """What to send as ``If-Range``: a strong ETag, else the Last-Modified date (RFC 9110:
    a weak ETag cannot make a range request conditional)."""
    etag = validator.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return validator.get("last_modified") or None


def _record_validator(dest: Path, url: str, headers: Any) -> None:
    """Keep the server's validators of the file a new ``.part`` is started from."""
    record = {"url": url}
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        if headers.get(header):
            record[key] = headers[header]
    if len(record) == 1:  # nothing could prove a later response is the same file
        _validator_path(dest).unlink(missing_ok=True)
        return
    _validator_path(dest).write_text(json.dumps(record), encoding="utf-8")


def _open(url: str, offset: int, if_range: str | None, timeout: float):
    """Open ``url``; for http(s) with ``offset > 0`` and a validator (``if_range``) ask for
    the bytes from ``offset`` on, only if the file is still the one the validator names.

    Returns (response, resumed): ``resumed`` is True only when the server answered 206 with a
    Content-Range that starts exactly at ``offset``; otherwise the body is the whole file.
    """
    headers = {"User-Agent": "lgn-net-reproduction"}
    is_http = urllib.parse.urlparse(url).scheme in ("http", "https")
    ask_range = is_http and offset > 0 and if_range is not None
    if ask_range:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = if_range
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as error:
        if error.code == 416 and ask_range:
            # The .part file is not a prefix the server can continue (e.g. the file changed).
            return _open(url, 0, None, timeout)
        raise
    content_range = response.headers.get("Content-Range", "")
    resumed = (
        ask_range
        and getattr(response, "status", None) == 206
        and re.match(rf"bytes\s+{offset}-", content_range) is not None
    )
    return response, resumed


def check_url(url: str) -> None:
    """Raise InputError when ``url`` cannot name a file: its path holds a NUL byte (``%00``),
    which no file system allows and the operating system's calls refuse with a ValueError."""
    if "\0" in urllib.parse.unquote(urllib.parse.urlparse(url).path):
        raise InputError(f"{url}: a NUL byte (%00) in a URL's path names no file; check the URL")


def _check_destination(url: str, dest: Path) -> None:
    if "\0" in str(dest) or dest.name in ("", ".", ".."):
        raise InputError(
            f"cannot download {url} to {str(dest)!r}: not a usable file name; give the file "
            "a plain name"
        )


def _amount(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes" if n_bytes < 1_000_000 else f"{n_bytes / 1e6:,.1f} MB"


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    size: int | None = None,
    hint: str = MANUAL_HINT,
    max_bytes: int | None = None,
    max_seconds: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest``.

    Args:
        url: http(s):// or file:// URL.
        dest: final path; the data is streamed to ``dest + ".part"`` first. An existing
            ``.part`` file is resumed (HTTP ``Range``, 206) only when the server proves it
            still serves the file the ``.part`` began with: ``If-Range`` with the ETag or
            Last-Modified kept in ``dest + ".part.json"``; otherwise the download restarts
            from byte 0.
        sha256: expected hex SHA-256 of the whole file, or None to skip the check.
        progress: show a tqdm progress bar (bytes).
        size: expected size in bytes, or None to trust the server's Content-Length.
        hint: what to suggest when the network fails (the manual fallback).
        max_bytes: the most bytes to accept when ``size`` is None (default
            :func:`download_limits`, ``LGN_MAX_DOWNLOAD_MB``).
        max_seconds: the longest the whole download may take, seconds (default
            :func:`download_limits`, ``LGN_MAX_DOWNLOAD_MINUTES``); checked between reads,
            each read having its own 60 s timeout.

    Raises:
        InputError: network failure (naming the URL and ``hint``; a partial ``.part`` file is
            kept for resuming), a file larger than its bound (deleted), a known size larger
            than the free disk space, the time limit (the ``.part`` is kept), a truncated or
            oversized file, or a checksum mismatch (the downloaded file is deleted; the message
            names the URL, expected and actual hashes).
    """
    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme == "file":
        check_url(url)
    _check_destination(url, dest)
    default_bytes, default_seconds = download_limits()
    job = _Download(
        url, dest, _part_path(dest), size, hint,
        max_bytes=size if size is not None else (max_bytes or default_bytes),
        max_seconds=max_seconds or default_seconds,
    )  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        total = _transfer(job, digest, progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise _failure(job, error) from error
    _verify(job, total, digest.hexdigest(), sha256)
    os.replace(job.part, dest)
    _validator_path(dest).unlink(missing_ok=True)
    return dest


@dataclass(frozen=True)
class _Download:
    """One call of :func:`download_file`: where from, where to, and its bounds."""

    url: str
    dest: Path
    part: Path  # where the bytes arrive: dest + ".part"
    size: int | None  # the expected size, bytes (None: the server's Content-Length)
    hint: str  # the manual fallback messages suggest
    max_bytes: int
    max_seconds: float

    def too_large(self, n_bytes: int, known: bool) -> InputError:
        """The refusal of a file past its bound; the partial file is deleted first."""
        self.part.unlink(missing_ok=True)
        _validator_path(self.dest).unlink(missing_ok=True)
        amount = f"is {_amount(n_bytes)}" if known else f"went past {_amount(n_bytes)}"
        if self.size is not None:
            bound, fix = f"the expected {_amount(self.size)}", self.hint
        else:
            bound = f"the maximum {_amount(self.max_bytes)} ({MAX_MB_VARIABLE})"
            fix = f"set {MAX_MB_VARIABLE} to allow more, or {self.hint}"
        return InputError(
            f"download of {self.url} {amount}, more than {bound}; nothing was kept; {fix}"
        )


def _transfer(job: _Download, digest: Any, progress: bool) -> int | None:
    """Stream the URL into ``job.part`` (resuming where the server proves it may), hashing
    every byte of the whole file into ``digest``; the file's total size when known."""
    deadline = time.monotonic() + job.max_seconds
    offset = job.part.stat().st_size if job.part.exists() else 0
    if_range = _if_range(_read_validator(job.dest, job.url))
    response, resumed = _open(job.url, offset, if_range, min(TIMEOUT_S, job.max_seconds))
    with response:
        if resumed:
            with open(job.part, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
        else:
            offset = 0
            _record_validator(job.dest, job.url, response.headers)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else job.size
        if total is not None and total > job.max_bytes:
            raise job.too_large(total, known=True)
        free = shutil.disk_usage(job.dest.parent).free
        if total is not None and total - offset + FREE_SPACE_MARGIN_BYTES > free:
            raise InputError(
                f"download of {job.url} needs {_amount(total - offset)} but "
                f"{job.dest.parent} has {_amount(free)} free; free space, or {job.hint}"
            )
        # read1 returns what has arrived, so a trickling server meets the deadline too.
        read = getattr(response, "read1", response.read)
        received = offset
        with (
            open(job.part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=job.dest.name, disable=not progress,
            ) as bar,
        ):  # fmt: skip
            while chunk := read(CHUNK_BYTES):
                received += len(chunk)
                if received > job.max_bytes:
                    out.close()
                    raise job.too_large(job.max_bytes, known=False)
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise InputError(
                        f"download of {job.url} took longer than {job.max_seconds / 60:g} "
                        f"minutes ({MAX_MINUTES_VARIABLE}), {_amount(received)} received; run "
                        f"again to resume, set {MAX_MINUTES_VARIABLE} higher, or {job.hint}"
                    )
    return total


def _failure(job: _Download, error: BaseException) -> InputError:
    """The one-line message for a transfer that failed (the ``.part`` is kept to resume)."""
    url, reason = job.url, getattr(error, "reason", None) or error
    if urllib.parse.urlparse(url).scheme == "file":  # a local file: no connection involved
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        problem = "does not exist" if not local.exists() else f"cannot be read ({reason})"
        return InputError(f"{url}: the file {local} {problem}; check the path")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(
            f"download of {url}: {job.dest.parent} ran out of disk space ({reason}); free "
            f"space and run again to resume, or {job.hint}"
        )
    return InputError(
        f"could not download {url} ({reason}); check the connection and run again "
        f"(a partial download resumes), or {job.hint}"
    )


def _verify(job: _Download, total: int | None, actual: str, sha256: str | None) -> None:
    """Refuse a finished transfer of the wrong size (an oversized file is deleted, a short
    one kept to resume) or with another sha256 than ``sha256`` (deleted)."""
    received = job.part.stat().st_size
    expected_size = job.size if job.size is not None else total
    if expected_size is not None and received != expected_size:
        if received > expected_size:
            job.part.unlink()
            _validator_path(job.dest).unlink(missing_ok=True)
        raise InputError(
            f"download of {job.url} has {received} bytes, expected {expected_size}; run again "
            f"to resume, or {job.hint}"
        )
    if sha256 is not None and actual != sha256.lower():
        job.part.unlink()
        _validator_path(job.dest).unlink(missing_ok=True)
        raise InputError(
            f"checksum mismatch for {job.url}: expected sha256 {sha256.lower()}, got {actual}; "
            f"the file was deleted; run again, or {job.hint}"
        )


def default_cache_dir() -> Path:
    """``$LGN_CACHE`` if set, else torch.hub's ``<hub dir>/checkpoints``."""
    env = os.environ.get("LGN_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def cache_path_for(url: str, cache_dir: Path | None = None) -> Path:
    """Where :func:`cached_download` keeps ``url``: ``cache_dir`` (default
    :func:`default_cache_dir`) / ``<hash>-<name>``, where the hash is the first 16 hex digits
    of the whole URL's SHA-256 (so ``.../runA/checkpoint.pth`` and ``.../runB/checkpoint.pth``,
    or two queries of one path, get their own files) and the name is the URL's last path
    component, reduced to letters, digits, ``.``, ``-`` and ``_`` (``download`` when nothing
    is left)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    last = urllib.parse.unquote(urllib.parse.urlparse(url).path).rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.-]", "_", last).lstrip(".") or "download"
    key = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir / f"{key}-{name}"


def cached_download(
    url: str,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    hint: str = "download it by hand and pass the local file's path instead of the URL",
) -> Path:
    """Return a local copy of ``url`` in ``cache_dir`` (default ``default_cache_dir()``),
    at :func:`cache_path_for`; download it only when no copy exists or the existing copy
    fails the ``sha256`` check."""
    dest = cache_path_for(url, cache_dir)
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256.lower()):
        return dest
    return download_file(url, dest, sha256=sha256, progress=progress, hint=hint)
