"""K runs as one grouped network (horizontal fusion, `fused.py`), timed by
``benchmarks/throughput.py --fused K`` against the same K runs trained one after the other.

Research, not product: on a 2-core CPU fusion trained 0.61-0.75x as fast as the K runs one after
the other (docs/speed.md); no command uses it. `FusedStep` is plainnet's `TrainStep` with the
two parts a fused network changes, the forward side (K members' batches stacked along the
channels, one loss per member) and the clipping (per member); the rest of the step (rate
table, fused SGD, counters, CUDA-graph capture) is the product's own.
"""

from __future__ import annotations

import dataclasses

import torch
from pipelines import BATCH, PlainnetPipeline
from research.fused import clip_member_grads_, fuse, member_cross_entropy, stack_inputs

from plainnet.config import resolve_switches
from plainnet.data import DeviceLoader, ImageData, augment_batch, normalize
from plainnet.models import build_model
from plainnet.recipe import ForwardLoss, TrainStep, build_optimizer, seed_everything
from plainnet.schedules import lr_table, paper_schedule


class StackedLoader:
    """K `DeviceLoader`s (one per member and seed) as one: batches stacked, (K, B, ...)."""

    def __init__(self, loaders: list[DeviceLoader]):
        self.loaders, self.augment = loaders, loaders[0].augment
        self.batch_size = sum(loader.batch_size for loader in loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def start_epoch(self, epoch: int, first: int = 0) -> None:
        for loader in self.loaders:
            loader.start_epoch(epoch, first)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        parts = [loader.next_batch() for loader in self.loaders]
        return tuple(torch.stack(t) for t in zip(*parts, strict=True))


class FusedStep(TrainStep):
    """The recipe's step for K members fused into one network: each member's loss and error
    count from its own batch, each member's gradient clipped on its own."""

    def __init__(self, *args, members: int, layout: torch.memory_format, **kwargs):
        self.members, self.layout = members, layout
        super().__init__(*args, **kwargs)

    def forward_fn(self) -> ForwardLoss:
        net, mean, std, k = self.net, self.mean, self.std, self.members
        augment, layout, dtype = self.loader.augment, self.layout, self.switches.amp_dtype

        def forward_loss(images, labels, shifts, flips):  # each (K, B, ...)
            x = augment_batch(
                images.flatten(0, 1), augment, shifts.flatten(0, 1), flips.flatten(0, 1)
            )
            x = normalize(x, mean, std).unflatten(0, (k, -1))
            with torch.autocast(
                mean.device.type, dtype=dtype or torch.float32, enabled=bool(dtype)
            ):
                logits = net(stack_inputs(x, memory_format=layout))  # (B, K, classes)
            losses = member_cross_entropy(logits.float(), labels)
            return losses.sum(), (logits.argmax(2) != labels.t()).sum()

        return forward_loss

    def clip_gradients(self) -> torch.Tensor:
        """Clip each member on its own; count the members clipped."""
        norms = clip_member_grads_(self.params, self.members, self.clip_norm)
        return (norms > self.clip_norm).sum()


class FusedPipeline(PlainnetPipeline):
    """K runs (seeds 0 .. K-1) as one grouped network: K-times larger kernels, each member
    still its own run (per-member loss and clipping)."""

    def __init__(self, model_name: str, data: ImageData, device: torch.device, cfg, k: int):
        self.name, self.images_per_step, self.k = f"fused x{k}", k * BATCH, k
        cfg = dataclasses.replace(cfg, model=model_name)
        self.switches = switches = resolve_switches(cfg, device)
        self.iters = len(data.train_labels) // BATCH
        members = []
        for seed in range(k):
            seed_everything(seed)
            members.append(build_model(model_name, data.num_classes))
        layout = torch.channels_last if switches.channels_last else torch.contiguous_format
        net = fuse(members).to(device, memory_format=layout)
        loaders = [
            DeviceLoader(data.train_images, data.train_labels, batch_size=BATCH,
                         augment=cfg.augment, seed=seed, device=device)
            for seed in range(k)
        ]  # fmt: skip
        schedule = paper_schedule("sgdr", self.iters, 1.0)
        step = FusedStep(
            net, build_optimizer(net, cfg, device), StackedLoader(loaders),
            lr_table(schedule, schedule.total_iters, device),
            mean=torch.tensor(data.mean, device=device), std=torch.tensor(data.std, device=device),
            switches=switches, clip_norm=cfg.clip_norm, members=k, layout=layout,
        )  # fmt: skip
        self.start(step, data, device)

    def evaluate(self, n: int) -> None:
        k = self.model.members
        images = self.test_x[:n].unsqueeze(0).expand(k, -1, -1, -1, -1)
        with torch.no_grad():
            self.model.eval()
            x = normalize(images.flatten(0, 1), self.mean, self.std).unflatten(0, (k, -1))
            float(self.model(stack_inputs(x)).sum())
            self.model.train()
