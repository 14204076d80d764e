"""Batched augmentation against naive per-image numpy references, and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plainnet.data import (
    AUGMENTATIONS,
    augment_batch,
    channel_stats,
    draw_augmentation,
    normalize,
)
from plainnet.errors import UserError


def _images(b=16, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _reference(img: np.ndarray, kind: str, dy: int, dx: int, flip: bool) -> np.ndarray:
    """Naive one-image version: pad (edge or zeros), slice the shifted window, then flip."""
    p = max(abs(dy), abs(dx), 1)
    mode = "edge" if kind == "shift" else "constant"
    padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode=mode)
    h, w = img.shape[1:]
    out = padded[:, p + dy : p + dy + h, p + dx : p + dx + w]
    return out[:, :, ::-1] if flip else out


def test_none_is_identity():
    x = _images()
    shifts, flips = draw_augmentation(16, "none", (32, 32), torch.Generator().manual_seed(0))
    assert shifts.abs().sum() == 0 and not flips.any()
    assert torch.equal(augment_batch(x, "none", shifts, flips), x)


@pytest.mark.parametrize("kind", ["shift", "padcrop"])
def test_zero_shift_no_flip_is_identity_and_flip_is_torch_flip(kind):
    x = _images()
    zero = torch.zeros(16, 2, dtype=torch.int64)
    assert torch.equal(augment_batch(x, kind, zero, torch.zeros(16, dtype=torch.bool)), x)
    flipped = augment_batch(x, kind, zero, torch.ones(16, dtype=torch.bool))
    assert torch.equal(flipped, torch.flip(x, dims=[3]))


def test_known_shift_on_ramp_replicates_edges():
    h, w = 6, 8
    ramp = (10 * torch.arange(h)[:, None] + torch.arange(w)[None, :]).to(torch.uint8)
    x = ramp.expand(1, 3, h, w).contiguous()
    out = augment_batch(x, "shift", torch.tensor([[2, -3]]), torch.tensor([False]))[0, 0]
    # Output (i, j) reads input (clamp(i + 2), clamp(j - 3)).
    for i in range(h):
        for j in range(w):
            assert out[i, j] == 10 * min(i + 2, h - 1) + max(j - 3, 0)
    assert out[0].tolist() == [20, 20, 20, 20, 21, 22, 23, 24]
    assert out[-1].tolist() == [50, 50, 50, 50, 51, 52, 53, 54]


def test_padcrop_fills_zeros():
    x = torch.full((1, 3, 4, 4), 7, dtype=torch.uint8)
    out = augment_batch(x, "padcrop", torch.tensor([[-1, 2]]), torch.tensor([False]))[0, 0]
    assert out.tolist() == [[0, 0, 0, 0], [7, 7, 0, 0], [7, 7, 0, 0], [7, 7, 0, 0]]


@pytest.mark.parametrize("kind", ["shift", "padcrop"])
@pytest.mark.parametrize("size", [(32, 32), (12, 20)])
def test_batch_matches_per_image_reference(kind, size):
    n = 64
    x = _images(n, *size, seed=3)
    shifts, flips = draw_augmentation(n, kind, size, torch.Generator().manual_seed(5))
    assert flips.any() and not flips.all() and (shifts != 0).any()
    out = augment_batch(x, kind, shifts, flips)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for b in range(n):
        dy, dx = shifts[b].tolist()
        ref = _reference(x[b].numpy(), kind, dy, dx, bool(flips[b]))
        np.testing.assert_array_equal(out[b].numpy(), ref, err_msg=f"image {b}, {dy=} {dx=}")


def test_draw_is_deterministic_and_bounded():
    def draw(seed, kind="shift", n=20000, size=(32, 32)):
        return draw_augmentation(n, kind, size, torch.Generator().manual_seed(seed))

    s1, f1 = draw(1)
    s2, f2 = draw(1)
    s3, _ = draw(2)
    assert torch.equal(s1, s2) and torch.equal(f1, f2) and not torch.equal(s1, s3)
    assert s1.dtype == torch.int64 and s1.shape == (20000, 2) and f1.dtype == torch.bool
    for axis in range(2):  # round(0.15 * 32) = 5: every shift in -5..5, nothing beyond
        assert sorted(s1[:, axis].unique().tolist()) == list(range(-5, 6))
    assert abs(f1.float().mean().item() - 0.5) < 0.02
    # Rounding a uniform on [-4.8, 4.8]: the inner values each have probability 1/9.6.
    assert abs((s1[:, 0] == 0).float().mean().item() - 1 / 9.6) < 0.01
    pc, _ = draw(1, "padcrop")
    assert sorted(pc.flatten().unique().tolist()) == list(range(-4, 5))
    rect, _ = draw(1, size=(32, 20))  # 0.15 * 20 = 3 px across
    assert rect[:, 0].abs().max() == 5 and rect[:, 1].abs().max() == 3


def test_draw_none_does_not_advance_generator():
    g = torch.Generator().manual_seed(0)
    draw_augmentation(10, "none", (32, 32), g)
    assert torch.equal(
        torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(0))
    )


def test_unknown_kind():
    assert AUGMENTATIONS == ("shift", "padcrop", "none")
    with pytest.raises(UserError, match="unknown augmentation"):
        draw_augmentation(1, "cutout", (32, 32), torch.Generator())


def test_normalize_standardises_per_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[:, 1] //= 2  # channels with different statistics
    mean, std = channel_stats(x)
    y = normalize(x, mean, std)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    expected = (x[:, 1].double() - mean[1]) / std[1]
    torch.testing.assert_close(y[:, 1].double(), expected, atol=1e-5, rtol=0)


def test_normalize_keeps_channels_last_and_casts():
    x = _images(4).contiguous(memory_format=torch.channels_last)
    y = normalize(x, (120.0, 110.0, 100.0), (60.0, 61.0, 62.0), dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = (x.float() - torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1)) / torch.tensor(
        [60.0, 61.0, 62.0]
    ).view(3, 1, 1)
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_cuda_matches_cpu(kind):
    x = _images(256)
    shifts, flips = draw_augmentation(256, kind, (32, 32), torch.Generator().manual_seed(0))
    cpu = augment_batch(x, kind, shifts, flips)
    gpu = augment_batch(x.cuda(), kind, shifts.cuda(), flips.cuda())
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    mean, std = (125.0, 122.0, 113.0), (63.0, 62.0, 66.0)
    torch.testing.assert_close(normalize(x.cuda(), mean, std).cpu(), normalize(x, mean, std))
