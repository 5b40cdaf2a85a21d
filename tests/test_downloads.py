"""Fetching Multi30k: a URL-valued S2S_DATA_MIRROR served from 127.0.0.1, the checksum, the
one line when nothing can be downloaded, and no .part file left behind by a failure."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from s2s.data import corpus
from s2s.errors import DataError

NAME = "val.de.gz"


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'site'``; yields (url, site)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    httpd.shutdown()
    httpd.server_close()


def serve(site: Path, content: bytes, monkeypatch) -> bytes:
    data = gzip.compress(content)
    (site / NAME).write_bytes(data)
    monkeypatch.setitem(corpus.MULTI30K_SHA256, NAME, hashlib.sha256(data).hexdigest())
    return data


def test_a_url_mirror_is_downloaded_and_checked(server, tmp_path, monkeypatch):
    url, site = server
    data = serve(site, b"Ein Satz.\n", monkeypatch)
    monkeypatch.setenv(corpus.MIRROR_ENV, url + "/")
    path = corpus.fetch_multi30k_file(NAME, tmp_path / "data")
    assert path.read_bytes() == data
    assert not list((tmp_path / "data").glob("*.part"))


def test_a_corrupt_download_is_refused_and_removed(server, tmp_path, monkeypatch):
    url, site = server
    serve(site, b"Ein Satz.\n", monkeypatch)
    (site / NAME).write_bytes(gzip.compress(b"tampered\n"))
    monkeypatch.setenv(corpus.MIRROR_ENV, url)
    with pytest.raises(DataError, match=f"{NAME}: SHA-256 mismatch after download"):
        corpus.fetch_multi30k_file(NAME, tmp_path / "data")
    assert not list((tmp_path / "data").iterdir())


def test_a_missing_file_on_the_server_is_one_line_and_leaves_no_part(server, tmp_path,
                                                                      monkeypatch):
    url, _ = server
    monkeypatch.setenv(corpus.MIRROR_ENV, url)
    with pytest.raises(DataError) as info:
        corpus.fetch_multi30k_file(NAME, tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download {url}/{NAME} (") and "HTTP 404" in message
    assert f"set {corpus.MIRROR_ENV}" in message
    assert not list((tmp_path / "data").iterdir())


def test_no_network_is_one_line_naming_the_mirror_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(corpus.MIRROR_ENV, raising=False)
    monkeypatch.setattr(corpus, "MULTI30K_URL", "http://127.0.0.1:9/")  # nothing listens
    with pytest.raises(DataError) as info:
        corpus.fetch_multi30k_file(NAME, tmp_path / "data")
    assert str(info.value).startswith(f"cannot download http://127.0.0.1:9/{NAME} (")
    assert f"without network access, set {corpus.MIRROR_ENV}" in str(info.value)
    assert not list((tmp_path / "data").iterdir())


class Truncating(http.server.BaseHTTPRequestHandler):
    """Promises 100,000 bytes, sends 10 and hangs up: the download fails mid-file."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_cut_short_removes_its_part_file(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        monkeypatch.setenv(corpus.MIRROR_ENV, url)
        with pytest.raises(DataError, match=f"cannot download {url}/{NAME}"):
            corpus.fetch_multi30k_file(NAME, tmp_path / "data")
        assert not list((tmp_path / "data").iterdir())  # no val.de.gz.part left
    finally:
        httpd.shutdown()
        httpd.server_close()
