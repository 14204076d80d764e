"""The training batches, on the device: airbench's `CifarLoader` with an exact resume.

An epoch's plan (the order of this rank's images and every image's shift and flip) is a pure
function of ``(seed, epoch, rank)`` (`epoch_plan`), drawn on the CPU so that every device gets
the same plan. `DeviceLoader` copies it into buffers that live on the device for the whole run
and hands out batch after batch by a device-side position counter: taking a batch is a few
gathers on the device and never asks the host anything, so a training step can be captured as
one CUDA graph and replayed, and a run resumed at step ``k`` of an epoch sees exactly the
batches the uninterrupted run saw.
"""

from __future__ import annotations

import torch

from plainnet.data.augment import draw_augmentation


def epoch_plan(
    seed: int, epoch: int, rank: int, n: int, augment: str, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This epoch's order of the ``n`` local images and their augmentation (shifts (n, 2),
    flips (n,)), a pure function of ``(seed, epoch, rank)``, on the CPU."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)
    order = torch.randperm(n, generator=g)
    shifts, flips = draw_augmentation(n, augment, size, g)
    return order, shifts, flips


class DeviceLoader:
    """This rank's training images (uint8, N x C x H x W) and labels on ``device``, served in
    batches of ``batch_size`` following each epoch's `epoch_plan`.

    ``start_epoch(epoch, first)`` writes the epoch's plan into the device buffers (outside any
    step) and points at batch ``first``; `next_batch` gathers the batch pointed at and moves on,
    on the device: ``window`` holds the next batch's positions in the epoch's order. The buffers are allocated once: their storage
    never changes, as a captured CUDA graph requires. An epoch has ``len(self) // batch_size``
    full batches; the remainder of the shuffled images is left out, as in the authors' code.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        augment: str,
        seed: int,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.images = images.to(device).contiguous()
        self.labels = labels.to(device)
        self.batch_size, self.augment, self.seed, self.rank = batch_size, augment, seed, rank
        n = len(self.labels)
        self.order = torch.zeros(n, dtype=torch.int64, device=device)
        self.shifts = torch.zeros(n, 2, dtype=torch.int64, device=device)
        self.flips = torch.zeros(n, dtype=torch.bool, device=device)
        self.window = torch.arange(batch_size, device=device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> tuple[int, int]:
        return (self.images.shape[-2], self.images.shape[-1])

    def start_epoch(self, epoch: int, first: int = 0) -> None:
        """Load epoch ``epoch``'s plan and point at its batch ``first`` (a resume mid-epoch)."""
        plan = epoch_plan(self.seed, epoch, self.rank, len(self), self.augment, self.size)
        for buffer, values in zip((self.order, self.shifts, self.flips), plan, strict=True):
            buffer.copy_(values)
        start = first * self.batch_size
        self.window.copy_(torch.arange(start, start + self.batch_size))

    @property
    def position(self) -> int:
        """The batch `next_batch` takes next (a read from the device: not inside a step)."""
        return int(self.window[0]) // self.batch_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images uint8, labels, shifts, flips) of the batch pointed at; moves on. Two ops
        beside the gathers: on a GPU every op the host dispatches costs."""
        index = self.order.index_select(0, self.window)
        self.window.add_(self.batch_size)
        return (
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
            self.shifts.index_select(0, index),
            self.flips.index_select(0, index),
        )
