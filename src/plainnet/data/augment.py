"""Batched data augmentation and normalisation as plain tensor ops (CPU and CUDA alike).

The augmentation of a whole epoch is drawn up front on the CPU (`draw_augmentation`) from a
generator the caller seeds, so a run resumed mid-epoch replays exactly the same shifts and flips;
`augment_batch` then applies a slice of that plan on whatever device the images live on, with one
gather and no per-image Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from plainnet.errors import UserError

AUGMENTATIONS = ("shift", "padcrop", "none")

#: "shift": largest shift as a fraction of the image side (the authors' 15 %: 4.8 px at 32 px).
SHIFT_FRACTION = 0.15
#: "padcrop": zero padding in pixels on every side (the common pad-4-and-crop recipe).
PAD = 4


def _check_kind(kind: str) -> None:
    if kind not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")


def draw_augmentation(
    n: int, kind: str, size: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the random parameters for `n` images of `size` = (H, W) pixels.

    Returns `shifts`, int64 (n, 2) holding (dy, dx) in pixels, and `flips`, bool (n,), both on
    the CPU. Deterministic given the generator's state: shifts are drawn first, then flips.

    - "shift": dy and dx uniform in [-0.15 * side, 0.15 * side], rounded to the nearest integer
      (so -5..5 at 32 px, the ends less often), flip with probability 0.5.
    - "padcrop": dy and dx uniform integers in [-4, 4], flip with probability 0.5.
    - "none": zeros and no flips; the generator is not advanced.
    """
    _check_kind(kind)
    if kind == "none":
        return torch.zeros(n, 2, dtype=torch.int64), torch.zeros(n, dtype=torch.bool)
    if kind == "shift":
        max_shift = torch.tensor([size[0], size[1]], dtype=torch.float64) * SHIFT_FRACTION
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        shifts = torch.round((2 * u - 1) * max_shift).to(torch.int64)
    else:
        shifts = torch.randint(-PAD, PAD + 1, (n, 2), generator=generator, dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5
    return shifts, flips


def augment_batch(
    images: torch.Tensor, kind: str, shifts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Shift (then flip) a batch of uint8 images (B, C, H, W) on their own device.

    Shift convention: with (dy, dx) = shifts[b], output pixel (i, j) is input pixel
    (i + dy, j + dx), i.e. (dy, dx) is the offset of the crop window and the content moves by
    (-dy, -dx). Pixels that fall outside the image are the nearest edge pixel for "shift"
    (nearest-neighbour resampling with edge replication) and 0 for "padcrop" (zero padding).
    The horizontal flip is applied after the shift. `shifts` (B, 2) int64 and `flips` (B,) bool
    must be on the images' device. "none" returns `images` itself, not a copy.
    """
    _check_kind(kind)
    if kind == "none":
        return images
    b, c, h, w = images.shape
    if shifts.shape != (b, 2) or flips.shape != (b,):
        raise ValueError(f"shifts must be ({b}, 2) and flips ({b},), got {tuple(shifts.shape)}")
    device = images.device
    rows = torch.arange(h, device=device) + shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=device) + shifts[:, 1:]  # (B, W)
    # Flipping after the shift is reading the shifted columns back to front.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    inside = None
    if kind == "padcrop":
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    rows = rows.clamp(0, h - 1)
    cols = cols.clamp(0, w - 1)
    # One flat gather over H*W per image; the same index serves every channel.
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, index).reshape(b, c, h, w)
    if inside is not None:
        out = out * inside[:, None].to(out.dtype)
    return out


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-channel standardisation `(x - mean) / std` of uint8 images (..., C, H, W), or of
    floats on the same 0-255 scale (`plainnet.models.weights.Preprocess` passes both).

    `mean` and `std` are on the 0-255 scale (as in `ImageData`). The arithmetic is done in
    float32 (bf16 would round the 0-255 values before the subtraction) and the result cast to
    `dtype`; the input's memory format (e.g. channels_last) is kept.
    """
    device = images_uint8.device
    # Tensors already on the device skip the host-to-device copy (a sync on CUDA) every batch.
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    x = images_uint8.to(torch.float32)  # preserves the memory format
    out = torch.empty_like(x)  # ditto; pins the layout of the result to the input's
    torch.sub(x, m, out=out)
    out.div_(s)
    return out.to(dtype)
