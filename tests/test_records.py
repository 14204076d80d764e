"""`plainnet.records`: what a run writes and prints: the epoch's row (with the share of
clipped steps), the summary's result, and the closing line."""

from __future__ import annotations

import pytest

from plainnet.config import TrainConfig
from plainnet.records import closing_line, summary_of
from plainnet.run_dir import RunDir
from plainnet.train import train


def quiet(_msg: str) -> None:
    pass


@pytest.mark.parametrize(("clip_norm", "share"), [(1e-6, 1.0), (1e6, 0.0), (0.0, 0.0)])
def test_each_epoch_records_the_share_of_clipped_steps(tiny_cifar10, tmp_path, clip_norm, share):
    """A norm far below every gradient's clips every step, one far above none, and with
    clipping off (0) no step is clipped."""
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10),
                      epochs=2, batch_size=25, clip_norm=clip_norm)  # fmt: skip
    train(cfg, tmp_path / "run", log=quiet)
    rows = RunDir(tmp_path / "run").read_metrics()
    assert [r["clipped_fraction"] for r in rows] == [share, share]


def test_the_share_of_clipped_steps_counts_each_step(tiny_cifar10, tmp_path, monkeypatch):
    """At a norm between the gradients' norms, the share is the fraction of steps whose norm
    was above it: recount them here from the norms the clipping saw."""
    import torch

    from plainnet import recipe

    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def seen(params, max_norm, **kwargs):
        norm = clip(params, max_norm, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(recipe.nn.utils, "clip_grad_norm_", seen)
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10),
                      epochs=1, batch_size=10, clip_norm=8.0)  # fmt: skip
    train(cfg, tmp_path / "run", log=quiet)
    (row,) = RunDir(tmp_path / "run").read_metrics()
    assert len(norms) == 10 and 0 < sum(n > 8.0 for n in norms) < 10, norms
    assert row["clipped_fraction"] == sum(n > 8.0 for n in norms) / 10


def _summary(status: str, done: int) -> dict:
    history = [
        {"epoch": e, "test_error": err, "train_seconds": 1.0}
        for e, err in zip(range(1, done + 1), (50.0, 40.0, 45.0), strict=False)
    ]
    return summary_of(TrainConfig(), history, 1000, status, 3)


def test_only_a_finished_run_closes_with_a_final_test_error(tmp_path):
    run = RunDir(tmp_path)
    finished = closing_line(_summary("finished", 3), run, 75)
    assert (
        finished
        == f"finished: final test error 45.00 % (best 40.00 % at epoch 2), 1:15, {tmp_path}"
    )
    stopped = closing_line(_summary("interrupted", 2), run, 50)
    assert stopped == f"interrupted: test error 40.00 % after epoch 2 of 3, 50 s, {tmp_path}"
    assert "final" not in closing_line(_summary("diverged", 1), run, 5)
    assert closing_line(_summary("interrupted", 0), run, 5).startswith(
        "interrupted: no epoch finished"
    )
