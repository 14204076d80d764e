"""`DeviceLoader`: each epoch's batches from its plan, on the device, from any step."""

from __future__ import annotations

import torch

from plainnet.data import DeviceLoader, augment_batch, epoch_plan


def loader(n: int = 50, batch: int = 8, seed: int = 4, rank: int = 0) -> DeviceLoader:
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(251).to(torch.uint8)
    labels = torch.arange(n) % 7
    return DeviceLoader(
        images.view(n, 3, 4, 4), labels, batch_size=batch, augment="shift", seed=seed, rank=rank
    )


def test_batches_follow_the_epoch_plan():
    data = loader()
    data.start_epoch(3)
    order, shifts, flips = epoch_plan(4, 3, 0, 50, "shift", (4, 4))
    for b in range(50 // 8):
        images, labels, s, f = data.next_batch()
        idx = order[b * 8 : (b + 1) * 8]
        assert torch.equal(images, data.images[idx]) and torch.equal(labels, idx % 7)
        assert torch.equal(s, shifts[idx]) and torch.equal(f, flips[idx])
    assert data.position == 6
    # The plan is a function of (seed, epoch, rank): another epoch or rank, another plan.
    assert not torch.equal(order, epoch_plan(4, 4, 0, 50, "shift", (4, 4))[0])
    assert not torch.equal(order, epoch_plan(4, 3, 1, 50, "shift", (4, 4))[0])


def test_resuming_mid_epoch_gives_the_same_batches():
    straight, resumed = loader(), loader()
    straight.start_epoch(1)
    batches = [straight.next_batch() for _ in range(5)]
    resumed.start_epoch(1, first=3)
    for expected in batches[3:]:
        for a, b in zip(resumed.next_batch(), expected, strict=True):
            assert torch.equal(a, b)


def test_augmentation_of_a_batch_is_the_plans():
    data = loader()
    data.start_epoch(0)
    images, _, shifts, flips = data.next_batch()
    assert augment_batch(images, "shift", shifts, flips).shape == images.shape
    assert shifts.abs().max() <= 1  # 15 % of 4 pixels, rounded
