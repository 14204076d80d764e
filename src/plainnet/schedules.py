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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

SCHEDULES = ("step", "clr", "sgdr")


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
    if delta != 1.0:
        if t_max is None:
            raise ValueError("clr_lr: delta != 1 needs t_max")
        lr /= 1.0 + (delta - 1.0) * t / t_max
    return lr


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
    ``lr_min``/``lr_max`` are the configured bounds (CLR's global decay takes the rate below
    them). ``boundaries`` lists the epochs where the rate jumps or a cycle ends.
    """

    name: str
    iters_per_epoch: int
    epochs: float
    lr_min: float
    lr_max: float
    boundaries: tuple[float, ...]
    _fn: object = field(repr=False, compare=False)

    @property
    def total_iters(self) -> int:
        return max(1, round(self.epochs * self.iters_per_epoch))

    def __call__(self, t: float) -> float:
        return self._fn(t)  # type: ignore[operator]

    def epoch_lr(self, epoch: float) -> float:
        """The rate at a fractional epoch (for plots)."""
        return self(epoch * self.iters_per_epoch)


def paper_schedule(
    name: str,
    iters_per_epoch: int,
    scale: float = 1.0,
    *,
    epochwise_sgdr: bool = False,
    lr_min: float | None = None,
    lr_max: float | None = None,
) -> Schedule:
    """One of the paper's schedules, ``name`` in ``step``, ``clr``, ``sgdr``, as ``f(t) -> lr``.

    Settings (paper section V-A, recipe.md): step 164 epochs (0.01 for one epoch, 0.1, /10 at 80
    and 120); CLR 160 epochs, step size 10 epochs, 1e-5..0.1, delta 10; SGDR 180 epochs, S_0 = 12
    epochs, sigma 2, 1e-6..0.1. ``scale`` multiplies every length (epochs, warm-up, milestones,
    step size, first period) so a shortened run keeps the shape and still ends where the paper's
    ends. ``lr_min``/``lr_max`` override the bounds (for CLR and SGDR; for step, ``lr_max`` is the
    main rate and ``lr_min`` the warm-up rate), e.g. with what ``plainnet lr-find`` suggests.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    ipe = iters_per_epoch

    if name == "step":
        hi = 0.1 if lr_max is None else lr_max
        lo = 0.01 if lr_min is None else lr_min
        milestones = (80.0 * scale, 120.0 * scale)

        def fn(t: float) -> float:
            return step_lr(t / ipe, lr=hi, warmup_lr=lo, warmup_epochs=scale, milestones=milestones)

        return Schedule(
            "step", ipe, 164.0 * scale, min(lo, hi * 0.01), hi, (scale, *milestones), fn
        )

    if name == "clr":
        lo = 1e-5 if lr_min is None else lr_min
        hi = 0.1 if lr_max is None else lr_max
        epochs = 160.0 * scale
        step_size = 10.0 * scale * ipe
        t_max = epochs * ipe

        def fn(t: float) -> float:
            return clr_lr(t, lr_min=lo, lr_max=hi, step_size=step_size, delta=10.0, t_max=t_max)

        ends = tuple(20.0 * scale * k for k in range(1, 9))
        return Schedule("clr", ipe, epochs, lo, hi, ends, fn)

    lo = 1e-6 if lr_min is None else lr_min
    hi = 0.1 if lr_max is None else lr_max
    period = 12.0 * scale
    sgdr = sgdr_epochwise_lr if epochwise_sgdr else sgdr_lr

    def fn(t: float) -> float:
        return sgdr(t / ipe, lr_min=lo, lr_max=hi, period=period, mult=2.0)

    ends = tuple(period * k for k in (1, 3, 7, 15))
    return Schedule("sgdr", ipe, 180.0 * scale, lo, hi, ends, fn)


class ScheduledLR:
    """Drives a `torch.optim` optimizer from a schedule ``f(t) -> lr``, one `step` per iteration.

    The rate for iteration ``t`` is set before that iteration's update (call `step` right before
    ``optimizer.step()``). `state_dict` holds the position ``t``, so a restored run continues
    where it stopped. ``lr_scale`` multiplies the schedule, e.g. for the linear scaling rule when
    the batch grows with the number of processes.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule, lr_scale: float = 1.0):
        self.optimizer = optimizer
        self.schedule = schedule
        self.lr_scale = lr_scale
        self.t = 0

    def step(self) -> float:
        """Set the rate for the current iteration and advance; returns that rate."""
        lr = self.schedule(self.t) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.t += 1
        return lr

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
