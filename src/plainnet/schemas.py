"""The schema of every JSON file plainnet reads back, and the one check against it: valid JSON
of the wrong form (a list where an object belongs, a string for a number) is one line naming
the file and the key, never a traceback deep in a reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plainnet.errors import UserError


def _maybe(kind: type, *keys: str) -> dict:
    """``keys`` that may hold ``kind``, be null (how NaN is stored) or be absent."""
    return dict.fromkeys(keys, (kind, None))


#: ``summary.json``; `check_summary` adds that a finished run has a numeric test_error.
SUMMARY_SCHEMA = {
    "status": str,
    **_maybe(str, "model", "schedule", "error"),
    **_maybe(int, "seed", "epochs", "epochs_done", "best_epoch", "parameters"),
    **_maybe(float, "test_error", "test_loss", "train_error", "best_test_error"),
    **_maybe(float, "mean_train_seconds"),
}
#: ``config.json`` as `plainnet train` writes it.
CONFIG_SCHEMA = {"config": dict, "resolved": dict, "environment": dict, **_maybe(list, "command")}
#: ``evaluation.json`` as `plainnet evaluate` writes it.
EVALUATION_SCHEMA = {
    "test_error": float,
    **_maybe(float, "test_loss", "coarse_error", "ensemble_test_error", "ensemble_test_loss"),
    **_maybe(str, "source", "model", "dataset", "run_status"),
    **_maybe(int, "test_images", "epochs_done"),
    **_maybe(dict, "per_class_error", "per_class_images", "snapshot_test_errors"),
    **_maybe(list, "coarse_classes", "coarse_confusion", "ensemble_snapshots"),
}
#: One line of ``metrics.jsonl``.
METRICS_ROW_SCHEMA = {
    "epoch": int,
    **_maybe(int, "iterations"),
    **_maybe(float, "lr", "train_loss", "train_error", "test_loss", "test_error"),
    **_maybe(float, "train_seconds", "eval_seconds", "images_per_second", "clipped_fraction"),
}
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_KINDS |= {list: "a list", dict: "an object"}


def _fits(value: Any, types: tuple) -> bool:
    """Python's bool is an int: JSON's true is neither an integer nor a number here."""
    if value is None or isinstance(value, bool):
        return (None if value is None else bool) in types
    return any(isinstance(value, (int, float) if t is float else t) for t in types if t)


def _found(value: Any) -> str:
    text = _KINDS[type(value)] if isinstance(value, dict | list) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_schema(label: Any, value: Any, schema: dict) -> None:
    """Raise a one-line `UserError` starting with ``label`` (the file's path, or the path and
    a line number) unless ``value`` is a JSON object of ``schema``.
    ``schema`` maps keys to a type or a tuple of types: ``int`` (an integer, never true/false),
    ``float`` (any number), ``str``, ``list``, ``dict``, ``bool``. A key whose types include
    ``None`` may be null or absent; every other key is required. Other keys are not checked.
    """
    if not isinstance(value, dict):
        raise UserError(f"{label}: should hold a JSON object, found {_found(value)}")
    for key, types in schema.items():
        name, types = json.dumps(key), types if isinstance(types, tuple) else (types,)
        if key not in value and None not in types:
            raise UserError(f"{label}: {name} is missing")
        if key in value and not _fits(value[key], types):
            kinds = " or ".join(_KINDS.get(t, "null") for t in types)
            raise UserError(f"{label}: {name} should be {kinds}, found {_found(value[key])}")


def check_summary(path: Path, value: Any) -> dict:
    """``value`` if it has `SUMMARY_SCHEMA` and, when finished, its result (readers print it)."""
    check_schema(path, value, SUMMARY_SCHEMA)
    if value["status"] == "finished" and value.get("test_error") is None:
        raise UserError(f'{path}: status is "finished" but "test_error" is missing or null')
    return value
