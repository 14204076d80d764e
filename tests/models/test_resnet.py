"""The authors' CIFAR ResNet-110."""

import pytest
import torch
from torch import nn

from plainnet.models import cifar_resnet, count_parameters, resnet110, trainable_layers
from plainnet.models.resnet import BasicBlock, PadShortcut


def test_resnet110_counts():
    model = resnet110()
    assert trainable_layers(model) == 110
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 109
    assert count_parameters(model) == 1_737_860  # with the Keras model's conv biases
    assert count_parameters(resnet110(bias=False)) == 1_733_812
    assert [len(model.stage1), len(model.stage2), len(model.stage3)] == [18, 18, 18]
    assert model.classifier.in_features == 64


def test_shortcuts_are_parameter_free_pool_and_zero_pad():
    model = resnet110()
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(pads) == 2
    assert not any(isinstance(m, nn.Conv2d) for p in pads for m in p.modules())
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).reshape(2, 16, 4, 4)
    y = pads[0](x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.allclose(y[:, :16], nn.functional.avg_pool2d(x, 2))
    assert torch.all(y[:, 16:] == 0)


def test_post_activation_block_order():
    block = BasicBlock(16, 16, 1, bias=True).eval()
    x = torch.randn(2, 16, 8, 8)
    manual = torch.relu(block.bn1(block.conv1(x)))
    manual = torch.relu(block.bn2(block.conv2(manual)) + x)
    assert torch.allclose(block(x), manual)


@pytest.mark.parametrize("size", [(32, 32), (33, 29), (48, 64)])
def test_output_shapes(size):
    model = cifar_resnet(20, num_classes=10).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 10)


def test_every_parameter_gets_a_gradient_and_decay_covers_all_kernels():
    model = cifar_resnet(20, num_classes=10)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(model.decayed_parameters()) == trainable_layers(model)


@pytest.mark.parametrize("depth", [0, 7, 21, 111])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(depth)
