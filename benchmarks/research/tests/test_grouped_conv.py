"""benchmarks/research/grouped_conv.py: the convolution shapes it finds in the real models, a CPU
rehearsal end to end (timings, totals, JSON), the time limit, and that the grouped convolution
computes exactly what the K dense convolutions compute."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "grouped_conv.py"

# (Cin, Cout, H, W, stride) -> count in one forward pass, derived by hand from the papers' nets.
PLAIN11 = {
    (3, 64, 32, 32, 1): 1,
    (64, 64, 32, 32, 1): 1,
    (64, 128, 16, 16, 1): 1,
    (128, 128, 16, 16, 1): 2,
    (128, 256, 8, 8, 1): 1,
    (256, 256, 8, 8, 1): 2,
    (256, 512, 4, 4, 1): 1,
}
# Stem; stage 1: 18 blocks x 2 convs; stages 2 and 3: a stride-2 conv, then 35 at the new size.
RESNET110 = {
    (3, 16, 32, 32, 1): 1,
    (16, 16, 32, 32, 1): 36,
    (16, 32, 32, 32, 2): 1,
    (32, 32, 16, 16, 1): 35,
    (32, 64, 16, 16, 2): 1,
    (64, 64, 8, 8, 1): 35,
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("grouped_conv", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # These tests check function, not speed: one thread keeps them at a few seconds also where
    # other processes share the cores (two OpenMP threads then stall each other, 5x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("grouped_conv") / "sub" / "result.json"
    assert bench.main(["--device", "cpu", "--quick", "--batch", "2", "--json", str(out)]) == 0
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    return json.loads(out.read_text())


def found(report: dict, model: str) -> dict:
    shapes = report["models"][model]["shapes"]
    assert all(s["kernel"] == 3 and s["padding"] == 1 for s in shapes)
    return {(s["cin"], s["cout"], s["h"], s["w"], s["stride"]): s["count"] for s in shapes}


def test_shapes_are_the_models_convolutions(report):
    assert found(report, "plain11") == PLAIN11
    assert sum(PLAIN11.values()) == 9
    assert found(report, "resnet110") == RESNET110
    assert sum(RESNET110.values()) == 109  # ResNet-110: 109 convolutions and one FC layer


def test_every_configuration_is_timed_and_checked(report):
    assert report["settings"]["ks"] == [1, 2] and report["settings"]["batch"] == 2
    for model in ("plain11", "resnet110"):
        for shape in report["models"][model]["shapes"]:
            assert set(shape["results"]) == {"1", "2"}
            for r in shape["results"].values():
                assert r["agree"] and r["max_rel_diff"] <= 1e-4
                for design in ("grouped", "streams"):
                    t = r[design]
                    assert len(t["reps_us"]) == 2 and t["iters_per_rep"] >= 1
                    assert all(math.isfinite(v) and v > 0 for v in t["reps_us"])
                    assert min(t["reps_us"]) <= t["us_per_member"] <= max(t["reps_us"])
                    assert t["host_bound"] is None  # a CUDA-only diagnostic
                assert r["ratio"] == pytest.approx(
                    r["streams"]["us_per_member"] / r["grouped"]["us_per_member"]
                )


def test_totals_sum_count_times_time(report):
    for model in ("plain11", "resnet110"):
        m = report["models"][model]
        for k in ("1", "2"):
            for design in ("grouped", "streams"):
                expected = sum(
                    s["count"] * s["results"][k][design]["us_per_member"] for s in m["shapes"]
                )
                assert m["totals_us"][k][design] == pytest.approx(expected)
                assert math.isfinite(expected) and expected > 0


def test_json_records_the_environment(report):
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["dtype"] == "fp32" and env["layout"] == "channels_last"
    assert env["device_name"] and env["date"] and "cudnn" in env
    assert "CPU" in report["settings"]["streams"]
    assert report["stopped_early"] is False and report["elapsed_s"] >= 0


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to fp32 rounding in sums of up to 2,048 products (a weight gradient's), which
    the two designs may add up in different orders."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def test_grouped_equals_dense_convolutions_concatenated(bench):
    """Forward and both gradients, in fp32 on the CPU, for every shape of both models: the two
    designs compute the same thing, so only their speed differs."""
    cpu = torch.device("cpu")
    shapes = [s for m in ("plain11", "resnet110") for s, _ in bench.conv_shapes(m)]
    for fmt in (torch.channels_last, torch.contiguous_format):
        for shape in shapes:
            torch.manual_seed(0)
            grouped, members = bench.make_tensors(shape, 3, 2, cpu, torch.float32, fmt)
            y, gx, gw = bench.fwd_bwd(*grouped, shape, 3)
            dense = [bench.fwd_bwd(*m, shape, 1) for m in members]
            close(y, torch.cat([d[0] for d in dense], 1))
            close(gx, torch.cat([d[1] for d in dense], 1))
            close(gw, torch.cat([d[2] for d in dense], 0))
            # The members' shares are the grouped tensors' channel slices.
            torch.testing.assert_close(members[1][0], grouped[0][:, shape.cin : 2 * shape.cin])
            assert bench.max_rel_diff((y, gx, gw), dense) <= 1e-5


def test_max_rel_diff_sees_a_wrong_member(bench):
    shape = bench.ConvShape(16, 16, 8, 8, 1, 1, 3)
    grouped, members = bench.make_tensors(shape, 2, 2, "cpu", torch.float32, torch.channels_last)
    dense = [bench.fwd_bwd(*m, shape, 1) for m in reversed(members)]  # members swapped
    assert bench.max_rel_diff(bench.fwd_bwd(*grouped, shape, 2), dense) > 0.1


def test_max_seconds_stops_and_keeps_what_it_has(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--device", "cpu", "--quick", "--batch", "2", "--max-seconds", "0", "--json", str(out)]
    assert bench.main(args) == 0
    r = json.loads(out.read_text())
    assert r["stopped_early"] is True and list(r["models"]) == ["plain11"]
    assert all(s["results"] == {} for s in r["models"]["plain11"]["shapes"])
    assert r["models"]["plain11"]["totals_us"] == {"1": None, "2": None}
    text = capsys.readouterr().out
    assert "stopped measuring" in text and "not measured" in text and "incomplete" in text


def test_defaults(bench):
    a = bench.parse_args(["--device", "cpu"])
    assert (a.ks, a.batch, a.dtype, a.fmt) == (
        [1, 2, 4, 8],
        100,
        torch.float32,
        torch.channels_last,
    )
    assert a.models == ["plain11", "resnet110"] and a.max_seconds is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--models", "nonet"])
