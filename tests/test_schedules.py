"""The schedules against the paper's equations and against PyTorch's own schedulers."""

import io
import math

import pytest
import torch

from plainnet.schedules import (
    ScheduledLR,
    clr_lr,
    paper_schedule,
    sgdr_epochwise_lr,
    sgdr_lr,
    step_lr,
)

IPE = 500  # the paper: 50,000 images / batch 100


def test_step_schedule_matches_he_et_al():
    f = paper_schedule("step", IPE)
    assert f.total_iters == 164 * IPE
    assert f(0) == f(IPE - 1) == 0.01
    assert f(IPE) == 0.1
    assert f(80 * IPE - 1) == 0.1
    assert f(80 * IPE) == pytest.approx(0.01)
    assert f(120 * IPE - 1) == pytest.approx(0.01)
    assert f(120 * IPE) == pytest.approx(0.001)
    assert f(f.total_iters - 1) == pytest.approx(0.001)


def test_clr_equation_1_at_start_peaks_and_troughs():
    kw = dict(lr_min=1e-5, lr_max=0.1, step_size=5000)
    assert clr_lr(0, **kw) == pytest.approx(1e-5)
    assert clr_lr(5000, **kw) == pytest.approx(0.1)
    assert clr_lr(10000, **kw) == pytest.approx(1e-5)
    assert clr_lr(2500, **kw) == pytest.approx(1e-5 + (0.1 - 1e-5) / 2)
    assert clr_lr(7500, **kw) == pytest.approx(1e-5 + (0.1 - 1e-5) / 2)
    assert clr_lr(15000, **kw) == pytest.approx(0.1)


def test_clr_global_decay_divides_whole_rate_equation_2():
    f = paper_schedule("clr", IPE)
    t_max = 160 * IPE
    assert f.total_iters == t_max
    for t in [0, 5000, 10000, 25000, 45000, 79999]:
        undecayed = clr_lr(t, lr_min=1e-5, lr_max=0.1, step_size=5000)
        assert f(t) == pytest.approx(undecayed / (1 + 9 * t / t_max))
    # The first peak is 0.1 / 1.5625; the peaks fall towards lr_max / delta at the end.
    assert f(5000) == pytest.approx(0.1 / (1 + 9 * 5000 / t_max))
    assert f(75000) == pytest.approx(0.1 / (1 + 9 * 75000 / t_max))
    # The lower bound is decayed too (recipe.md): the trough at 70,000 is lr_min / 8.875.
    assert f(70000) == pytest.approx(1e-5 / (1 + 9 * 70000 / t_max))
    # The run ends one iteration short of the eighth trough.
    last = f(f.total_iters - 1)
    assert last < 1e-5 and last == pytest.approx(
        (1e-5 + (0.1 - 1e-5) / 5000) / (1 + 9 * 79999 / t_max)
    )


def test_sgdr_equations_3_and_4_restarts_and_ends():
    f = paper_schedule("sgdr", IPE)
    assert f.total_iters == 180 * IPE
    assert f.boundaries == (12, 36, 84, 180)
    for restart in (0, 12, 36, 84):
        assert f(restart * IPE) == pytest.approx(0.1)
    # Halfway through each cycle (lengths 12, 24, 48, 96 epochs) the cosine is at its middle.
    for start, length in [(0, 12), (12, 24), (36, 48), (84, 96)]:
        assert f((start + length / 2) * IPE) == pytest.approx((0.1 + 1e-6) / 2)
        just_before = f((start + length) * IPE - 1)
        assert just_before == pytest.approx(1e-6, abs=(0.1 * (math.pi / (length * IPE)) ** 2))
    # Fractional epochs: the rate moves every iteration, not every epoch.
    assert f(1) < f(0) and f(2) < f(1)
    assert sgdr_lr(3.0, lr_min=0.0, lr_max=1.0, period=12, mult=2) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 3 / 12))
    )


def test_sgdr_epochwise_variant_follows_the_authors_callback():
    kw = dict(lr_min=1e-6, lr_max=0.1, period=12, mult=2)
    assert sgdr_epochwise_lr(0, **kw) == 0.1
    assert sgdr_epochwise_lr(0.99, **kw) == 0.1  # constant within an epoch
    # Epoch i >= 1 of a cycle runs at the cosine at (i + 1) / T: the 1/T point is skipped.
    assert sgdr_epochwise_lr(1, **kw) == pytest.approx(
        1e-6 + 0.5 * (0.1 - 1e-6) * (1 + math.cos(math.pi * 2 / 12))
    )
    assert sgdr_epochwise_lr(11, **kw) == pytest.approx(1e-6)  # last epoch at exactly lr_min
    assert sgdr_epochwise_lr(12, **kw) == 0.1  # restart
    assert sgdr_epochwise_lr(35, **kw) == pytest.approx(1e-6)
    f = paper_schedule("sgdr", IPE, epochwise_sgdr=True)
    assert f(5 * IPE) == f(5 * IPE + 499) == sgdr_epochwise_lr(5, **kw)


@pytest.mark.parametrize("name", ["step", "clr", "sgdr"])
@pytest.mark.parametrize("scale", [0.1, 0.05])
def test_scale_keeps_shape_and_end(name, scale):
    full, short = paper_schedule(name, IPE), paper_schedule(name, IPE, scale)
    assert short.total_iters == round(full.total_iters * scale)
    # The same fraction of training gives the same rate (sampled away from the jumps).
    for frac in [0.0, 0.13, 0.27, 0.41, 0.66, 0.93]:
        t_full = frac * full.total_iters
        assert short(t_full * scale) == pytest.approx(full(t_full), rel=1e-9, abs=1e-12)
    if name != "step":  # CLR and SGDR end at (one iteration short of) lr_min
        last = short(short.total_iters - 1)
        assert last <= short.lr_min + (short.lr_max - short.lr_min) * 20 / short.total_iters


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        paper_schedule("cosine", IPE)
    with pytest.raises(ValueError, match="scale"):
        paper_schedule("sgdr", IPE, scale=0)
    with pytest.raises(ValueError, match="iters_per_epoch"):
        paper_schedule("sgdr", 0)


def _drive(schedule, n, optimizer):
    """The rate each of ``n`` iterations runs at, with the scheduler stepped as PyTorch's
    are: after ``optimizer.step()``."""
    adapter = ScheduledLR(optimizer, schedule)
    rates = []
    for _ in range(n):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        adapter.step()
    return rates


def _sgd():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)


def test_sgdr_matches_torch_cosine_annealing_warm_restarts():
    ipe = 10
    f = paper_schedule("sgdr", ipe, scale=0.5)  # S_0 = 6 epochs = 60 iterations
    opt = _sgd()
    opt.param_groups[0]["lr"] = 0.1
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60, T_mult=2, eta_min=1e-6)
    expected = []
    for _ in range(f.total_iters):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _drive(f, f.total_iters, _sgd()) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_clr_without_decay_matches_torch_cyclic_lr():
    opt = _sgd()
    ref = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-5, max_lr=0.1, step_size_up=50, mode="triangular", cycle_momentum=False
    )
    expected = []
    for _ in range(400):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()

    def f(t):
        return clr_lr(t, lr_min=1e-5, lr_max=0.1, step_size=50)

    assert _drive(f, 400, _sgd()) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_step_after_warmup_matches_torch_multistep_lr():
    ipe = 5
    opt = _sgd()
    opt.param_groups[0]["lr"] = 0.1
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80 * ipe, 120 * ipe], gamma=0.1)
    expected = []
    for _ in range(164 * ipe):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = _drive(paper_schedule("step", ipe), 164 * ipe, _sgd())
    assert got[:ipe] == [0.01] * ipe
    assert got[ipe:] == pytest.approx(expected[ipe:], rel=1e-9)


def test_adapter_state_resumes_the_schedule():
    f = paper_schedule("sgdr", 20, scale=0.1)
    straight = _drive(f, 100, _sgd())
    opt = _sgd()
    first = ScheduledLR(opt, f)
    for _ in range(37):
        opt.step()
        first.step()
    state = first.state_dict()
    assert "schedule" not in state  # a function: not saved, rebuilt by the caller
    torch.save(state, buffer := io.BytesIO())
    buffer.seek(0)
    opt2 = _sgd()
    resumed = ScheduledLR(opt2, f)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    rest = []
    for _ in range(63):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        resumed.step()
    assert rest == straight[37:]
    assert resumed.last_epoch == 100 and resumed.get_last_lr() == [f(100)]


def test_adapter_is_a_torch_scheduler_and_sets_tensor_rates():
    """A real `LRScheduler`: isinstance checks of training libraries pass, and a tensor rate
    (as plainnet's fused SGD uses) is written in place."""
    f = paper_schedule("clr", 10, scale=0.05)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=torch.tensor(0.0))
    rate = opt.param_groups[0]["lr"]
    scheduler = ScheduledLR(opt, f, lr_scale=2.0)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    for t in range(5):
        assert float(rate) == pytest.approx(2.0 * f(t), rel=1e-6)
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] is rate


def test_step_lr_function_defaults():
    assert step_lr(0.5) == 0.01 and step_lr(1.0) == 0.1 and step_lr(200) == pytest.approx(1e-3)


def test_adapter_drives_a_lightning_loop():
    """`ScheduledLR` in another library's training loop: Lightning steps it once per batch
    (``interval: "step"``) and every batch runs at the schedule's rate for its iteration."""
    import lightning.pytorch as lightning

    f = paper_schedule("sgdr", 4, scale=2 / 180)  # two epochs of four batches, restarts
    seen: list[float] = []

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def training_step(self, batch, index):
            seen.append(self.optimizers().param_groups[0]["lr"])
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": ScheduledLR(opt, f), "interval": "step"},
            }

    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    trainer = lightning.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=2))
    assert seen == pytest.approx([f(t) for t in range(8)], rel=1e-12)


@pytest.mark.parametrize("name", ["step", "sgdr"])
def test_global_decay_for_every_schedule_follows_equation_2(name):
    """``delta`` divides any schedule by ``1 + (delta - 1) t / t_max``, as the authors' code
    applied its decay setting to every schedule (delta 4 at the paper's time)."""
    plain, decayed = paper_schedule(name, IPE), paper_schedule(name, IPE, delta=4.0)
    t_max = plain.epochs * IPE
    for t in [0, 600, 12 * IPE, 36 * IPE, 84 * IPE, plain.total_iters - 1]:
        assert decayed(t) == pytest.approx(plain(t) / (1 + 3 * t / t_max), rel=1e-12)
    if name == "sgdr":  # the last restart's peak: 0.042 instead of 0.1
        assert decayed(84 * IPE) == pytest.approx(0.1 / (1 + 3 * 84 / 180))
        assert decayed(84 * IPE) == pytest.approx(0.042, abs=5e-4)
    assert paper_schedule("clr", IPE).delta == 10.0 and plain.delta == 1.0
    assert paper_schedule("clr", IPE, delta=1.0)(5000) == pytest.approx(0.1)  # no decay
    with pytest.raises(ValueError, match="delta"):
        paper_schedule(name, IPE, delta=0.5)


def test_per_epoch_sgdr_lowers_each_cycles_mean_rate_as_the_docs_say():
    """The first cycle's shortfall from its definition (12 epochs of 500 iterations: the cosine
    sampled every iteration against one value per epoch, the 1/T point skipped), and the docs
    quote the figures `epochwise_sgdr_note` prints, so they cannot drift from the code."""
    from pathlib import Path

    from plainnet.schedules import SGDR, epochwise_sgdr_note, epochwise_sgdr_shortfall

    lo, hi, T, ipe = SGDR["lr_min"], SGDR["lr_max"], 12, 500

    def cosine(x: float) -> float:
        return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * x))

    per_iteration = sum(cosine(i / (T * ipe)) for i in range(T * ipe)) / (T * ipe)
    per_epoch = (hi + sum(cosine((j + 1) / T) for j in range(1, T))) / T
    shortfall = epochwise_sgdr_shortfall()
    assert shortfall[0] == pytest.approx(100 * (per_iteration - per_epoch) / per_iteration)
    assert [round(v, 1) for v in shortfall] == [8.1, 4.1, 2.1, 1.0]
    figures = " / ".join(f"{v:.1f}" for v in shortfall) + " %"
    assert figures in epochwise_sgdr_note()
    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/recipe.md"):
        assert figures in (root / doc).read_text(), doc
