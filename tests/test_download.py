"""Downloads: Range resume, restart without Range, checksums, file:// URLs, the cache."""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from common.download import (
    cache_path_for,
    cached_download,
    default_cache_dir,
    download_file,
    file_sha256,
)
from common.errors import InputError


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, records each request's path and Range header, and optionally honours
    ``Range: bytes=N-`` (206) or cuts the body short (to simulate a dropped connection).

    With ``validator`` "etag" (the default) or "last_modified" each answer carries that header
    of the file as it is now, and a Range request with an ``If-Range`` that does not match it
    gets the whole file (200), as RFC 9110 asks; with None the answers carry neither.
    """

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.if_ranges.append(self.headers.get("If-Range"))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        current = {
            "etag": f'"{hashlib.sha256(data).hexdigest()[:16]}"',
            "last_modified": self.date_time_string(int(path.stat().st_mtime)),
        }.get(server.validator)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        same_file = if_range is None or if_range == current
        if server.honour_range and match and same_file:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if server.validator == "etag":
            self.send_header("ETag", current)
        elif server.validator == "last_modified":
            self.send_header("Last-Modified", current)
        body = data[start:]
        if server.stream_without_length is not None:
            # No Content-Length: the body ends when the connection closes, which it never
            # does by itself; one chunk of zeros every stream_without_length seconds.
            self.end_headers()
            self.close_connection = True
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
                    self.wfile.flush()
                    time.sleep(server.stream_without_length)
            except OSError:  # the client hung up
                return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.truncate_at is not None:
            self.wfile.write(body[: server.truncate_at])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def serve(tmp_path):
    """serve(honour_range=True, truncate_at=None, validator="etag",
    stream_without_length=None) -> (base_url, server) for tmp_path/'www'."""
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start(
        honour_range: bool = True,
        truncate_at: int | None = None,
        validator: str | None = "etag",
        stream_without_length: float | None = None,
    ):
        handler = functools.partial(RecordingHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
        server.if_ranges = []
        server.validator = validator
        server.stream_without_length = stream_without_length
        server.honour_range = honour_range
        server.truncate_at = truncate_at
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    start.root = root
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def payload(n_bytes: int = 50_000) -> bytes:
    # Deterministic, non-repeating-ish bytes so an off-by-one splice would be caught.
    return hashlib.sha256(b"seed").digest() * (n_bytes // 32) + bytes(range(n_bytes % 32))


def test_http_download_matches_and_verifies(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    base, server = serve()
    dest = tmp_path / "out" / "blob.bin"
    sha = hashlib.sha256(data).hexdigest()
    assert download_file(f"{base}/blob.bin", dest, sha256=sha.upper(), progress=False) == dest
    assert dest.read_bytes() == data
    assert not (tmp_path / "out" / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", None)]
    assert file_sha256(dest) == sha


def interrupted_download(serve, url_path: str, dest: Path, keep: int, **options):
    """A first attempt at ``url_path`` whose connection drops after ``keep`` bytes; returns
    ``(base_url, server)``, the server reset to serve whole answers and its log cleared."""
    base, server = serve(truncate_at=keep, **options)
    with pytest.raises(InputError, match=re.escape(f"{base}{url_path}")):
        download_file(f"{base}{url_path}", dest, progress=False)
    assert not dest.exists()
    server.truncate_at = None
    server.requests.clear()
    server.if_ranges.clear()
    return base, server


def test_resume_uses_range_request_if_the_last_modified_date_is_the_same(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    half = len(data) // 2
    base, server = interrupted_download(serve, "/blob.bin", dest, half, validator="last_modified")
    download_file(f"{base}/blob.bin", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", f"bytes={half}-")]
    modified = (serve.root / "blob.bin").stat().st_mtime
    assert server.if_ranges == [email.utils.formatdate(modified, usegmt=True)]
    assert not (tmp_path / "blob.bin.part").exists()
    assert not (tmp_path / "blob.bin.part.json").exists()


def test_restart_when_server_ignores_range(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    base, server = interrupted_download(serve, "/blob.bin", dest, 1000)
    # A .part that is NOT a prefix of the file: appending to it would corrupt the result.
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)
    server.honour_range = False
    download_file(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=1000-")]


def test_dropped_connection_keeps_part_then_resumes(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    base, server = interrupted_download(serve, "/blob.bin", dest, 20_000)
    assert (tmp_path / "blob.bin.part").read_bytes() == data[:20_000]

    download_file(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=20000-")]
    assert server.if_ranges == [f'"{hashlib.sha256(data).hexdigest()[:16]}"']


def test_a_file_changed_since_the_part_began_is_downloaded_whole_not_spliced(serve, tmp_path):
    old = payload()
    (serve.root / "blob.bin").write_bytes(old)
    dest = tmp_path / "blob.bin"
    base, server = interrupted_download(serve, "/blob.bin", dest, 20_000)
    new = bytes(255 - byte for byte in old)  # the same size, other bytes
    (serve.root / "blob.bin").write_bytes(new)
    download_file(f"{base}/blob.bin", dest, progress=False)  # no sha256 to catch a splice
    assert dest.read_bytes() == new
    assert server.requests == [("/blob.bin", "bytes=20000-")]  # asked, and answered 200


def test_a_part_without_a_validator_starts_over(serve, tmp_path):
    old = payload()
    (serve.root / "blob.bin").write_bytes(old)
    dest = tmp_path / "blob.bin"
    base, server = interrupted_download(serve, "/blob.bin", dest, 20_000, validator=None)
    assert not (tmp_path / "blob.bin.part.json").exists()
    new = bytes(255 - byte for byte in old)
    (serve.root / "blob.bin").write_bytes(new)
    download_file(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == new
    assert server.requests == [("/blob.bin", None)]  # nothing could prove it the same file


def test_a_part_of_another_url_is_not_resumed(serve, tmp_path):
    data = payload()
    (serve.root / "a.bin").write_bytes(data)
    (serve.root / "b.bin").write_bytes(data[::-1])
    dest = tmp_path / "blob.bin"
    base, server = interrupted_download(serve, "/a.bin", dest, 20_000)
    download_file(f"{base}/b.bin", dest, progress=False)
    assert dest.read_bytes() == data[::-1]
    assert server.requests == [("/b.bin", None)]


def test_checksum_mismatch_deletes_and_names_hashes(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    base, _ = serve()
    dest = tmp_path / "blob.bin"
    wrong = "0" * 64
    with pytest.raises(InputError) as info:
        download_file(f"{base}/blob.bin", dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert f"{base}/blob.bin" in message
    assert wrong in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "\n" not in message
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()


def test_size_mismatch_is_an_error(serve, tmp_path):
    (serve.root / "blob.bin").write_bytes(payload(1000))
    base, _ = serve()
    with pytest.raises(InputError, match="expected 999"):
        download_file(f"{base}/blob.bin", tmp_path / "blob.bin", size=999, progress=False)
    assert not (tmp_path / "blob.bin").exists()


def test_file_url(tmp_path):
    data = payload(3000)
    source = tmp_path / "source dir" / "weights.pth"
    source.parent.mkdir()
    source.write_bytes(data)
    dest = tmp_path / "copy.pth"
    download_file(source.as_uri(), dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data


def test_network_errors_name_url_and_manual_route(serve, tmp_path):
    base, _ = serve()
    with pytest.raises(InputError) as info:
        download_file(f"{base}/missing.bin", tmp_path / "missing.bin", progress=False)
    assert f"{base}/missing.bin" in str(info.value) and "--source" in str(info.value)

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(InputError, match=re.escape(url) + ".*--source"):
        download_file(url, tmp_path / "x.bin", progress=False)
    with pytest.raises(InputError, match="nope"):
        download_file((tmp_path / "nope").as_uri(), tmp_path / "y.bin", progress=False)


def test_cached_download_reuses_verified_copy(serve, tmp_path):
    data = payload()
    (serve.root / "weights.pth").write_bytes(data)
    base, server = serve()
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    first = cached_download(f"{base}/weights.pth", sha256=sha, cache_dir=cache)
    second = cached_download(f"{base}/weights.pth", sha256=sha, cache_dir=cache)
    assert first == second == cache_path_for(f"{base}/weights.pth", cache)
    assert first.parent == cache and first.name.endswith("-weights.pth")
    assert first.read_bytes() == data
    assert len(server.requests) == 1

    # A corrupted cached copy fails the check and is fetched again.
    first.write_bytes(b"corrupt")
    assert cached_download(f"{base}/weights.pth", sha256=sha, cache_dir=cache).read_bytes() == data
    assert len(server.requests) == 2


def test_cache_dir_from_environment(serve, tmp_path, monkeypatch):
    (serve.root / "w.pth").write_bytes(b"abc")
    base, server = serve()
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "env cache"))
    assert default_cache_dir() == tmp_path / "env cache"
    path = cached_download(f"{base}/w.pth")
    assert path.parent == tmp_path / "env cache" and path.read_bytes() == b"abc"
    cached_download(f"{base}/w.pth")
    assert len(server.requests) == 1
    monkeypatch.delenv("LGN_CACHE")
    assert default_cache_dir().name == "checkpoints"
    assert os.path.isabs(default_cache_dir())


def test_two_urls_with_one_file_name_are_cached_apart(serve, tmp_path):
    """.../runA/checkpoint.pth and .../runB/checkpoint.pth, and two queries of one path, are
    four files: none is served as another's copy."""
    contents = {"runA": b"weights of run A", "runB": b"weights of run B"}
    for run, data in contents.items():
        (serve.root / run).mkdir()
        (serve.root / run / "checkpoint.pth").write_bytes(data)
    base, server = serve()
    cache = tmp_path / "cache"
    for run, data in contents.items():
        assert cached_download(f"{base}/{run}/checkpoint.pth", cache_dir=cache).read_bytes() == data
    paths = {cached_download(f"{base}/runA/checkpoint.pth?v={v}", cache_dir=cache) for v in (1, 2)}
    assert len(paths) == 2
    assert len(server.requests) == 4
    assert len(set(cache.iterdir())) == 4
    # A second call reuses each copy: the cache is keyed, not shared.
    assert (
        cached_download(f"{base}/runB/checkpoint.pth", cache_dir=cache).read_bytes()
        == (contents["runB"])
    )
    assert len(server.requests) == 4


def test_a_stream_without_content_length_stops_at_the_maximum(serve, tmp_path, monkeypatch):
    (serve.root / "endless.bin").write_bytes(b"")
    base, _ = serve(stream_without_length=0.0)
    dest = tmp_path / "endless.bin"
    limit = 1_000_000
    with pytest.raises(InputError) as info:
        download_file(f"{base}/endless.bin", dest, progress=False, max_bytes=limit)
    message = str(info.value)
    assert "1.0 MB" in message and "LGN_MAX_DOWNLOAD_MB" in message and "\n" not in message
    assert not dest.exists() and not (tmp_path / "endless.bin.part").exists()

    # The same bound from the environment, for the command lines and torch.hub.
    monkeypatch.setenv("LGN_MAX_DOWNLOAD_MB", "0.5")
    with pytest.raises(InputError, match="500,000 bytes"):
        cached_download(f"{base}/endless.bin", cache_dir=tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())
    monkeypatch.setenv("LGN_MAX_DOWNLOAD_MB", "lots")
    with pytest.raises(InputError, match="LGN_MAX_DOWNLOAD_MB=lots must be a positive number"):
        download_file(f"{base}/endless.bin", dest, progress=False)


def test_a_known_size_bounds_the_download(serve, tmp_path):
    (serve.root / "endless.bin").write_bytes(b"")
    base, _ = serve(stream_without_length=0.0)
    with pytest.raises(
        InputError, match="went past 200,000 bytes, more than the expected 200,000 bytes"
    ):
        download_file(f"{base}/endless.bin", tmp_path / "e.bin", progress=False, size=200_000)
    # A Content-Length beyond the bound is refused before any byte is read.
    (serve.root / "big.bin").write_bytes(payload(300_000))
    base, _ = serve()
    with pytest.raises(InputError, match="is 300,000 bytes, more than the maximum 100,000 bytes"):
        download_file(f"{base}/big.bin", tmp_path / "big.bin", progress=False, max_bytes=100_000)
    assert not (tmp_path / "big.bin.part").exists()


def test_a_trickling_download_ends_at_the_time_limit(serve, tmp_path):
    (serve.root / "slow.bin").write_bytes(b"")
    base, _ = serve(stream_without_length=0.05)  # far below any size bound, forever
    started = time.monotonic()
    with pytest.raises(InputError, match="took longer than .*LGN_MAX_DOWNLOAD_MINUTES"):
        download_file(f"{base}/slow.bin", tmp_path / "slow.bin", progress=False, max_seconds=0.5)
    assert time.monotonic() - started < 10
    assert (tmp_path / "slow.bin.part").exists()  # kept: a later run may resume it


def test_a_known_size_beyond_the_free_space_is_refused_first(serve, tmp_path, monkeypatch):
    (serve.root / "blob.bin").write_bytes(payload(100_000))
    base, server = serve()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("common.download.shutil.disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(InputError, match=r"needs 100,000 bytes but .* has 1,000 bytes free"):
        download_file(f"{base}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert (
        not (tmp_path / "blob.bin.part").exists() or not (tmp_path / "blob.bin.part").read_bytes()
    )


@pytest.mark.parametrize("tail", ["..", "%00", "a%00b.pth", "%2e%2e", "."])
def test_odd_url_names_get_a_plain_cache_file(serve, tmp_path, tail):
    base, _ = serve()
    url = f"{base}/dir/{tail}"
    path = cache_path_for(url, tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and "\0" not in path.name
    assert not path.name.endswith(".") and "/" not in path.name
    message = str(one_line(lambda: cached_download(url, cache_dir=tmp_path / "cache")))
    assert url in message


def test_an_unusable_destination_name_is_one_line(tmp_path):
    for dest in (tmp_path / "a\0b", tmp_path / ".."):
        with pytest.raises(InputError, match="not a usable file name"):
            download_file("http://127.0.0.1:9/x", dest, progress=False)


def one_line(call) -> InputError:
    with pytest.raises(InputError) as info:
        call()
    assert "\n" not in str(info.value)
    return info.value


def test_a_damaged_cached_download_names_the_file_to_delete(serve, tmp_path, monkeypatch):
    from model.pretrained import load_weights

    (serve.root / "checkpoint.pth").write_bytes(b"not a checkpoint")
    base, _ = serve()
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "cache"))
    url = f"{base}/checkpoint.pth"
    message = str(one_line(lambda: load_weights(url)))
    assert message.endswith(
        f"cached download of {url}: delete {cache_path_for(url)} to download it again"
    )


def test_a_file_url_with_a_nul_byte_is_one_line(tmp_path):
    from model.pretrained import local_path, resolve_checkpoint

    url = (tmp_path / "a").as_uri() + "%00b.pth"
    for call in (lambda: local_path(url), lambda: resolve_checkpoint(url, tmp_path / "cache")):
        assert "NUL byte (%00)" in str(one_line(call))
