"""The paper's three learning-rate schedules as pure functions, and a thin `torch.optim` adapter.

Every schedule here is a function of *where training is*, nothing else: the equations take the
iteration index ``t`` (CLR, eq. 1-2) or the fractional epoch ``epoch = t / iters_per_epoch``
(step, SGDR, eq. 3-4). `paper_schedule` binds the paper's settings to one callable
``f(t) -> lr`` over iterations ``t = 0 .. f.total_iters - 1``; `ScheduledLR` steps any optimizer
with it, one call per iteration, and saves its position so a resumed run continues the schedule
(the authors' resume restarted it from zero, a bug we do not copy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LRScheduler

SCHEDULES = ("step", "clr", "sgdr")

# The paper's settings (section V-A; docs/recipe.md), in epochs: the only place they are written.
STEP = {
    "epochs": 164.0,
    "lr": 0.1,
    "warmup_lr": 0.01,
    "warmup_epochs": 1.0,
    "milestones": (80.0, 120.0),
}
CLR = {"epochs": 160.0, "lr_min": 1e-5, "lr_max": 0.1, "step_epochs": 10.0, "delta": 10.0}
SGDR = {"epochs": 180.0, "lr_min": 1e-6, "lr_max": 0.1, "period": 12.0, "mult": 2.0}
PAPER = {"step": STEP, "clr": CLR, "sgdr": SGDR}


def paper_epochs(name: str) -> float:
    """The paper's length of schedule ``name`` in epochs (step 164, CLR 160, SGDR 180)."""
    if name not in PAPER:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return PAPER[name]["epochs"]


def step_lr(
    epoch: float,
    *,
    lr: float = 0.1,
    warmup_lr: float = 0.01,
    warmup_epochs: float = 1.0,
    milestones: Sequence[float] = (80.0, 120.0),
    gamma: float = 0.1,
) -> float:
    """He et al.'s hand-made schedule at fractional ``epoch``.

    ``warmup_lr`` during the first ``warmup_epochs`` epochs, then ``lr`` divided by ``1/gamma`` at
    each milestone (epochs) passed.
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * gamma ** sum(epoch >= m for m in milestones)


def clr_lr(
    t: float,
    *,
    lr_min: float,
    lr_max: float,
    step_size: float,
    delta: float = 1.0,
    t_max: float | None = None,
) -> float:
    """Triangular cyclical learning rate, paper eq. (1), with the global decay of eq. (2).

    ``t`` and ``step_size`` (half a cycle) are in iterations. With ``delta > 1`` the whole rate,
    the lower bound included, is divided by ``1 + (delta - 1) * t / t_max``, so the peaks at the
    end of training are ``delta`` times lower than at the start.
    """
    triangle = 1.0 - abs(t / step_size - 2.0 * math.floor(t / (2.0 * step_size)) - 1.0)
    lr = lr_min + (lr_max - lr_min) * triangle
    return lr / global_decay(t, delta, t_max)


def global_decay(t: float, delta: float, t_max: float | None) -> float:
    """The divisor of eq. (2) at iteration ``t`` of ``t_max``: ``1 + (delta - 1) t / t_max``,
    so a rate ends ``delta`` times lower than it would without it (1: no decay)."""
    if delta == 1.0:
        return 1.0
    if t_max is None:
        raise ValueError("a global decay delta != 1 needs t_max")
    return 1.0 + (delta - 1.0) * t / t_max


def _sgdr_cycle(epoch: float, period: float, mult: float) -> tuple[float, float]:
    """Return (epochs since the current cycle began, length of the current cycle) in epochs."""
    start, length = 0.0, period
    # A tiny tolerance keeps restarts that fall on exact epoch boundaries from being missed
    # through float round-off (e.g. 0.1 * 12 + 0.1 * 24 != 3.6 exactly).
    while epoch >= start + length - 1e-9 * length:
        start, length = start + length, length * mult
    return max(epoch - start, 0.0), length


def sgdr_lr(epoch: float, *, lr_min: float, lr_max: float, period: float, mult: float) -> float:
    """SGDR, paper eq. (3) and (4), at fractional ``epoch`` (so it anneals every iteration).

    ``period`` is the first cycle's length S_0 in epochs, and each cycle is ``mult`` (sigma)
    times longer than the one before. The rate starts each cycle at ``lr_max`` and follows a
    half cosine down towards ``lr_min``.
    """
    since, length = _sgdr_cycle(epoch, period, mult)
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * since / length))


def sgdr_epochwise_lr(
    epoch: float, *, lr_min: float, lr_max: float, period: float, mult: float
) -> float:
    """The authors' Keras SGDR callback: one rate per whole epoch (``floor(epoch)``).

    Epoch ``i`` of a cycle of ``T`` epochs runs at ``lr_max`` for ``i = 0`` and at the cosine's
    value at ``(i + 1) / T`` otherwise, so the ``1/T`` point is skipped and the cycle's last epoch
    runs at exactly ``lr_min``. Offered for fidelity; `sgdr_lr` is the default.
    """
    since, length = _sgdr_cycle(math.floor(epoch + 1e-9), period, mult)
    i = round(since)
    if i == 0:
        return lr_max
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * (i + 1) / length))


@dataclass(frozen=True)
class Schedule:
    """A learning rate as a function of the iteration: ``lr = schedule(t)``.

    ``t`` runs over ``0 .. total_iters - 1``; ``epochs`` is the run's length in epochs (it may be
    fractional for shortened runs) and ``iters_per_epoch`` converts between the two.
    ``lr_min``/``lr_max`` are the configured bounds (a global decay ``delta`` > 1 takes the rate
    below them). ``boundaries`` lists the epochs where the rate jumps or a cycle ends.
    ``lr_scale`` multiplies every rate (the linear scaling rule when the batch grows with the
    number of processes), so ``schedule(t)`` is always the rate applied at iteration ``t``.
    """

    name: str
    iters_per_epoch: int
    epochs: float
    lr_min: float
    lr_max: float
    boundaries: tuple[float, ...]
    _fn: Callable[[float], float] = field(repr=False, compare=False)
    delta: float = 1.0
    lr_scale: float = 1.0

    @property
    def total_iters(self) -> int:
        return max(1, round(self.epochs * self.iters_per_epoch))

    def __call__(self, t: float) -> float:
        decay = global_decay(t, self.delta, self.epochs * self.iters_per_epoch)
        return self._fn(t) / decay * self.lr_scale


def paper_schedule(
    name: str,
    iters_per_epoch: int,
    scale: float = 1.0,
    *,
    epochwise_sgdr: bool = False,
    lr_min: float | None = None,
    lr_max: float | None = None,
    delta: float | None = None,
) -> Schedule:
    """One of the paper's schedules, ``name`` in ``step``, ``clr``, ``sgdr``, as ``f(t) -> lr``.

    Settings (`PAPER`): step 164 epochs (0.01 for one epoch, 0.1, /10 at 80 and 120); CLR 160
    epochs, step size 10 epochs, 1e-5..0.1, delta 10; SGDR 180 epochs, S_0 = 12 epochs, sigma 2,
    1e-6..0.1. ``scale`` multiplies every length (epochs, warm-up, milestones, step size, first
    period) so a shortened run keeps the shape and still ends where the paper's ends.
    ``lr_min``/``lr_max`` override the bounds (for step, ``lr_max`` is the main rate and
    ``lr_min`` the warm-up rate), e.g. with what ``plainnet lr-find`` suggests. ``delta`` is
    eq. (2)'s global decay for any schedule (None: the paper's, 10 for CLR and 1 otherwise).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if delta is not None and not (delta >= 1 and math.isfinite(delta)):
        raise ValueError(f"delta must be a number >= 1, got {delta}")
    ipe = iters_per_epoch
    delta = (CLR["delta"] if name == "clr" else 1.0) if delta is None else delta

    if name == "step":
        hi = STEP["lr"] if lr_max is None else lr_max
        lo = STEP["warmup_lr"] if lr_min is None else lr_min
        milestones = tuple(m * scale for m in STEP["milestones"])
        warmup = STEP["warmup_epochs"] * scale

        def fn(t: float) -> float:
            return step_lr(
                t / ipe, lr=hi, warmup_lr=lo, warmup_epochs=warmup, milestones=milestones
            )

        bounds = (min(lo, hi * 0.01), hi)
        return Schedule(
            "step", ipe, STEP["epochs"] * scale, *bounds, (warmup, *milestones), fn, delta
        )

    if name == "clr":
        lo = CLR["lr_min"] if lr_min is None else lr_min
        hi = CLR["lr_max"] if lr_max is None else lr_max
        step_size = CLR["step_epochs"] * scale * ipe

        def fn(t: float) -> float:
            return clr_lr(t, lr_min=lo, lr_max=hi, step_size=step_size)

        cycles = round(CLR["epochs"] / (2 * CLR["step_epochs"]))
        ends = tuple(2 * CLR["step_epochs"] * scale * k for k in range(1, cycles + 1))
        return Schedule("clr", ipe, CLR["epochs"] * scale, lo, hi, ends, fn, delta)

    lo = SGDR["lr_min"] if lr_min is None else lr_min
    hi = SGDR["lr_max"] if lr_max is None else lr_max
    period, mult = SGDR["period"] * scale, SGDR["mult"]
    sgdr = sgdr_epochwise_lr if epochwise_sgdr else sgdr_lr

    def fn(t: float) -> float:
        return sgdr(t / ipe, lr_min=lo, lr_max=hi, period=period, mult=mult)

    ends = tuple(period * k for k in (1, 3, 7, 15))
    return Schedule("sgdr", ipe, SGDR["epochs"] * scale, lo, hi, ends, fn, delta)


def epochwise_sgdr_shortfall(iters_per_epoch: int = 500) -> list[float]:
    """How much lower, in %, the mean rate of each of the paper's SGDR cycles is when stepped
    once per epoch as the authors' callback did (`sgdr_epochwise_lr`) than when annealed every
    iteration (`sgdr_lr`): ``100 * (per iteration - per epoch) / per iteration``."""
    by_iteration = paper_schedule("sgdr", iters_per_epoch)
    by_epoch = paper_schedule("sgdr", iters_per_epoch, epochwise_sgdr=True)
    starts = (0.0, *by_iteration.boundaries)
    out = []
    for start, end in zip(starts, by_iteration.boundaries, strict=False):
        ts = range(round(start * iters_per_epoch), round(end * iters_per_epoch))
        mean_it = sum(by_iteration(t) for t in ts) / len(ts)
        mean_ep = sum(by_epoch(t) for t in ts) / len(ts)
        out.append(100.0 * (mean_it - mean_ep) / mean_it)
    return out


def epochwise_sgdr_note() -> str:
    """`epochwise_sgdr_shortfall` in words, as `plainnet schedules` prints it and the docs
    quote it."""
    values = " / ".join(f"{v:.1f}" for v in epochwise_sgdr_shortfall())
    return (
        "SGDR stepped once per epoch (the authors' callback) skips each cycle's 1/T point and "
        f"runs its last epoch at lr_min: its cycles' mean rates are {values} % lower than "
        "annealed every iteration"
    )


class ScheduledLR(LRScheduler):
    """Drives any `torch.optim` optimizer from a schedule ``f(t) -> lr`` over iterations: a
    `torch.optim.lr_scheduler.LRScheduler`, so it works in a plain loop and in the loops of
    libraries that take one (Lightning with ``interval: "step"``, Hugging Face, ...).

    As with every PyTorch scheduler, the rate for iteration 0 is set on construction and
    ``scheduler.step()`` is called once per iteration, after ``optimizer.step()``.
    `state_dict` holds the position, so a restored run continues where it stopped.
    ``lr_scale`` multiplies the schedule (e.g. the linear scaling rule when the batch grows
    with the number of processes).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[float], float],
        lr_scale: float = 1.0,
        last_epoch: int = -1,
    ):
        self.schedule = schedule
        self.lr_scale = lr_scale
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The rate of iteration ``last_epoch`` (PyTorch's name: it counts steps here)."""
        rate = self.schedule(self.last_epoch) * self.lr_scale
        return [rate for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """The position (and PyTorch's bookkeeping), not the schedule: a function, which
        the caller passes again, as with `torch.optim.lr_scheduler.LambdaLR`."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue at the saved position, and give the optimizer that position's rate (also
        when its own state was not restored)."""
        super().load_state_dict(state_dict)
        for group, rate in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def lr_table(
    schedule: Callable[[float], float], iters: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The rate of every iteration ``0 .. iters - 1`` as one float32 tensor on ``device``: the
    training step reads its rate from here by a device-side counter, never from the host."""
    rates = [schedule(t) for t in range(iters)]
    return torch.tensor(rates, dtype=torch.float32, device=device)
