"""The authors' CIFAR ResNets (He et al. 2016, as built in their Keras `SmallResNet`)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from plainnet.models.init import glorot_init, keras_batchnorm


class PadShortcut(nn.Module):
    """Parameter-free shortcut where the shape changes: average pooling with the block's stride,
    then zero channels appended ("option A", with pooling instead of strided subsampling)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra = out_channels - in_channels
        # ceil_mode matches the strided conv's output size on odd inputs, too.
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.pool(x), (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"zero_channels={self.extra}"


class BasicBlock(nn.Module):
    """Post-activation basic block: conv -> BN -> ReLU -> conv -> BN, + shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=bias)
        self.bn1 = keras_batchnorm(nn.BatchNorm2d, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = keras_batchnorm(nn.BatchNorm2d, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: both inputs are fresh tensors that backward does not need (BatchNorm's
        # backward keeps its input, not its output). Saves an allocation of up to 6.5 MB per
        # ReLU at batch 100, about 3 % of a ResNet-110 step on a 2-core CPU.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: a 16-channel stem, three stages of ``n`` basic blocks
    (16, 32, 64 channels, stride 2 at the start of stages 2 and 3), global pooling, FC."""

    def __init__(
        self,
        n: int,
        num_classes: int = 100,
        widths: tuple[int, int, int] = (16, 32, 64),
        bias: bool = True,
        in_channels: int = 3,
    ):
        super().__init__()
        self.depth = 6 * n + 2
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=bias),
                bn=keras_batchnorm(nn.BatchNorm2d, widths[0]),
                relu=nn.ReLU(inplace=True),
            )
        )
        channels = widths[0]
        for s, width in enumerate(widths, start=1):
            blocks = OrderedDict()
            for b in range(1, n + 1):
                stride = 2 if (s > 1 and b == 1) else 1
                blocks[f"block{b}"] = BasicBlock(channels, width, stride, bias)
                channels = width
            self.add_module(f"stage{s}", nn.Sequential(blocks))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(torch.flatten(self.gap(x), 1))

    def decayed_parameters(self) -> list[torch.nn.Parameter]:
        """The tensors the authors' L2 penalty covered: every conv and FC kernel."""
        return [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def cifar_resnet(depth: int, num_classes: int = 100, *, bias: bool = True) -> CifarResNet:
    """A CIFAR ResNet of ``depth = 6n + 2`` trainable layers (20, 32, 44, 56, 110, ...).

    ``bias=True`` keeps the conv biases the authors' Keras model had (1,737,860 trainable
    parameters for ResNet-110 and 100 classes; 1,733,812 without).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 110, ...), got {depth}"
        )
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, bias=bias)


def resnet110(num_classes: int = 100, *, bias: bool = True) -> CifarResNet:
    """The authors' ResNet-110: 18 basic blocks per stage, 109 conv layers + 1 FC."""
    return cifar_resnet(110, num_classes, bias=bias)
