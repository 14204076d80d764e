"""Plain-11 as in the paper's Fig. 1 and the authors' code."""

import math

import pytest
import torch
from torch import nn

from plainnet.models import build_model, count_parameters, plain, plain11, trainable_layers


def test_plain11_layer_order_and_counts():
    model = plain11()
    assert trainable_layers(model) == 11
    assert count_parameters(model) == 3_381_796
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128, 256, 256, 256, 512]
    assert all(
        c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs
    )
    names = [name for name, _ in model.named_children()]
    assert names == [
        "block1", "pool1", "block2", "pool2", "block3", "pool3", "block4",
        "gap", "flatten", "fc", "classifier",
    ]  # fmt: skip
    # Every unit is conv -> ReLU -> BN, in that order (the authors' order, not conv-BN-ReLU).
    for unit in model.block3:
        assert [type(m) for m in unit] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    assert [type(m) for m in model.fc] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert all(isinstance(getattr(model, f"pool{i}"), nn.AvgPool2d) for i in (1, 2, 3))
    assert model.classifier.out_features == 100
    assert not any(isinstance(m, (nn.Dropout, nn.MaxPool2d)) for m in model.modules())


def test_plain11_prints_like_the_figure():
    text = repr(plain11())
    for name in ["(block1)", "(unit2)", "(pool3)", "(block4)", "(gap)", "(fc)", "(classifier)"]:
        assert name in text
    assert "(12)" not in text  # no anonymous indices


def test_keras_batchnorm_and_glorot_init():
    torch.manual_seed(0)
    model = plain11()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert m.momentum == 0.01 and m.eps == 1e-3
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.9 * bound  # uniform over the whole range
            assert torch.all(m.bias == 0)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (64, 64), (17, 17)])
def test_any_input_size(size):
    model = plain11(num_classes=10).eval()
    assert model(torch.randn(3, 3, *size)).shape == (3, 10)


def test_every_parameter_gets_a_gradient():
    model = plain11(num_classes=100)
    out = model(torch.randn(4, 3, 32, 32))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_decayed_parameters_are_conv_and_hidden_fc_kernels():
    model = plain11()
    decayed = {id(p) for p in model.decayed_parameters()}
    assert len(decayed) == 10
    assert id(model.fc.linear.weight) in decayed
    assert id(model.classifier.weight) not in decayed
    assert id(model.block1.unit1.conv.bias) not in decayed
    assert id(model.block1.unit1.bn.weight) not in decayed


def test_plain_family_depth_width_and_width_mult():
    model = plain([[32], [64, 64]], num_classes=5)
    assert trainable_layers(model) == 5
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    half = plain11(width_mult=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)][-1] == 256
    assert half.fc.linear.out_features == 512
    with pytest.raises(ValueError):
        plain([[]])
    with pytest.raises(ValueError):
        plain11(width_mult=0)


def test_build_model_names():
    assert count_parameters(build_model("plain11", 100)) == 3_381_796
    assert trainable_layers(build_model("plain16-16|32", 10)) == 5
    assert trainable_layers(build_model("resnet20", 10)) == 20
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("resnet21", 10)
