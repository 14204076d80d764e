"""CIFAR loading: official pickle layout, archives, the restricted unpickler, downloads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading

import numpy as np
import pytest
import torch

from plainnet.data import cifar, load_dataset
from plainnet.errors import UserError


def test_cifar100_layout_labels_and_classes(tiny_cifar100, cifar_factory, tmp_path):
    written = cifar_factory.write_cifar100(tmp_path / "again")  # same seed: same arrays
    data = load_dataset("cifar100", tiny_cifar100, download=False)
    assert data.name == "cifar100"
    assert data.train_images.shape == (200, 3, 32, 32) and data.test_images.shape == (
        100,
        3,
        32,
        32,
    )
    assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
    assert data.train_labels.dtype == torch.int64
    # The known image: R=10, G=20, B=30 except red 200 at row 1, column 2.
    img = data.train_images[0]
    assert img[0, 1, 2] == 200 and img[0, 0, 0] == 10 and img[0, 2, 1] == 10
    assert (img[1] == 20).all() and (img[2] == 30).all()
    train_x, train_fine, _ = written["train"]
    test_x, test_fine, test_coarse = written["test"]
    np.testing.assert_array_equal(data.train_images.numpy(), train_x)
    np.testing.assert_array_equal(data.test_images.numpy(), test_x)
    np.testing.assert_array_equal(data.train_labels.numpy(), train_fine)
    np.testing.assert_array_equal(data.test_labels.numpy(), test_fine)
    np.testing.assert_array_equal(data.test_coarse_labels.numpy(), test_coarse)
    assert data.classes == written["fine_names"] and data.num_classes == 100
    assert data.coarse_classes == written["coarse_names"]
    expected_mean = train_x.astype(np.float64).mean(axis=(0, 2, 3))
    expected_std = train_x.astype(np.float64).std(axis=(0, 2, 3))
    np.testing.assert_allclose(data.mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(data.std, expected_std, rtol=1e-12)


def test_cifar10_batches_concatenated(tiny_cifar10, cifar_factory, tmp_path):
    written = cifar_factory.write_cifar10(tmp_path / "again")
    data = load_dataset("cifar10", tiny_cifar10, download=False)
    assert data.name == "cifar10" and data.classes[0] == "airplane" and data.num_classes == 10
    assert data.train_images.shape == (100, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(data.train_images.numpy(), written["train"][0])
    np.testing.assert_array_equal(data.train_labels.numpy(), written["train"][1])
    np.testing.assert_array_equal(data.test_images.numpy(), written["test"][0])
    np.testing.assert_array_equal(data.test_labels.numpy(), written["test"][1])
    assert data.test_coarse_labels is None and data.coarse_classes is None


def test_default_data_dir_from_env(tiny_cifar10, monkeypatch):
    monkeypatch.setenv("PLAINNET_DATA", str(tiny_cifar10))
    assert load_dataset("cifar10", download=False).train_images.shape[0] == 100


def test_missing_data_without_download(tmp_path):
    with pytest.raises(UserError, match=r"put cifar-100-python\.tar\.gz in"):
        load_dataset("cifar100", tmp_path, download=False)


def test_incomplete_folder(tiny_cifar100):
    (tiny_cifar100 / "cifar-100-python" / "test").unlink()
    with pytest.raises(UserError, match="incomplete"):
        load_dataset("cifar100", tiny_cifar100, download=False)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown data set"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------------------------
# Archives


def test_load_from_archive_extracts(tiny_cifar100, cifar_factory, tmp_path):
    data_dir = tmp_path / "only-archive"
    data_dir.mkdir()
    cifar_factory.make_archive(
        tiny_cifar100, "cifar-100-python", data_dir / "cifar-100-python.tar.gz"
    )
    data = load_dataset("cifar100", data_dir, download=False)
    assert data.train_images.shape == (200, 3, 32, 32)
    assert (data_dir / "cifar-100-python" / "meta").is_file()
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "cifar-100-python",
        "cifar-100-python.tar.gz",
    ]


def _evil_archive(path, member: tarfile.TarInfo, payload: bytes = b"x"):
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)


@pytest.mark.parametrize(
    "name", ["../evil", "cifar-10-batches-py/../../evil", "/tmp/plainnet-evil-abs"]
)
def test_archive_path_traversal_refused(tmp_path, name):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _evil_archive(data_dir / "cifar-10-python.tar.gz", tarfile.TarInfo(name))
    with pytest.raises(UserError, match="refusing member"):
        load_dataset("cifar10", data_dir, download=False)
    assert not (tmp_path / "evil").exists()
    assert not (data_dir / "cifar-10-batches-py").exists()  # nothing extracted at all
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_archive_links_and_devices_refused(tmp_path, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.type = kind
    member.linkname = "/etc/passwd"
    _evil_archive(data_dir / "cifar-10-python.tar.gz", member)
    with pytest.raises(UserError, match=r"refusing member 'cifar-10-batches-py/data_batch_1'"):
        load_dataset("cifar10", data_dir, download=False)


def test_archive_corrupt(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", data_dir, download=False)


def test_archive_without_expected_folder(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        m = tarfile.TarInfo("something-else/file")
        m.size = 1
        tar.addfile(m, io.BytesIO(b"x"))
    with pytest.raises(UserError, match="does not contain cifar-10-batches-py"):
        load_dataset("cifar10", data_dir, download=False)


# ---------------------------------------------------------------------------------------------
# The restricted unpickler and content checks


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _replace_train(data_dir, obj, cifar_factory, raw: bytes | None = None):
    path = data_dir / "cifar-100-python" / "train"
    path.write_bytes(raw if raw is not None else cifar_factory.py2_pickle(obj))
    return path


def test_pickle_that_runs_code_is_refused(tiny_cifar100, cifar_factory, tmp_path):
    marker = tmp_path / "MARKER"
    evil = pickle.dumps({b"data": _RunsCode(marker)}, protocol=4)
    path = _replace_train(tiny_cifar100, None, cifar_factory, raw=evil)
    with pytest.raises(UserError, match=r"refusing to load pickle global builtins\.exec") as e:
        load_dataset("cifar100", tiny_cifar100, download=False)
    assert str(path) in str(e.value)
    assert not marker.exists()
    pickle.loads(evil)  # the same bytes through plain pickle do run code: the test is real
    assert marker.exists()


def test_pickle_with_os_system_is_refused(tmp_path):
    import os

    class Sys:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({b"data": Sys()}, protocol=4))
    with pytest.raises(UserError, match="system: not a CIFAR file"):
        cifar.read_pickle(path)


def test_object_dtype_array_is_refused(tiny_cifar100, cifar_factory):
    data = np.empty((2, 3072), dtype=object)
    data[:] = 1
    _replace_train(tiny_cifar100, {b"data": data, b"fine_labels": [0, 1]}, cifar_factory)
    with pytest.raises(UserError, match="refusing numpy dtype object"):
        load_dataset("cifar100", tiny_cifar100, download=False)


def test_python3_pickles_of_arrays_load(tmp_path):
    # A protocol-4 pickle from numpy 2 (numpy._core globals, BINBYTES buffers) is also fine.
    arr = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": arr, b"labels": np.array([3, 4])}, protocol=4))
    d = cifar.read_pickle(path)
    np.testing.assert_array_equal(d[b"data"], arr)


def test_truncated_pickle_names_file(tiny_cifar100):
    path = tiny_cifar100 / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(UserError, match="corrupt or truncated") as e:
        load_dataset("cifar100", tiny_cifar100, download=False)
    assert str(path) in str(e.value)


def test_garbage_file_names_file(tiny_cifar100):
    path = tiny_cifar100 / "cifar-100-python" / "meta"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(UserError) as e:
        load_dataset("cifar100", tiny_cifar100, download=False)
    assert str(path) in str(e.value)


def _good_train(n=4):
    return {
        b"data": np.zeros((n, 3072), dtype=np.uint8),
        b"fine_labels": [0] * n,
        b"coarse_labels": [0] * n,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({b"data": np.zeros((4, 3000), dtype=np.uint8)}, r"shape \(4, 3000\)"),
        ({b"data": np.zeros((4, 3072), dtype=np.int64)}, "not a uint8 array"),
        ({b"data": None}, "not a uint8 array"),
        ({b"fine_labels": [0, 1, 2, 100]}, r"outside \[0, 100\)"),
        ({b"fine_labels": [0, 1, 2, -1]}, r"outside \[0, 100\)"),
        ({b"coarse_labels": [0, 1, 2, 20]}, r"outside \[0, 20\)"),
        ({b"fine_labels": [0, 1, 2]}, "must be 4 integers"),
        ({b"fine_labels": [0.0, 1.0, 2.0, 3.0]}, "must be 4 integers"),
        ({b"fine_labels": None}, "no label list"),
    ],
)
def test_invalid_content(tiny_cifar100, cifar_factory, change, message):
    path = _replace_train(tiny_cifar100, {**_good_train(), **change}, cifar_factory)
    with pytest.raises(UserError, match=message) as e:
        load_dataset("cifar100", tiny_cifar100, download=False)
    assert str(path) in str(e.value)


def test_not_a_dict(tiny_cifar100, cifar_factory):
    _replace_train(tiny_cifar100, [1, 2, 3], cifar_factory)
    with pytest.raises(UserError, match="expected a dict"):
        load_dataset("cifar100", tiny_cifar100, download=False)


def test_meta_wrong_length(tiny_cifar100, cifar_factory):
    meta = {b"fine_label_names": [b"a"] * 99, b"coarse_label_names": [b"b"] * 20}
    (tiny_cifar100 / "cifar-100-python" / "meta").write_bytes(cifar_factory.py2_pickle(meta))
    with pytest.raises(UserError, match="list of 100 class names"):
        load_dataset("cifar100", tiny_cifar100, download=False)


# ---------------------------------------------------------------------------------------------
# Downloads against a loopback HTTP server


@pytest.fixture
def http_dir(tmp_path):
    """Serve a folder on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_cifar10(http_dir, tiny_cifar10, cifar_factory, monkeypatch, md5=None):
    www, base = http_dir
    tar = cifar_factory.make_archive(tiny_cifar10, "cifar-10-batches-py", www / "c10.tar.gz")
    real_md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    entry = cifar.ARCHIVES["cifar10"]
    patched = cifar.Archive(
        **{**entry.__dict__, "url": f"{base}/c10.tar.gz", "md5": md5 or real_md5}
    )
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", patched)


def test_download_verifies_and_extracts(
    http_dir, tiny_cifar10, cifar_factory, monkeypatch, tmp_path
):
    _serve_cifar10(http_dir, tiny_cifar10, cifar_factory, monkeypatch)
    data_dir = tmp_path / "fresh" / "sub"  # created on demand
    data = load_dataset("cifar10", data_dir)
    assert data.train_images.shape == (100, 3, 32, 32)
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


def test_download_wrong_md5_leaves_nothing(
    http_dir, tiny_cifar10, cifar_factory, monkeypatch, tmp_path
):
    _serve_cifar10(http_dir, tiny_cifar10, cifar_factory, monkeypatch, md5="0" * 32)
    data_dir = tmp_path / "fresh"
    with pytest.raises(UserError, match="MD5"):
        load_dataset("cifar10", data_dir)
    assert list(data_dir.iterdir()) == []


def test_download_404(http_dir, monkeypatch, tmp_path):
    _, base = http_dir
    entry = cifar.ARCHIVES["cifar100"]
    patched = cifar.Archive(**{**entry.__dict__, "url": f"{base}/missing.tar.gz"})
    monkeypatch.setitem(cifar.ARCHIVES, "cifar100", patched)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match=r"download failed .*404"):
        load_dataset("cifar100", data_dir)
    assert list(data_dir.iterdir()) == []


def test_download_unreachable(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = cifar.ARCHIVES["cifar100"]
    patched = cifar.Archive(**{**entry.__dict__, "url": f"http://127.0.0.1:{port}/x.tar.gz"})
    monkeypatch.setitem(cifar.ARCHIVES, "cifar100", patched)
    with pytest.raises(UserError) as e:
        load_dataset("cifar100", tmp_path)
    msg = str(e.value)
    assert "CIFAR-100 not found in" in msg and "download failed" in msg
    assert f"put cifar-100-python.tar.gz in {tmp_path}" in msg and "--data-dir" in msg
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_garbage_archive_is_one_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / "cifar-100-python.tar.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as e:
        load_dataset("cifar100", data_dir, download=False)
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot extract (not a tar archive, or a damaged one)")
    assert "delete it and download it again" in msg and "\n" not in msg


def test_damaged_bytes_inside_the_archive_are_caught(tiny_cifar10, cifar_factory, tmp_path):
    """The test images are random, so gzip stores them: flipped bytes there decompress without
    complaint and only the gzip checksum at the end of the stream notices."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tar = cifar_factory.make_archive(
        tiny_cifar10, "cifar-10-batches-py", data_dir / "cifar-10-python.tar.gz"
    )
    raw = bytearray(tar.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    tar.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz: cannot extract \(CRC check"):
        load_dataset("cifar10", data_dir, download=False)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-python.tar.gz"]


def test_archive_missing_files_leaves_nothing_behind(tiny_cifar10, cifar_factory, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tiny_cifar10 / "cifar-10-batches-py" / "test_batch").unlink()
    cifar_factory.make_archive(
        tiny_cifar10, "cifar-10-batches-py", data_dir / "cifar-10-python.tar.gz"
    )
    with pytest.raises(UserError, match=r"not the official archive \(no .*/test_batch\)"):
        load_dataset("cifar10", data_dir, download=False)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-python.tar.gz"]
