"""Tests for effcn.data: IDX files, downloads, archive extraction, MNIST-style datasets, registry."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from effcn.data import DATASETS, IDXFolder, MNIST, describe_datasets, get_dataset, list_datasets
from effcn.data.download import download_first, download_url, safe_extract_tar, sha256_bytes, sha256_file
from effcn.data.idx import idx_bytes, read_idx, read_idx_bytes, write_idx
from effcn.errors import DataError, EffcnError

from helpers import tiny_split, write_tiny_mnist

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """Never look at the real cache or $EFFCN_DATA, and never use a proxy for 127.0.0.1."""
    monkeypatch.delenv("EFFCN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def tiny_mnist_class(shas, mirrors=None):
    """MNIST with the tiny files' checksums and optionally other mirrors (never used without download=True)."""
    attrs = {"sha256": dict(shas)}
    if mirrors is not None:
        attrs["mirrors"] = list(mirrors)
    return type("TinyMNIST", (MNIST,), attrs)


# ---- IDX -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "dtype,shape",
    [(np.uint8, (5, 4, 3)), (np.int8, (7,)), (np.int16, (2, 3)), (np.int32, (3, 2, 2, 2)),
     (np.float32, (4, 5)), (np.float64, (6,)), (np.uint8, (0, 28, 28))],
)
def test_idx_roundtrip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a{suffix}", arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.dtype.isnative
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_idx_gzip_detected_by_content_and_deterministic(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "a.gz", arr)
    first = (tmp_path / "a.gz").read_bytes()
    assert first[:2] == b"\x1f\x8b"
    write_idx(tmp_path / "a.gz", arr)  # mtime=0 and no file name: byte-identical
    assert (tmp_path / "a.gz").read_bytes() == first
    os.replace(tmp_path / "a.gz", tmp_path / "a-no-suffix")
    np.testing.assert_array_equal(read_idx(tmp_path / "a-no-suffix"), arr)
    assert read_idx_bytes(tmp_path / "a-no-suffix") == idx_bytes(arr)
    # Big-endian on disk: header 00 00 08 03, dims 3, 4, 5.
    assert idx_bytes(arr)[:16] == bytes.fromhex("00000803 00000003 00000004 00000005")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x01", b"\x00\x00\x0a\x01", b"PK\x03\x04"])
def test_idx_wrong_magic(tmp_path, head):
    path = tmp_path / "bad"
    path.write_bytes(head + b"\x00\x00\x00\x01" + b"\x00")
    with pytest.raises(DataError, match="is not an IDX file") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(data[:1000]))
    with pytest.raises(DataError, match=r"is truncated: expected 7856 bytes after decompression .* found 1000") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    path.write_bytes(data[:6])  # inside the header
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_idx_trailing_bytes(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros((2, 3), dtype=np.int16)) + b"junk")
    with pytest.raises(DataError, match=r"has trailing bytes: expected 24 bytes .* found 28"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "c.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="is truncated"):
        read_idx(path)
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0xFF  # CRC32 in the gzip trailer
    path.write_bytes(bytes(bad_crc))
    with pytest.raises(DataError, match="is not a valid gzip file"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 4)
    with pytest.raises(DataError, match="is not a valid gzip file") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


# ---- MNIST-style datasets ------------------------------------------------------------------


def test_mnist_found_in_root(tmp_path):
    shas = write_tiny_mnist(tmp_path / "data", gz=True)
    cls = tiny_mnist_class(shas)
    train = cls(tmp_path / "data", split="train")
    assert train.root == tmp_path / "data"
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (20,)
    assert len(train) == 20
    img, label = train[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8
    assert isinstance(label, int) and label == 3
    images, _ = tiny_split(20, 0)
    assert torch.equal(train.images, torch.from_numpy(images))
    test = cls(str(tmp_path / "data"), split="test")
    assert len(test) == 10 and test.num_classes == 10


@pytest.mark.parametrize("sub", ["mnist", "MNIST/raw"])
def test_mnist_found_in_subfolders_plain_files(tmp_path, sub):
    shas = write_tiny_mnist(tmp_path / sub, gz=False)
    ds = tiny_mnist_class(shas)(tmp_path, split="test")
    assert ds.root == tmp_path / sub and len(ds) == 10


def test_mnist_checksum_mismatch_names_file(tmp_path):
    shas = write_tiny_mnist(tmp_path, gz=True)
    other, _ = tiny_split(20, seed=99)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", other)
    with pytest.raises(DataError) as e:
        tiny_mnist_class(shas)(tmp_path, split="train")
    msg = str(e.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in msg
    assert "SHA-256" in msg and shas["train-images-idx3-ubyte"][:12] in msg
    assert "download=True" in msg and "data.download=true" in msg


def test_mnist_real_checksums_reject_tiny_files(tmp_path):
    write_tiny_mnist(tmp_path)
    with pytest.raises(DataError, match="corrupt or a different version"):
        MNIST(tmp_path, split="test")


def test_mnist_count_and_size_mismatch(tmp_path):
    write_tiny_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    unchecked = tiny_mnist_class({})
    with pytest.raises(DataError, match="10 images but 9 labels"):
        unchecked(tmp_path, split="test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((9, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="32x32 images, expected 28x28"):
        unchecked(tmp_path, split="test")


def test_mnist_not_found_lists_searched_folders(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError) as e:
        MNIST(tmp_path, split="train")
    msg = str(e.value)
    assert msg.startswith("MNIST train files")
    for d in (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw"):
        assert str(d) in msg
    assert "holds only train-images-idx3-ubyte.gz" in msg
    assert "data.root" in msg and "EFFCN_DATA" in msg and "data.download=true" in msg
    assert isinstance(e.value, EffcnError)


def test_mnist_bad_split(tmp_path):
    with pytest.raises(DataError, match="no split 'val'"):
        MNIST(tmp_path, split="val")


def test_search_dirs_default_and_env(tmp_path, monkeypatch):
    assert MNIST.search_dirs() == [tmp_path / "xdg-cache" / "effcn" / "mnist"]
    monkeypatch.setenv("EFFCN_DATA", str(tmp_path / "d"))
    assert MNIST.search_dirs() == [tmp_path / "d" / "mnist", tmp_path / "d", tmp_path / "xdg-cache" / "effcn" / "mnist"]
    assert MNIST.search_dirs(tmp_path / "r") == [tmp_path / "r", tmp_path / "r" / "mnist", tmp_path / "r" / "MNIST" / "raw"]
    extra = type("WithExtra", (MNIST,), {"extra_dirs": ["/usr/share/datasets/x"]})
    assert extra.search_dirs(tmp_path)[-1] == Path("/usr/share/datasets/x")
    assert extra.search_dirs()[-1] == Path("/usr/share/datasets/x")


@pytest.mark.parametrize("sub", ["mnist", ""])
def test_mnist_effcn_data_lookup(tmp_path, monkeypatch, sub):
    shas = write_tiny_mnist(tmp_path / "d" / sub)
    monkeypatch.setenv("EFFCN_DATA", str(tmp_path / "d"))
    ds = tiny_mnist_class(shas)(split="train")
    assert ds.root == (tmp_path / "d" / sub if sub else tmp_path / "d") and len(ds) == 20


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 16, 12), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 0, 1, 2], dtype=np.int32))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 16, 12), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([4, 0], dtype=np.uint8))
    train = IDXFolder(tmp_path, split="train")
    assert train.image_size == (16, 12) and train.classes == ["0", "1", "2", "3", "4"]
    assert train[5][0].shape == (1, 16, 12) and train[5][1] == 2
    test = IDXFolder(tmp_path, split="test")
    assert test.num_classes == 5 and test.labels.tolist() == [4, 0]
    with pytest.raises(DataError, match="needs root"):
        IDXFolder()
    with pytest.raises(DataError, match="not found in"):
        IDXFolder(tmp_path / "empty")


def test_registry(tmp_path):
    assert DATASETS["mnist"] is MNIST and get_dataset("idx") is IDXFolder
    assert {"mnist", "idx"} <= set(list_datasets())
    with pytest.raises(DataError, match="Unknown dataset 'nope'.*mnist"):
        get_dataset("nope")
    for cls in DATASETS.values():
        assert cls.description and "\n" not in cls.description
    write_tiny_mnist(tmp_path / "mnist")
    info = {d["name"]: d for d in describe_datasets(str(tmp_path))}
    assert info["mnist"]["found"] == str(tmp_path / "mnist")
    assert info["mnist"]["searched"][0] == str(tmp_path)
    assert info["idx"]["found"] is None
    assert {d["name"]: d for d in describe_datasets()}["mnist"]["found"] is None


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST files not present at {REAL_MNIST}")
def test_real_mnist_test_split():
    start = time.perf_counter()
    ds = MNIST(REAL_MNIST, split="test")
    assert time.perf_counter() - start < 2.0
    assert ds.images.shape == (10000, 28, 28) and len(ds) == 10000
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.sum() == 10000
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---- downloads -----------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/short":  # promises 1000 bytes, sends 10
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/srv``; yields (base_url, folder)."""
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _content_check(expected: bytes):
    def check(path):
        if Path(path).read_bytes() != expected:
            raise DataError("content differs")
    return check


def test_sha256_helpers(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_bytes(b"abc") == expected and sha256_file(tmp_path / "f") == expected


def test_download_url(server, tmp_path):
    base, srv = server
    (srv / "f.bin").write_bytes(b"payload")
    dest = download_url(f"{base}/f.bin", tmp_path / "out" / "f.bin", timeout=5)
    assert dest.read_bytes() == b"payload"
    with pytest.raises(DataError, match=r"missing\.bin .*HTTP 404"):
        download_url(f"{base}/missing.bin", tmp_path / "out" / "m.bin", timeout=5)
    with pytest.raises(DataError, match="closed after 10 of 1000 bytes"):
        download_url(f"{base}/short", tmp_path / "out" / "s.bin", timeout=5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.bin"]


def test_download_first_falls_back_to_next_mirror(server, tmp_path):
    base, srv = server
    (srv / "good").write_bytes(b"good")
    (srv / "bad").write_bytes(b"evil")
    dest = tmp_path / "f"
    download_first([f"{base}/missing", f"{base}/bad", f"{base}/good"], dest, check=_content_check(b"good"))
    assert dest.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir() if p.name != "srv" and p.name != "xdg-cache"] == ["f"]


def test_download_first_bad_content_keeps_existing_file(server, tmp_path):
    base, srv = server
    (srv / "bad").write_bytes(b"evil")
    out = tmp_path / "out"
    urls = [f"{base}/bad", f"{base}/missing"]
    with pytest.raises(DataError) as e:
        download_first(urls, out / "f", check=_content_check(b"good"))
    msg = str(e.value)
    assert all(u in msg for u in urls) and "content differs" in msg and "HTTP 404" in msg
    assert f"place it at {out / 'f'}" in msg
    assert list(out.iterdir()) == []  # nothing at the destination, no temporary file
    (out / "f").write_bytes(b"good")
    with pytest.raises(DataError):
        download_first(urls, out / "f", check=_content_check(b"good"))
    assert (out / "f").read_bytes() == b"good" and [p.name for p in out.iterdir()] == ["f"]


def test_mnist_download(server, tmp_path):
    base, srv = server
    shas = write_tiny_mnist(srv / "mirror2", gz=True)
    (srv / "mirror1").mkdir()
    cls = tiny_mnist_class(shas, mirrors=[f"{base}/mirror1/", f"{base}/mirror2"])
    root = tmp_path / "root"
    with pytest.raises(DataError, match="not found"):
        cls(root, split="test")
    ds = cls(root, split="test", download=True)
    assert ds.root == root and len(ds) == 10
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(cls(root, split="test")) == 10  # found now without downloading
    # Without a root, downloads go to the cache folder.
    ds = cls(split="train", download=True)
    assert ds.root == tmp_path / "xdg-cache" / "effcn" / "mnist" and len(ds) == 20


def test_mnist_download_bad_content(server, tmp_path):
    base, srv = server
    shas = write_tiny_mnist(srv, gz=True)
    wrong = dict(shas, **{"t10k-images-idx3-ubyte": "0" * 64})
    cls = tiny_mnist_class(wrong, mirrors=[f"{base}/"])
    root = tmp_path / "root"
    with pytest.raises(DataError) as e:
        cls(root, split="test", download=True)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "SHA-256" in msg and "000000000000" in msg
    assert not (root / "t10k-images-idx3-ubyte.gz").exists()
    assert all(".part-" not in p.name for p in root.iterdir())


# ---- archives ------------------------------------------------------------------------------


def _tar(path: Path, members):
    """Write a tar.gz with ``members``: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x"):
    return tarfile.TarInfo(name), data


def test_safe_extract_tar_ok(tmp_path):
    d = tarfile.TarInfo("batches")
    d.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "ok.tar.gz", [(d, None), _file("batches/data_1", b"abc")])
    names = safe_extract_tar(archive, tmp_path / "out")
    assert names == ["batches", "batches/data_1"]
    assert (tmp_path / "out" / "batches" / "data_1").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil", "/tmp/effcn-evil-abs", "a/../../evil"])
def test_safe_extract_tar_refuses_escaping_paths(tmp_path, name):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("fine"), _file(name)])
    with pytest.raises(DataError, match="outside") as e:
        safe_extract_tar(archive, tmp_path / "out")
    assert repr(name) in str(e.value)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/effcn-evil-abs").exists()
    assert not (tmp_path / "out" / "fine").exists()  # checked before anything is written


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_safe_extract_tar_refuses_links_and_devices(tmp_path, kind):
    info = tarfile.TarInfo("link")
    info.type = kind
    info.linkname = "/etc/passwd"
    archive = _tar(tmp_path / "bad.tar", [(info, None)])
    with pytest.raises(DataError, match="'link'"):
        safe_extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "link").exists()


def test_safe_extract_tar_corrupt(tmp_path):
    (tmp_path / "c.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="corrupt or truncated"):
        safe_extract_tar(tmp_path / "c.tar.gz", tmp_path / "out")


# ---- the neutral base ------------------------------------------------------------------------


def text_digits_class():
    """A LocalDataset of another format (integers as text), to show the base is not IDX's."""
    from effcn.data.base import LocalDataset

    class TextDigits(LocalDataset):
        name, display_name, description = "textdigits", "TextDigits", "digits as text."
        files = {"train": ("images.txt", "labels.txt")}
        classes = [str(i) for i in range(10)]

        @classmethod
        def parse(cls, data, path, what, fix):
            try:
                return np.array([int(v) for v in data.split()], np.int64)
            except ValueError:
                raise DataError(f"{what} {path} is not a list of integers; {fix}.") from None

        def _load(self, folder, split):
            images, labels = (self._read(folder, f) for f in self.files[split])
            return images.astype(np.uint8).reshape(-1, 2, 2), labels

    return TextDigits


def test_the_base_locates_reads_verifies_and_adds_the_channel_for_any_format(tmp_path):
    import hashlib

    cls = text_digits_class()
    (tmp_path / "textdigits").mkdir()
    images, labels = b"1 2 3 4 5 6 7 8", b"3 9"
    (tmp_path / "textdigits" / "images.txt.gz").write_bytes(gzip.compress(images))
    (tmp_path / "textdigits" / "labels.txt").write_bytes(labels)
    cls.sha256 = {"images.txt": hashlib.sha256(images).hexdigest()}  # of the decompressed content
    cls.md5 = {"labels.txt": hashlib.md5(labels).hexdigest()}
    ds = cls(tmp_path, "train")
    assert ds.root == tmp_path / "textdigits" and len(ds) == 2 and ds.num_classes == 10
    image, label = ds[1]
    assert image.shape == (1, 2, 2) and image.dtype == torch.uint8 and label == 9
    assert image.flatten().tolist() == [5, 6, 7, 8]
    cls.md5 = {"labels.txt": "0" * 32}
    with pytest.raises(DataError, match="TextDigits file .*labels.txt is corrupt or a different "
                                        "version: its decompressed MD5 starts with"):
        cls(tmp_path, "train")
    with pytest.raises(DataError, match="TextDigits has no split 'test'"):
        cls(tmp_path, "test")
    with pytest.raises(DataError, match=r"not found in .*; pass root="):
        cls(tmp_path / "elsewhere", "train")


def test_smallnorb_and_cifar10_derive_from_the_base_not_from_idx():
    from effcn.data import CIFAR10, FashionMNIST, SmallNORB
    from effcn.data.base import LocalDataset
    from effcn.data.idx import IDXClassification

    for cls in (SmallNORB, CIFAR10):
        assert issubclass(cls, LocalDataset) and not issubclass(cls, IDXClassification)
    for cls in (MNIST, FashionMNIST, IDXFolder):
        assert issubclass(cls, IDXClassification)
