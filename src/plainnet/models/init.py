"""The authors' Keras defaults, in PyTorch terms."""

from __future__ import annotations

from torch import nn

# Keras BatchNormalization(momentum=0.99, epsilon=1e-3): Keras's momentum is the weight of the
# old running statistic, PyTorch's the weight of the new batch statistic.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


def keras_batchnorm(cls: type[nn.modules.batchnorm._BatchNorm], channels: int) -> nn.Module:
    return cls(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def glorot_init(model: nn.Module) -> None:
    """Glorot (Xavier) uniform kernels and zero biases for every conv and linear layer
    (Keras's default; PyTorch's default is Kaiming-uniform with fan-in bias)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
