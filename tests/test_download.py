"""Downloads: Range resume, restart without Range, checksums, file:// URLs, the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from common.download import cached_download, default_cache_dir, download_file, file_sha256
from common.errors import InputError


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, records each request's path and Range header, and optionally honours
    ``Range: bytes=N-`` (206) or cuts the body short (to simulate a dropped connection)."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if server.honour_range and match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
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
    """serve(honour_range=True, truncate_at=None) -> (base_url, server) for tmp_path/'www'."""
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start(honour_range: bool = True, truncate_at: int | None = None):
        handler = functools.partial(RecordingHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
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


def test_resume_uses_range_request(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    base, server = serve(honour_range=True)
    dest = tmp_path / "blob.bin"
    half = len(data) // 2
    (tmp_path / "blob.bin.part").write_bytes(data[:half])
    download_file(f"{base}/blob.bin", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", f"bytes={half}-")]
    assert not (tmp_path / "blob.bin.part").exists()


def test_restart_when_server_ignores_range(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    base, server = serve(honour_range=False)
    dest = tmp_path / "blob.bin"
    # A stale .part that is NOT a prefix of the file: appending to it would corrupt the result.
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)
    download_file(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=1000-")]


def test_dropped_connection_keeps_part_then_resumes(serve, tmp_path):
    data = payload()
    (serve.root / "blob.bin").write_bytes(data)
    base, _ = serve(truncate_at=20_000)
    dest = tmp_path / "blob.bin"
    with pytest.raises(InputError, match=re.escape(f"{base}/blob.bin")):
        download_file(f"{base}/blob.bin", dest, progress=False)
    assert not dest.exists()
    assert (tmp_path / "blob.bin.part").read_bytes() == data[:20_000]

    base, server = serve(honour_range=True)
    download_file(f"{base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/blob.bin", "bytes=20000-")]


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
    assert first == second == cache / "weights.pth"
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
    assert path == tmp_path / "env cache" / "w.pth" and path.read_bytes() == b"abc"
    cached_download(f"{base}/w.pth")
    assert len(server.requests) == 1
    monkeypatch.delenv("LGN_CACHE")
    assert default_cache_dir().name == "checkpoints"
    assert os.path.isabs(default_cache_dir())
