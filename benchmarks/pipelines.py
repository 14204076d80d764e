"""What benchmarks/throughput.py times: plainnet's training step, K runs one after the other or
in turns on K streams in one process, and the conventional PyTorch CIFAR loop (the fused
design lives in research/fused_pipeline.py).

Every plainnet pipeline steps `plainnet train`'s own step, built by `plainnet.recipe.build_step`
as `plainnet train` builds it, through epochs with `TrainStep.steps`.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plainnet.config import TrainConfig, resolve_switches
from plainnet.data import ImageData, channel_stats
from plainnet.evaluate import predict
from plainnet.models import build_model
from plainnet.recipe import (
    TrainStep,
    build_step,
    param_groups,
    resolved_weight_decay,
    seed_everything,
)
from plainnet.schedules import ScheduledLR, lr_table, paper_schedule

BATCH = 100
EPOCH_IMAGES = 50_000  # a CIFAR training epoch
PAD = 4  # the conventional pipeline's pad-and-crop


def synthetic_data(n_train: int, n_test: int, num_classes: int = 100, seed: int = 0) -> ImageData:
    """Random CIFAR-shaped uint8 images: the speed of either pipeline does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean, std = channel_stats(train)
    return ImageData(
        name="synthetic",
        train_images=train,
        train_labels=torch.randint(0, num_classes, (n_train,), generator=g),
        test_images=test,
        test_labels=torch.randint(0, num_classes, (n_test,), generator=g),
        classes=[str(c) for c in range(num_classes)],
        mean=mean,
        std=std,
    )


class ConventionalCIFAR(Dataset):
    """The usual CIFAR ``Dataset``: HWC uint8 numpy images, transformed one image at a time.

    Training: zero-pad by 4, random 32x32 crop, horizontal flip with probability 0.5 (the
    torchvision ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``); then ``ToTensor``
    (CHW float in [0, 1]) and ``Normalize(mean / 255, std / 255)``. Random numbers come from
    torch's generator, which the DataLoader seeds per worker.
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std, train: bool):
        self.images, self.labels, self.train = images_hwc, labels, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) / 255

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.train:
            h, w = img.shape[:2]
            padded = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)))
            y0, x0 = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
            img = padded[y0 : y0 + h, x0 : x0 + w]
            if torch.rand(()) < 0.5:
                img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, int(self.labels[i])


# ---------------------------------------------------------------- the two pipelines


class Pipeline:
    """A training step and an evaluation pass of one pipeline, ready to be timed.
    ``images_per_step``: the training images one step takes (K batches for K runs)."""

    name: str
    model: nn.Module
    images_per_step = BATCH

    def train_steps(self, n: int) -> None:
        raise NotImplementedError

    def evaluate(self, n: int) -> None:
        raise NotImplementedError


class PlainnetPipeline(Pipeline):
    """`plainnet train`'s step for ``cfg`` (seed ``seed``), built by `build_step` as `plainnet
    train` builds it, stepped through epochs with `TrainStep.steps`, the loop primitive
    `plainnet train` runs, under the SGDR schedule."""

    name = "plainnet"

    def __init__(
        self, model_name: str, data: ImageData, device: torch.device, cfg: TrainConfig,
        seed: int = 0,
    ):  # fmt: skip
        cfg = dataclasses.replace(cfg, model=model_name, seed=seed, batch_size=BATCH)
        self.switches = resolve_switches(cfg, device)
        self.iters = len(data.train_labels) // BATCH
        schedule = paper_schedule("sgdr", self.iters, 1.0)
        rates = lr_table(schedule, schedule.total_iters, device)
        self.start(build_step(cfg, data, device, self.switches, rates), data, device)

    def start(self, step: TrainStep, data: ImageData, device: torch.device) -> None:
        """Time ``step`` from the first batch of epoch 0 (also for the fused research step)."""
        self.step, self.model = step, step.model
        self.mean, self.std = step.mean, step.std
        self.device, self.epoch, self.position = device, 0, 0
        self.test_x = data.test_images.to(device)
        self.step.start_epoch(0, 0, 0)

    def advance(self, n: int) -> None:
        """``n`` steps, across epochs as `plainnet train` starts them; nothing read back."""
        self.model.train()
        while n:
            if self.position == self.iters:
                self.epoch, self.position = self.epoch + 1, 0
                self.step.start_epoch(self.epoch, 0, self.epoch * self.iters)
            k = min(n, self.iters - self.position)
            for _ in self.step.steps(self.position, self.position + k):
                pass
            self.position, n = self.position + k, n - k

    def train_steps(self, n: int) -> None:
        self.advance(n)
        float(self.step.loss_sum)  # the loop's periodic read-back, and the end of the timed work

    def evaluate(self, n: int) -> None:
        logits = predict(
            self.model, self.test_x[:n], self.mean, self.std,
            channels_last=self.switches.channels_last,
        )  # fmt: skip
        float(logits.sum())


class SequentialPipeline(Pipeline):
    """K runs (seeds 0 .. K-1) trained one after the other: a repetition's ``n`` steps of the
    first run, then the second's, and so on, on the default stream. The baseline that K runs
    in one process must beat."""

    kind = "one after another"

    def __init__(self, model_name: str, data: ImageData, device: torch.device, cfg, k: int):
        self.name, self.images_per_step, self.k = f"{self.kind} x{k}", k * BATCH, k
        self.runs = [PlainnetPipeline(model_name, data, device, cfg, seed) for seed in range(k)]
        self.model, self.switches = self.runs[0].model, self.runs[0].switches

    def train_steps(self, n: int) -> None:
        for run in self.runs:
            run.train_steps(n)

    def evaluate(self, n: int) -> None:
        for run in self.runs:
            run.evaluate(n)


class TogetherPipeline(SequentialPipeline):
    """K runs (seeds 0 .. K-1) stepped in turns, as ``--runs-per-process K`` trains them: on
    CUDA each issues its steps on its own stream, so the GPU can overlap them."""

    kind = "together"

    def __init__(self, model_name: str, data: ImageData, device: torch.device, cfg, k: int):
        super().__init__(model_name, data, device, cfg, k)
        cuda = device.type == "cuda"
        self.streams = [torch.cuda.Stream(device) if cuda else None for _ in self.runs]

    def train_steps(self, n: int) -> None:
        for _ in range(n):
            for run, stream in zip(self.runs, self.streams, strict=True):
                with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                    run.advance(1)
        for run in self.runs:
            float(run.step.loss_sum)


class ConventionalPipeline(Pipeline):
    """The loop most PyTorch CIFAR code runs: DataLoader workers, fp32, eager, ``.item()``."""

    name = "conventional"

    def __init__(self, model_name: str, data: ImageData, device: torch.device, workers: int):
        seed_everything(0)
        self.model = build_model(model_name, data.num_classes).to(device)
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, resolved_weight_decay(TrainConfig(model=model_name))),
            lr=0.0,
            momentum=0.9,
        )
        iters = len(data.train_labels) // BATCH
        self.scheduler = ScheduledLR(self.optimizer, paper_schedule("sgdr", iters, 1.0))
        self.device = device

        def loader(images: torch.Tensor, labels: torch.Tensor, train: bool) -> DataLoader:
            hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
            ds = ConventionalCIFAR(hwc, labels.numpy(), data.mean, data.std, train)
            return DataLoader(
                ds,
                batch_size=BATCH,
                shuffle=train,
                drop_last=train,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )

        self.train_loader = loader(data.train_images, data.train_labels, True)
        self.test_loader = loader(data.test_images, data.test_labels, False)
        self._train_iter = iter(self.train_loader)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._train_iter)
        except StopIteration:
            self._train_iter = iter(self.train_loader)
            return next(self._train_iter)

    def train_steps(self, n: int) -> None:
        self.model.train()
        running_loss, correct = 0.0, 0
        for _ in range(n):
            x, y = self._next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.optimizer.step()
            self.scheduler.step()
            running_loss += loss.item()
            correct += (out.argmax(1) == y).sum().item()

    @torch.no_grad()
    def evaluate(self, n: int) -> None:
        self.model.eval()
        seen = 0
        for x, y in self.test_loader:
            out = self.model(x.to(self.device, non_blocking=True))
            (out.argmax(1) == y.to(self.device)).sum().item()
            seen += len(y)
            if seen >= n:
                break


# ---------------------------------------------------------------- measuring
