"""Downloads against a local HTTP server (never the internet): checksummed, atomic."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest
from _data_files import MNIST_NAMES, cifar_arrays, mnist_arrays

from pynsm.data import standard
from pynsm.data.cifar import write_cifar_binary
from pynsm.data.download import download_file, extract_members, file_digest
from pynsm.data.idx import write_idx


class _Server:
    """Serves ``files`` (path -> bytes); ``cut`` paths announce more than they send."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in owner.cut:  # a connection lost half-way
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_and_renames(server, tmp_path):
    server.files["/a.bin"] = payload = os.urandom(3 << 20)
    target = tmp_path / "sub" / "a.bin"
    download_file(server.url + "a.bin", target, md5=_md5(payload), progress=False)
    assert target.read_bytes() == payload
    assert file_digest(target, "sha256") == hashlib.sha256(payload).hexdigest()
    assert os.listdir(tmp_path / "sub") == ["a.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.files["/a.bin"] = b"not the file"
    target = tmp_path / "a.bin"
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(server.url + "a.bin", target, sha256="0" * 64, progress=False)
    assert os.listdir(tmp_path) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    server.files["/a.bin"] = payload = os.urandom(1 << 20)
    server.cut.add("/a.bin")
    with pytest.raises(ValueError, match="ended after 524288 of 1048576 bytes"):
        download_file(
            server.url + "a.bin", tmp_path / "a.bin", md5=_md5(payload), progress=False
        )
    assert os.listdir(tmp_path) == []


def test_missing_url_and_no_checksum(server, tmp_path):
    with pytest.raises(OSError):
        download_file(server.url + "none", tmp_path / "a", md5="0" * 32, progress=False)
    with pytest.raises(ValueError, match="needs md5 or sha256"):
        download_file(server.url + "none", tmp_path / "a")
    assert os.listdir(tmp_path) == []


def _gz_idx(array: np.ndarray, tmp_path, name: str) -> bytes:
    path = tmp_path / f"{name}.gz"
    write_idx(path, array)
    return path.read_bytes()


def _serve_mnist(server, tmp_path, monkeypatch) -> None:
    checksums = {}
    for split, n, seed in (("train", 30, 0), ("test", 10, 1)):
        for name, array in zip(MNIST_NAMES[split], mnist_arrays(n, seed)):
            body = _gz_idx(array, tmp_path, name)
            server.files[f"/mnist/{name}.gz"] = body
            checksums[f"{name}.gz"] = _md5(body)
    spec = dataclasses.replace(
        standard.STANDARD_DATASETS["mnist"],
        urls=(server.url + "down/", server.url + "mnist/"),  # a dead mirror first
        checksums=checksums,
    )
    monkeypatch.setitem(standard.STANDARD_DATASETS, "mnist", spec)


def test_mnist_download_into_torchvision_layout(server, tmp_path, monkeypatch):
    _serve_mnist(server, tmp_path / "..", monkeypatch)
    data = tmp_path / "data"
    train, test = standard.load_standard("mnist", data, download=True, progress=False)
    assert (len(train), len(test)) == (30, 10)
    assert sorted(os.listdir(data / "MNIST" / "raw")) == sorted(
        f"{n}.gz" for names in MNIST_NAMES.values() for n in names
    )
    # found the second time: nothing is fetched again
    count = len(server.requests)
    standard.load_standard("mnist", data, download=True, progress=False)
    assert len(server.requests) == count


def test_mnist_download_checksum_mismatch(server, tmp_path, monkeypatch):
    _serve_mnist(server, tmp_path / "..", monkeypatch)
    server.files["/mnist/t10k-labels-idx1-ubyte.gz"] = gzip.compress(b"tampered")
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="checksum mismatch"):
        standard.load_standard("mnist", data, download=True, progress=False)
    left = sorted(os.listdir(data / "MNIST" / "raw"))
    assert "t10k-labels-idx1-ubyte.gz" not in left
    assert not [name for name in left if name.startswith(".")]


def _cifar_archive(tmp_path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
        for k, name in enumerate(names):
            write_cifar_binary(tmp_path / name, *cifar_arrays(2, k))
            body = (tmp_path / name).read_bytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_cifar_download_extracts_only_the_binary_files(server, tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    server.files["/cifar-10-binary.tar.gz"] = archive = _cifar_archive(tmp_path / "src")
    tmp_path = tmp_path / "data"
    spec = dataclasses.replace(
        standard.STANDARD_DATASETS["cifar10"],
        urls=(server.url,),
        checksums={"cifar-10-binary.tar.gz": _md5(archive)},
    )
    monkeypatch.setitem(standard.STANDARD_DATASETS, "cifar10", spec)
    train, test = standard.load_standard(
        "cifar10", tmp_path, download=True, progress=False
    )
    assert (len(train), len(test)) == (10, 2)
    assert (tmp_path / "cifar-10-binary.tar.gz").is_file()


def test_extract_refuses_links_and_escapes(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("d/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ValueError, match="not a regular file"):
        extract_members(archive, ["d/link"], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="refusing"):
        extract_members(archive, ["../x"], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no member"):
        extract_members(archive, ["d/none"], str(tmp_path / "out"))
