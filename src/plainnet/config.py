"""What a run is: `TrainConfig` (every option, its default, help and check, stated once) and
the speed switches it resolves to on a device (`Switches`).

The command line is generated from `TrainConfig`'s fields (`plainnet.cli`), so a default or a
help text lives here and nowhere else. `validate` is the one check of every option; a run starts
only from a config that passed it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from plainnet.data import AUGMENTATIONS, DATASETS
from plainnet.errors import UserError
from plainnet.models import MODEL_NAMES_HELP, build_model
from plainnet.schedules import SCHEDULES, paper_epochs

SWITCH = ("auto", "on", "off")
AMP = ("auto", "bf16", "fp16", "off")
SEED_LIMIT = 2**32  # seeds are mixed into 64-bit generator seeds per epoch and rank


def option(help: str, *, group: str, check: str | None = None, choices=None, per_run=False):
    """A `TrainConfig` field's command-line description.

    ``group``: the ``--help`` section. ``check``: how `validate` checks a number: "positive"
    (> 0, finite), "non-negative" (>= 0, finite), "fraction" ([0, 1)), "decay" (>= 1,
    finite), "seed" (an integer in [0, 2**32)). ``choices``: the allowed strings. ``per_run``:
    a grid (`reproduce`, `sweep`) sets it for each run itself, so it is not a grid option.
    """
    return {"help": help, "group": group, "check": check, "choices": choices, "per_run": per_run}


def _field(default: Any, *args, **kwargs) -> Any:
    return field(default=default, metadata=option(*args, **kwargs))


@dataclass
class TrainConfig:
    """Everything that defines a training run (``config.json`` records it under ``config``).

    Lengths: ``scale`` multiplies every schedule length; ``epochs`` says the same as the run's
    length (``scale = epochs / the schedule's paper length``). The speed switches (``amp``,
    ``channels_last``, ``compile``, ``cuda_graphs``) are resolved per device by
    `resolve_switches`; they change speed, not the recipe.
    """

    model: str = _field("plain11", MODEL_NAMES_HELP, group="run", per_run=True)
    schedule: str = _field(
        "sgdr", "learning-rate schedule", group="run", choices=SCHEDULES, per_run=True
    )
    seed: int = _field(0, "initial weights and data order", group="run", check="seed", per_run=True)
    dataset: str = _field("cifar100", "data set", group="data", choices=DATASETS)
    data_dir: str | None = _field(
        None,
        "where the data set is (default: $PLAINNET_DATA, else ~/.cache/plainnet)",
        group="data",
    )
    train_limit: int | None = _field(
        None,
        "class-balanced training subset (images; default: all)",
        group="data",
        check="positive",
    )
    test_limit: int | None = _field(
        None, "class-balanced test subset (images; default: all)", group="data", check="positive"
    )
    scale: float = _field(1.0, "multiply every schedule length", group="recipe", check="positive")
    epochs: float | None = _field(
        None,
        "run length in epochs (sets --scale; default: the schedule's)",
        group="recipe",
        check="positive",
        per_run=True,
    )
    batch_size: int = _field(100, "images per step", group="recipe", check="positive")
    lr_min: float | None = _field(
        None, "schedule's lower bound (default: the paper's)", group="recipe", check="positive"
    )
    lr_max: float | None = _field(
        None, "schedule's upper bound (default: the paper's)", group="recipe", check="positive"
    )
    lr_decay: float | None = _field(
        None,
        "global decay delta of eq. 2, for any schedule (default: the paper's: 10 for CLR, "
        "none for step and SGDR)",
        group="recipe",
        check="decay",
    )
    momentum: float = _field(0.9, "SGD momentum", group="recipe", check="fraction")
    weight_decay: float | None = _field(
        None,
        "PyTorch weight decay (default: the authors' per model, 1e-3 plain, 4e-4 ResNet)",
        group="recipe",
        check="non-negative",
    )
    clip_norm: float = _field(
        10.0, "clip the global gradient norm (0: off)", group="recipe", check="non-negative"
    )
    augment: str = _field("shift", "augmentation", group="recipe", choices=AUGMENTATIONS)
    epochwise_sgdr: bool = _field(
        False, "SGDR stepped once per epoch, as the authors' code did", group="recipe"
    )
    width_mult: float = _field(
        1.0, "multiply the plain family's widths", group="recipe", check="positive"
    )
    device: str = _field("auto", "where to train", group="speed", choices=("auto", "cpu", "cuda"))
    amp: str = _field(
        "auto",
        "training precision: autocast to bf16 or fp16, or off (fp32, as the authors trained); "
        "auto: bf16, fp16 or off by device, the fast path (reproduce trains with off)",
        group="speed",
        choices=AMP,
    )
    tf32: str = _field(
        "auto",
        "TF32 for fp32 matmuls and convolutions on CUDA (the authors' 2018 GPUs had none); "
        "auto: on where the GPU has it, compute capability 8.0 up (reproduce: off)",
        group="speed",
        choices=SWITCH,
    )
    channels_last: str = _field(
        "auto", "channels-last memory format", group="speed", choices=SWITCH
    )
    compile: str = _field("auto", "torch.compile the step", group="speed", choices=SWITCH)
    cuda_graphs: str = _field(
        "auto", "capture the whole step as one CUDA graph", group="speed", choices=SWITCH
    )
    deterministic: bool = _field(False, "bitwise repeatable on the CPU", group="speed")
    eval_precision: str = _field(
        "fp32", "test-set evaluation: fp32 (the authors') or the training autocast",
        group="speed", choices=("fp32", "amp"),
    )  # fmt: skip
    eval_batch_size: int | None = _field(
        None, "test images per batch (default: 1000 CUDA, 100 CPU)", group="speed", check="positive"
    )
    scale_batch: bool = _field(
        False, "torchrun: batch size per process, learning rate scaled", group="processes"
    )
    sync_bn: bool = _field(False, "torchrun: SyncBatchNorm across processes", group="processes")
    tensorboard: bool = _field(False, "also write TensorBoard scalars", group="outputs")
    snapshots: bool = _field(
        True, "keep the weights at the end of each CLR/SGDR cycle", group="outputs"
    )

    @property
    def effective_scale(self) -> float:
        """The factor on every schedule length (``epochs`` said as a scale)."""
        if self.epochs is not None:
            return self.epochs / paper_epochs(self.schedule)
        return self.scale

    def validate(self) -> None:
        """Raise `UserError` (one line) for any option a run cannot start with."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.epochs is not None and self.scale != 1.0:
            raise UserError("give --epochs or --scale, not both (--epochs N means N epochs)")
        if self.lr_min is not None and self.lr_max is not None and self.lr_min >= self.lr_max:
            raise UserError(f"--lr-min {self.lr_min} must be below --lr-max {self.lr_max}")
        try:
            with torch.device("meta"):  # shapes only: no memory, no time
                build_model(self.model, 10, width_mult=self.width_mult)
        except ValueError as err:
            raise UserError(str(err)) from None


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta, name, kind = f.metadata, flag(f.name), f.type.split(" | ")[0]
    if value is None and not f.type.endswith("| None"):
        raise UserError(f"{name} needs a value")
    if kind == "str" and value is not None and not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise UserError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    check = meta.get("check")
    if check is None or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{name} must be a number, got {value!r}")
    if f.type.startswith("int") and not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    ok, wanted = CHECKS[check]
    if not (math.isfinite(value) and ok(value)):
        raise UserError(f"{name} must be {wanted}, got {value}")


CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "a positive number"),
    "non-negative": (lambda v: v >= 0, "a number >= 0"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "decay": (lambda v: v >= 1, "a number >= 1 (1: no decay)"),
    "seed": (lambda v: 0 <= v < SEED_LIMIT, f"an integer in [0, {SEED_LIMIT - 1}]"),
}


def upgrade(stored: dict) -> dict:
    """A ``config`` record of an older plainnet as today's options: options added since then
    take their defaults, and ``amp: on`` (bf16 autocast, before fp16 existed) reads as bf16."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    if values.get("amp") == "on":
        values["amp"] = "bf16"
    return {**dataclasses.asdict(TrainConfig()), **values}


# ---- the device and the speed switches ----


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """CUDA compute capability, None on the CPU (tests replace this to fake a GPU)."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass(frozen=True)
class Switches:
    """The speed switches as resolved for one device, and why (``config.json`` records both).

    ``amp``: "bf16", "fp16" (with a gradient scaler) or "off"; ``tf32``: fp32 matmuls and
    convolutions in TF32 on CUDA; ``cuda_graphs``: the whole training step captured once and
    replayed as one CUDA graph.
    """

    amp: str
    channels_last: bool
    compile: bool
    cuda_graphs: bool
    why: tuple[tuple[str, str], ...] = ()
    tf32: bool = False

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def record(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "why"},
                "why": dict(self.why)}  # fmt: skip


def resolve_switches(
    cfg: TrainConfig, device: torch.device, *, distributed: bool = False
) -> Switches:
    """Turn the ``auto`` switches into choices that work and pay on ``device``.

    On the CPU: channels-last alone (torch.compile measured no faster; bf16 autocast is
    slower without bf16 arithmetic, and where faster it ended short runs less accurate:
    docs/speed.md). On CUDA: bf16 autocast from compute capability 8.0,
    fp16 with a gradient scaler on 7.x (tensor cores without bf16), fp32 below; TF32 from 8.0;
    torch.compile where Triton supports the GPU (7.0 and up); the whole step as one CUDA graph
    in a single process (under torchrun the gradient all-reduce runs between the kernels). An
    explicit ``on``/``bf16`` that cannot work on the device is a `UserError`.
    """
    cap = device_capability(device)
    why: dict[str, str] = {}
    amp = _resolve_amp(cfg.amp, cap, why)
    tf32 = _resolve_tf32(cfg.tf32, cap, why)
    compile_ = _resolve_compile(cfg.compile, cap, why)
    if cfg.cuda_graphs == "on" and cap is None:
        raise UserError("--cuda-graphs on needs --device cuda")
    graphs = cap is not None and (
        cfg.cuda_graphs == "on" or (cfg.cuda_graphs == "auto" and not distributed and amp != "fp16")
    )
    if cfg.cuda_graphs == "auto":
        why["cuda_graphs"] = (
            "CPU" if cap is None else "torchrun" if distributed else "fp16 gradient scaler"
        ) if not graphs else "CUDA, one process"  # fmt: skip
    channels_last = cfg.channels_last != "off"
    return Switches(amp, channels_last, compile_, graphs, tuple(sorted(why.items())), tf32)


def _resolve_amp(asked: str, cap: tuple[int, int] | None, why: dict) -> str:
    if asked == "bf16" and cap is not None and cap < (8, 0):
        raise UserError(
            f"--amp bf16: this GPU (compute capability {cap[0]}.{cap[1]}) has no bf16 "
            "arithmetic; use --amp fp16 or off"
        )
    if asked != "auto":
        return asked
    if cap is None:
        why["amp"] = "CPU: fp32 (bf16 measured less accurate)"
        return "off"
    if cap >= (8, 0):
        why["amp"] = f"capability {cap[0]}.{cap[1]}: bf16"
        return "bf16"
    if cap >= (7, 0):
        why["amp"] = f"capability {cap[0]}.{cap[1]}: tensor cores without bf16"
        return "fp16"
    why["amp"] = f"capability {cap[0]}.{cap[1]}: no tensor cores, fp32"
    return "off"


def _resolve_tf32(asked: str, cap: tuple[int, int] | None, why: dict) -> bool:
    if asked == "on" and (cap is None or cap < (8, 0)):
        where = "--device cuda" if cap is None else "a GPU of compute capability 8.0 or more"
        raise UserError(f"--tf32 on needs {where}")
    if asked != "auto":
        return asked == "on"
    why["tf32"] = "CPU" if cap is None else f"capability {cap[0]}.{cap[1]}"
    return cap is not None and cap >= (8, 0)


def _resolve_compile(asked: str, cap: tuple[int, int] | None, why: dict) -> bool:
    if cap is not None and asked != "off":
        problem = None
        if cap < (7, 0):
            problem = f"Triton needs compute capability 7.0, this GPU has {cap[0]}.{cap[1]}"
        elif not has_triton():
            problem = "Triton is not installed"
        if problem and asked == "on":
            raise UserError(f"--compile on: torch.compile cannot run here ({problem}); use off")
        if problem:
            why["compile"] = problem
            return False
    if asked == "auto":
        why["compile"] = "CUDA" if cap is not None else "CPU: compiling measured no faster"
        return cap is not None
    return asked == "on"
