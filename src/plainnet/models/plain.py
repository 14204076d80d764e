"""Plain-11 and its family: strictly sequential CNNs of conv -> ReLU -> BN units (paper Fig. 1)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from plainnet.models.init import glorot_init, keras_batchnorm

PLAIN11_WIDTHS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128, 128), (256, 256, 256), (512,))


class ConvUnit(nn.Sequential):
    """3x3 'same' convolution with bias, then ReLU, then BatchNorm (the authors' order)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
                relu=nn.ReLU(inplace=True),
                bn=keras_batchnorm(nn.BatchNorm2d, out_channels),
            )
        )


class Plain(nn.Sequential):
    """A strictly sequential CNN: blocks of `ConvUnit`s, 2x2 average pooling between blocks,
    global average pooling, FC -> ReLU -> BN, FC to the classes. No skip connections.

    Printing the model lists ``block1 .. blockN`` with ``unit1 ..`` inside, as in the paper's
    Fig. 1. Any input size works (global pooling).
    """

    def __init__(
        self,
        widths: Sequence[Sequence[int]] = PLAIN11_WIDTHS,
        num_classes: int = 100,
        fc_width: int = 512,
        in_channels: int = 3,
    ):
        if not widths or any(len(block) == 0 for block in widths):
            raise ValueError("widths must be a non-empty list of non-empty blocks")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for b, block in enumerate(widths, start=1):
            if b > 1:
                layers[f"pool{b - 1}"] = nn.AvgPool2d(2)
            units = OrderedDict()
            for u, width in enumerate(block, start=1):
                units[f"unit{u}"] = ConvUnit(channels, width)
                channels = width
            layers[f"block{b}"] = nn.Sequential(units)
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Sequential(
            OrderedDict(
                linear=nn.Linear(channels, fc_width),
                relu=nn.ReLU(inplace=True),
                bn=keras_batchnorm(nn.BatchNorm1d, fc_width),
            )
        )
        layers["classifier"] = nn.Linear(fc_width, num_classes)
        super().__init__(layers)
        self.widths = tuple(tuple(block) for block in widths)
        glorot_init(self)

    def decayed_parameters(self) -> list[torch.nn.Parameter]:
        """The tensors the authors' L2 penalty covered: conv and hidden-FC kernels only
        (no biases, no BatchNorm, no output layer)."""
        convs = [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]
        return [*convs, self.fc.linear.weight]


def plain(
    widths: Sequence[Sequence[int]] = PLAIN11_WIDTHS,
    num_classes: int = 100,
    *,
    width_mult: float = 1.0,
    fc_width: int = 512,
    in_channels: int = 3,
) -> Plain:
    """A member of the Plain family; ``widths`` lists each block's unit widths (channels).

    ``width_mult`` multiplies every conv width (rounded, at least 1), keeping the FC width.
    """
    if not width_mult > 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    scaled = [[max(1, round(w * width_mult)) for w in block] for block in widths]
    return Plain(scaled, num_classes=num_classes, fc_width=fc_width, in_channels=in_channels)


def plain11(num_classes: int = 100, *, width_mult: float = 1.0) -> Plain:
    """Plain-11 as in the paper: 9 conv units (64x2 | 128x3 | 256x3 | 512), FC-512, FC.

    3,381,796 trainable parameters for 100 classes.
    """
    return plain(PLAIN11_WIDTHS, num_classes, width_mult=width_mult)
