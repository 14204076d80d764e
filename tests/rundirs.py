"""Hand-written run directories, as `plainnet train` leaves them, for the report's tests.

A test chooses a run's final test error, its seconds per epoch, the device it ran on and what
its ``auto`` switches resolved to; everything else is a fixed, plausible record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

SECONDS = {"plain11": 40.0, "resnet110": 170.0}  # a run's seconds per epoch, plus its seed


def write_run(
    root: Path,
    model: str,
    schedule: str,
    seed: int,
    error: float,
    *,
    status: str = "finished",
    epochs: int = 4,
    done: int = 4,
    scale: float = 1.0,
    dataset: str = "cifar100",
    options: dict | None = None,
    name: str | None = None,
    seconds: float | None = None,
    device: str = "Test GPU",
    resolved: dict | None = None,
) -> Path:
    """A run directory: config, per-epoch metrics (the last epoch's test error is ``error``)
    and summary. ``seconds`` per epoch defaults to `SECONDS` of the model plus the seed;
    ``resolved`` adds to what the run's ``auto`` switches resolved to (amp "off" by default)."""
    path = root / (name or f"{model}-{schedule}-s{seed}")
    path.mkdir(parents=True)
    seconds = SECONDS.get(model, 10.0) + seed if seconds is None else seconds
    config = {
        "config": {"model": model, "schedule": schedule, "seed": seed, "scale": scale},
        "resolved": {"iters_per_epoch": 50, "dataset": dataset, "amp": "off", **(resolved or {})},
        "environment": {"plainnet": "0.1.0", "torch": "2.x", "device_name": device},
    }
    config["config"].update({"dataset": dataset, "batch_size": 100, "epochs": None})
    config["config"].update(options or {})
    (path / "config.json").write_text(json.dumps(config))
    rows = [
        {"epoch": e, "test_error": error + 10.0 * (done - e), "train_seconds": seconds}
        for e in range(1, done + 1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "status": status,
        "model": model,
        "schedule": schedule,
        "seed": seed,
        "epochs": epochs,
        "epochs_done": done,
        "test_error": error,
        "best_test_error": error,
        "mean_train_seconds": seconds,
        "parameters": 1000,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_grid(
    root: Path,
    errors: Mapping[tuple[str, str], Sequence[float]],
    *,
    name: str | None = None,
    devices: Sequence[str] | None = None,
    **kwargs,
) -> list[Path]:
    """One run per seed of each (model, schedule): seed i finishes with ``errors[...][i]`` and
    ran on ``devices[i]``. ``kwargs`` go to every `write_run`; a ``name`` is formatted with
    the run's model, schedule and seed (``"{model}-{schedule}-delta4-s{seed}"``)."""
    paths = []
    for (model, schedule), values in errors.items():
        for seed, error in enumerate(values):
            label = name.format(model=model, schedule=schedule, seed=seed) if name else None
            where = {"device": devices[seed]} if devices else {}
            paths.append(
                write_run(root, model, schedule, seed, error, name=label, **where, **kwargs)
            )
    return paths
