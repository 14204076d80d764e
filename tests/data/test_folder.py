"""Image-folder data sets: decoding, class folders, the decoded-image cache, bad input."""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from plainnet.data import folder, load_dataset
from plainnet.errors import UserError

CLASSES = ["cat", "dog", "emu"]


def _image(label: int, i: int, size=(8, 6)) -> np.ndarray:
    """A distinct uint8 (H, W, 3) image per (label, i); size is (W, H) like PIL."""
    w, h = size
    rng = np.random.default_rng(100 * label + i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _build(root, n_train=4, n_test=2, size=(8, 6)):
    """root/{train,test}/<class>/NN.png (lossless), returns the expected arrays (N, 3, H, W)."""
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = _image(label, i + (0 if split == "train" else 50), size)
                PIL.Image.fromarray(img).save(folder / f"{i:02d}.png")
                images.append(img.transpose(2, 0, 1))
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("PLAINNET_CACHE", str(path))
    return path


@pytest.fixture
def tiny_folder(tmp_path):
    root = tmp_path / "tiny"
    return root, _build(root)


def test_folder_loads_pixels_labels_classes(tiny_folder, cache):
    root, expected = tiny_folder
    data = load_dataset("folder", root)
    assert data.name == "folder:tiny" and data.classes == CLASSES and data.num_classes == 3
    assert data.train_images.shape == (12, 3, 6, 8) and data.test_images.shape == (6, 3, 6, 8)
    assert data.train_images.dtype == torch.uint8 and data.train_images.is_contiguous()
    np.testing.assert_array_equal(data.train_images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(data.train_labels.numpy(), expected["train"][1])
    np.testing.assert_array_equal(data.test_images.numpy(), expected["test"][0])
    np.testing.assert_array_equal(data.test_labels.numpy(), expected["test"][1])
    x = expected["train"][0].astype(np.float64)
    np.testing.assert_allclose(data.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(data.std, x.std(axis=(0, 2, 3)), rtol=1e-12)
    assert data.test_coarse_labels is None


def test_jpeg_grayscale_and_case_insensitive_suffix(tiny_folder, cache):
    root, _ = tiny_folder
    y, x, c = np.meshgrid(np.arange(6), np.arange(8), np.arange(3), indexing="ij")
    smooth = (40 + 50 * c + 10 * x + 5 * y).astype(np.uint8)  # JPEG keeps smooth images well
    PIL.Image.fromarray(smooth).save(root / "train" / "cat" / "zz.JPG", quality=95)
    gray = _image(1, 9)[:, :, 0]
    PIL.Image.fromarray(gray).save(root / "train" / "dog" / "zz.jpeg")  # mode "L" -> RGB
    (root / "train" / "dog" / "notes.txt").write_text("ignored")
    (root / "train" / "dog" / ".hidden.jpg").write_text("ignored: hidden")
    data = load_dataset("folder", root)
    assert data.train_images.shape == (14, 3, 6, 8)
    assert data.train_labels.tolist() == [0] * 5 + [1] * 5 + [2] * 4
    jpg = data.train_images[4].numpy().transpose(1, 2, 0).astype(int)
    assert np.abs(jpg - smooth).mean() < 6  # lossy, but the same picture
    g = data.train_images[9]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def test_cache_written_and_used(tiny_folder, cache, monkeypatch):
    root, _ = tiny_folder
    first = load_dataset("folder", root)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = load_dataset("folder", root)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert second.classes == CLASSES and second.mean == first.mean


def _count_decodes(monkeypatch):
    calls = []
    real_open = PIL.Image.open

    def counting_open(*args, **kwargs):
        calls.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    return calls


def test_touching_a_file_invalidates_cache(tiny_folder, cache, monkeypatch):
    root, _ = tiny_folder
    load_dataset("folder", root)
    calls = _count_decodes(monkeypatch)
    load_dataset("folder", root)
    assert calls == []
    path = root / "test" / "emu" / "01.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_dataset("folder", root)
    assert len(calls) == 18  # everything decoded again
    assert len(list(cache.iterdir())) == 1  # replaced, not added


def test_adding_a_file_invalidates_cache(tiny_folder, cache):
    root, _ = tiny_folder
    assert load_dataset("folder", root).train_images.shape[0] == 12
    PIL.Image.fromarray(_image(2, 7)).save(root / "train" / "emu" / "new.png")
    data = load_dataset("folder", root)
    assert data.train_images.shape[0] == 13
    np.testing.assert_array_equal(data.train_images[-1].numpy(), _image(2, 7).transpose(2, 0, 1))


def test_corrupt_cache_is_rebuilt(tiny_folder, cache):
    root, expected = tiny_folder
    load_dataset("folder", root)
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    data = load_dataset("folder", root)
    np.testing.assert_array_equal(data.train_images.numpy(), expected["train"][0])
    assert cache_file.stat().st_size > 1000  # rewritten


def test_unwritable_cache_only_warns(tiny_folder, tmp_path, monkeypatch):
    root, _ = tiny_folder
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PLAINNET_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the decoded-image cache"):
        data = load_dataset("folder", root)
    assert data.train_images.shape[0] == 12


def test_mismatched_sizes_name_the_file(tiny_folder, cache):
    root, _ = tiny_folder
    odd = root / "train" / "dog" / "02.png"
    PIL.Image.fromarray(_image(1, 2, size=(9, 6))).save(odd)
    with pytest.raises(UserError, match="one size") as e:
        load_dataset("folder", root)
    assert str(odd) in str(e.value)


def test_test_split_size_must_match_train(tiny_folder, cache):
    root, _ = tiny_folder
    odd = root / "test" / "cat" / "00.png"
    PIL.Image.fromarray(_image(0, 0, size=(4, 4))).save(odd)
    with pytest.raises(UserError, match=str(odd)):
        load_dataset("folder", root)


def test_non_image_with_jpg_suffix_names_it(tiny_folder, cache):
    root, _ = tiny_folder
    bad = root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"GIF89a or really just text")
    with pytest.raises(UserError, match="not a readable PNG or JPEG") as e:
        load_dataset("folder", root)
    assert str(bad) in str(e.value)


def test_missing_test_split(tmp_path, cache):
    root = tmp_path / "d"
    (root / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no test/ folder"):
        load_dataset("folder", root)


def test_class_folders_must_match(tiny_folder, cache):
    root, _ = tiny_folder
    (root / "test" / "emu").rename(root / "test" / "gnu")
    with pytest.raises(UserError, match=r"only in train: \['emu'\], only in test: \['gnu'\]"):
        load_dataset("folder", root)


def test_empty_class_folder(tiny_folder, cache):
    root, _ = tiny_folder
    (root / "train" / "fox").mkdir()
    (root / "test" / "fox").mkdir()
    with pytest.raises(UserError, match="fox: no images"):
        load_dataset("folder", root)


def test_no_class_folders_and_no_folder(tmp_path, cache):
    (tmp_path / "e" / "train").mkdir(parents=True)
    (tmp_path / "e" / "test").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_dataset("folder", tmp_path / "e")
    with pytest.raises(UserError, match="no such folder"):
        load_dataset("folder", tmp_path / "missing")
    with pytest.raises(UserError, match="needs --data-dir"):
        load_dataset("folder")


@pytest.mark.slow
def test_real_cifar10_jpeg(cifar10_jpeg_data):
    data = cifar10_jpeg_data
    assert data.name == "folder:cifar10-jpeg"
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert data.classes[:3] == ["airplane", "automobile", "bird"] and data.num_classes == 10
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    # Published statistics of these JPEGs (shared/data/README.md), to 1e-3 relative.
    np.testing.assert_allclose(np.array(data.mean) / 255, [0.4913, 0.4821, 0.4465], rtol=1e-3)
    np.testing.assert_allclose(np.array(data.std) / 255, [0.2452, 0.2428, 0.2606], rtol=1e-3)


# ---- image modes ----


def _replace(root, name, img, **save):
    """Replace train/cat/<name> (any Pillow image); returns its path."""
    path = root / "train" / "cat" / name
    img.save(path, **save)
    return path


def _decoded(data, index) -> np.ndarray:
    return data.train_images[index].numpy().transpose(1, 2, 0).astype(int)


def test_sixteen_bit_grey_png_keeps_its_values(tiny_folder, cache):
    root, _ = tiny_folder
    ramp = (np.arange(48, dtype=np.uint32).reshape(6, 8) * 1365).astype(np.uint16)  # 0..64155
    ramp[0, :3] = [257 * 200, 65535, 255]  # an 8-bit value saved as 16 bits; white; below 256
    im = PIL.Image.fromarray(ramp)
    assert im.mode == "I;16"
    path = _replace(root, "00.png", im)
    assert PIL.Image.open(path).mode == "I;16"
    data = load_dataset("folder", root)
    expected = (ramp >> 8).astype(int)
    assert expected[0, :3].tolist() == [200, 255, 0]
    for c in range(3):
        np.testing.assert_array_equal(_decoded(data, 0)[:, :, c], expected)


def test_a_cache_decoded_by_an_older_plainnet_is_rebuilt(tiny_folder, cache, monkeypatch):
    root, _ = tiny_folder
    ramp = (np.arange(48, dtype=np.uint32).reshape(6, 8) * 1365).astype(np.uint16)
    _replace(root, "00.png", PIL.Image.fromarray(ramp))
    with monkeypatch.context() as m:  # plainnet before 16-bit images were scaled: clipped
        m.setattr(folder, "CACHE_VERSION", 1)
        m.setattr(folder, "_to_rgb", lambda path, im: np.asarray(im.convert("RGB")))
        assert (load_dataset("folder", root).train_images[0] == 255).float().mean() > 0.9
    np.testing.assert_array_equal(_decoded(load_dataset("folder", root), 0)[:, :, 0], ramp >> 8)


def test_alpha_palette_bilevel_and_cmyk_images(tiny_folder, cache):
    root, _ = tiny_folder
    rgba = np.dstack([_image(0, 0), np.arange(48, dtype=np.uint8).reshape(6, 8) * 5])
    _replace(root, "00.png", PIL.Image.fromarray(rgba))  # RGBA: alpha dropped
    palette = PIL.Image.new("P", (8, 6))
    palette.putpalette([0, 0, 0, 250, 10, 20, 30, 240, 50])
    palette.putpixel((1, 0), 1)
    palette.putpixel((2, 0), 2)
    _replace(root, "01.png", palette, transparency=bytes([0, 128, 255]))  # P, alpha per entry
    _replace(root, "02.png", PIL.Image.new("1", (8, 6), 1))  # bilevel: white
    _replace(root, "03.jpg", PIL.Image.new("CMYK", (8, 6), (255, 0, 0, 0)), quality=95)  # cyan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Palette images with Transparency" warning
        data = load_dataset("folder", root)
    np.testing.assert_array_equal(_decoded(data, 0), rgba[:, :, :3])
    assert _decoded(data, 1)[0, :3].tolist() == [[0, 0, 0], [250, 10, 20], [30, 240, 50]]
    assert (_decoded(data, 2) == 255).all()
    assert np.abs(_decoded(data, 3) - [0, 255, 255]).max() <= 2


@pytest.mark.parametrize(
    ("array", "mode"),
    [(np.zeros((6, 8), np.int32), "I"), (np.zeros((6, 8), np.float32), "F")],
)
def test_modes_without_an_8_bit_scale_are_refused(array, mode):
    im = PIL.Image.fromarray(array)
    assert im.mode == mode
    with pytest.raises(UserError, match=f"^x.png: image mode {mode} is not supported"):
        folder._to_rgb("x.png", im)


def test_a_tiff_named_png_is_refused(tiny_folder, cache):
    root, _ = tiny_folder
    path = _replace(root, "00.png", PIL.Image.fromarray(np.ones((6, 8), np.float32)), format="TIFF")
    with pytest.raises(UserError) as e:
        load_dataset("folder", root)
    assert str(e.value) == f"{path}: not a readable PNG or JPEG image"


# ---- sizes, checked before decoding ----


def _record_allocations(monkeypatch):
    sizes = []
    real_empty = np.empty

    def empty(shape, *args, **kwargs):
        sizes.append(int(np.prod(shape)))
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", empty)
    return sizes


def test_a_huge_first_image_is_named_before_anything_is_allocated(tiny_folder, cache, monkeypatch):
    root, _ = tiny_folder
    big = _replace(root, "00.png", PIL.Image.new("1", (4000, 4000)))  # 2 KB on disk
    sizes = _record_allocations(monkeypatch)
    with pytest.raises(UserError) as e:
        load_dataset("folder", root)
    assert str(e.value).startswith(f"{big}: image is 4000x4000 pixels, more than the 1024")
    assert max(sizes, default=0) < 1 << 20


def test_an_odd_first_image_is_the_one_named(tiny_folder, cache, monkeypatch):
    root, _ = tiny_folder
    odd = _replace(root, "00.png", PIL.Image.new("RGB", (40, 30)))
    sizes = _record_allocations(monkeypatch)
    with pytest.raises(UserError) as e:
        load_dataset("folder", root)
    assert str(e.value).startswith(f"{odd}: image is 40x30 pixels but the others are 8x6")
    assert max(sizes, default=0) <= 12 * 6 * 8 * 3  # allocated at the common size only


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds (almost) no data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 100_000])  # under and over Pillow's bomb limit
def test_a_decompression_bomb_is_one_line(tiny_folder, cache, side):
    root, _ = tiny_folder
    bomb = root / "train" / "dog" / "01.png"
    bomb.write_bytes(_png_header_only(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(UserError) as e:
            load_dataset("folder", root)
    assert str(e.value).startswith(f"{bomb}: image ") and "\n" not in str(e.value)
    assert "too large" in str(e.value) or "more than the 1024" in str(e.value)


# ---- error messages ----


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_image_errors_name_the_file_not_a_memory_buffer(tiny_folder, cache, content):
    root, _ = tiny_folder
    bad = root / "train" / "emu" / "02.png"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if content == "garbage" else data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_dataset("folder", root)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: not a readable PNG or JPEG image")
    assert "BytesIO" not in msg and " at 0x" not in msg and "\n" not in msg


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_folder_that_is_a_link_loop_is_named(tiny_folder, cache, split):
    """A link to itself, or two links to each other, is neither skipped nor "no images"."""
    root, _ = tiny_folder
    os.symlink("fox", root / split / "fox")
    with pytest.raises(UserError) as err:
        load_dataset("folder", root)
    assert str(err.value) == f"{root / split / 'fox'}: a symbolic link loop: fix or remove the link"
    (root / split / "fox").unlink()
    os.symlink("gnu", root / split / "fox")
    os.symlink("fox", root / split / "gnu")
    with pytest.raises(UserError, match=r"/fox: a symbolic link loop: fix or remove the link$"):
        load_dataset("folder", root)
