"""`plainnet sweep`: the plain family over depth and width, the ResNets over depth."""

from __future__ import annotations

import pytest

from plainnet.cli import main
from plainnet.errors import UserError
from plainnet.models import build_model, trainable_layers
from plainnet.sweep import plain_model, plain_units, sweep_grid


@pytest.mark.parametrize("depth", [6, 7, 8, 11, 14, 20, 29])
def test_plain_depth_maps_to_layers(depth):
    assert trainable_layers(build_model(plain_model(depth), 10)) == depth
    assert len(plain_units(depth)) == 4


def test_plain11_is_the_depth_11_member():
    assert plain_units(11) == [2, 3, 3, 1]
    assert plain_model(11) == "plain64-64|128-128-128|256-256-256|512"
    with pytest.raises(UserError):
        plain_units(5)
    with pytest.raises(UserError, match="6n"):
        sweep_grid([6], [1.0], [21], "sgdr", [0])


def test_widths_that_share_a_directory_are_refused(tmp_path, capsys):
    args = ["sweep", "--depths", "6", "--widths", "0.3333333", "0.33333334"]
    args += ["--resnet-depths", "8", "--device", "cpu", "--out", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "map to the directory" in err[0]


@pytest.mark.slow
def test_sweep_end_to_end(tiny_cifar10, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--depths", "6", "--widths", "0.125", "--resnet-depths", "8"]
    args += ["--dataset", "cifar10", "--data-dir", str(tiny_cifar10), "--scale", "0.05"]
    args += ["--batch-size", "20", "--out", str(out)]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and "-s0" in p.name)
    assert names == ["plain-d6-w0.125-sgdr-s0", "resnet-d8-sgdr-s0"]
    text = (out / "sweep.md").read_text()
    assert "| plain" in text and "| ResNet" in text and "(n=1)" in text
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("family,depth,width_mult") and len(rows) == 3
    assert (out / "sweep.png").stat().st_size > 5000
