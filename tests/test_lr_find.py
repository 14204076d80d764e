"""`plainnet lr-find`: the range test on real images, its suggestion, and its command line."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.errors import UserError
from plainnet.lr_find import ExponentialRamp, lr_find, suggest

SMALL = "plain16-16|32-32|64"


def test_range_test_on_real_images(cifar10_jpeg_data, tmp_path):
    cfg = TrainConfig(model=SMALL, dataset="folder", train_limit=1000)
    lines: list[str] = []
    record = lr_find(cfg, tmp_path / "lr", iters=40, data=cifar10_jpeg_data, log=lines.append)

    png = (tmp_path / "lr" / "lr_find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    stored = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert stored["suggested"] == record["suggested"] and stored["rates"] == record["rates"]

    rates, losses = record["rates"], record["losses"]
    assert rates[0] == pytest.approx(1e-6)
    step = (10.0 / 1e-6) ** (1 / 39)  # the same factor every iteration: an exponential ramp
    assert all(b / a == pytest.approx(step) for a, b in itertools.pairwise(rates))
    # With the default range (up to 10) the loss blows up before the end, and the test stops.
    assert record["stop_reason"] != "end of range" and record["iters_done"] < 40
    assert len(losses) == len(rates) == record["iters_done"]

    s = record["suggested"]
    assert rates[0] <= s["lr_min"] < s["lr_max"] < rates[-1]  # inside the searched range,
    assert s["lr_max"] < rates[-1] / 4  # well below where it diverged
    assert s["lr_min"] <= s["lr_max"] / 4
    assert s["min_loss"] < record["curve"][0] - 0.1  # the network did learn on the way
    assert lines[-1].startswith("suggested --lr-min ")
    assert f"--lr-max {s['lr_max']:.2g}" in lines[-1]


def test_suggestion_reads_a_known_curve():
    # Loss flat at 3 until 1e-4, falling linearly in log(lr) to 1 at 1e-2, then rising.
    rates = [10 ** (-6 + 6 * i / 299) for i in range(300)]

    def loss(r: float) -> float:
        x = math.log10(r)
        return 3.0 if x < -4 else (3.0 - (x + 4) if x < -2 else 1.0 + 3 * (x + 2))

    s = suggest(rates, [loss(r) for r in rates])
    assert s["lr_max"] == pytest.approx(1e-2, rel=0.05)
    assert s["lr_min"] == pytest.approx(10**-3.8, rel=0.05)  # 10 % of the drop, 3 -> 2.8
    assert s["notes"] == []
    still_falling = [r for r in rates if r < 5e-3]
    s = suggest(still_falling, [loss(r) for r in still_falling])
    assert any("larger --end-lr" in n for n in s["notes"])
    with pytest.raises(UserError, match="too few"):
        suggest(rates[:3], [1.0, 1.0, 1.0])


def test_exponential_ramp_ends_exactly():
    ramp = ExponentialRamp(1e-5, 1.0, 11)
    assert ramp(0) == pytest.approx(1e-5) and ramp(10) == pytest.approx(1.0)
    assert ramp(5) == pytest.approx(1e-5 * 10**2.5)


def test_cli_line_feeds_train(tiny_cifar10, tmp_path, capsys):
    data = ["--dataset", "cifar10", "--data-dir", str(tiny_cifar10)]
    argv = ["lr-find", "--model", "plain8|16", *data, "--iters", "20", "--out", str(tmp_path)]
    assert main([*argv, "--end-lr", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("suggested ")
    bounds = last.split()[1:]  # the line is meant to be pasted into plainnet train
    assert bounds[0] == "--lr-min" and bounds[2] == "--lr-max"
    assert (tmp_path / "lr_find.png").exists() and (tmp_path / "lr_find.json").exists()
    run = ["train", "--model", "plain8|16", *data, "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main([*run, *bounds]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["lr_max"] == float(bounds[3]) and config["lr_min"] == float(bounds[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "below --end-lr"),
        (["--iters", "3"], "at least 10"),
        (["--model", "vgg16"], "unknown model"),
        (["--beta", "1.5"], "--beta"),
        (["--batch-size", "1000"], "fewer than one batch of 1000"),
        (["--model", "plain8|16", "--batch-size", "1"], "cannot train on batches of 1 images"),
    ],
)
def test_bad_options_are_one_line(tiny_cifar10, tmp_path, capsys, extra, message):
    data = ["--dataset", "cifar10", "--data-dir", str(tiny_cifar10)]
    assert main(["lr-find", *data, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plainnet: error:") and message in err[0]
