"""The paper's networks: Plain-11 (and the plain family) and the CIFAR ResNets.

`build_model` maps the CLI's model names to these factories; `load` rebuilds a trained model
from a file written by ``plainnet export``.
"""

from __future__ import annotations

from torch import nn

from plainnet.models.plain import PLAIN11_WIDTHS, ConvUnit, Plain, plain, plain11
from plainnet.models.resnet import BasicBlock, CifarResNet, cifar_resnet, resnet110
from plainnet.models.weights import load, save_weights

__all__ = [
    "MODEL_NAMES_HELP",
    "PLAIN11_WIDTHS",
    "BasicBlock",
    "CifarResNet",
    "ConvUnit",
    "Plain",
    "build_model",
    "cifar_resnet",
    "count_parameters",
    "load",
    "plain",
    "plain11",
    "resnet110",
    "save_weights",
    "trainable_layers",
]

MODEL_NAMES_HELP = (
    "plain11 (the paper's), resnet110 (the paper's), resnet<6n+2> (resnet20, resnet56, ...) or "
    "a plain network written as its widths, blocks split by | and units by - (plain64-64|128)"
)


def build_model(name: str, num_classes: int, *, width_mult: float = 1.0) -> nn.Module:
    """A model by name: ``plain11``, ``resnet110``, ``resnet<6n+2>`` (e.g. ``resnet20``), or
    ``plain<W1-W2|W3..>`` for any plain network (blocks separated by ``|``, units by ``-``;
    ``plain64-64|128`` is two 64-channel units, a pool, one 128-channel unit)."""
    if name == "plain11":
        return plain11(num_classes, width_mult=width_mult)
    if name.startswith("plain") and name[5:6].isdigit():
        try:
            widths = [[int(w) for w in block.split("-")] for block in name[5:].split("|")]
        except ValueError:
            raise ValueError(f"cannot read plain widths from {name!r}") from None
        return plain(widths, num_classes, width_mult=width_mult)
    if name.startswith("resnet") and name[6:].isdigit():
        if width_mult != 1.0:
            raise ValueError("width_mult applies to the plain family only")
        return cifar_resnet(int(name[6:]), num_classes)
    raise ValueError(
        f"unknown model {name!r}; choose plain11, resnet110, resnet<6n+2> or plain<widths>"
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_layers(model: nn.Module) -> int:
    """Conv and fully-connected layers: the paper's count of trainable layers."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
