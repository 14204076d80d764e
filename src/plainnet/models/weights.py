"""Trained weights that leave plainnet: one safetensors file per model, whose metadata says
how to rebuild it (model name, width, classes, the data set's normalisation).

safetensors holds tensors and strings only, so loading a file can never run code, and any
program with the `safetensors` package reads it without plainnet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plainnet.errors import UserError

FORMAT = "plainnet-weights-1"
REQUIRED = ("model", "width_mult", "classes", "mean", "std")


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state to ``path`` with ``meta`` (at least `REQUIRED`: the model name
    for `plainnet.models.build_model`, its ``width_mult``, the class names, and the per-channel
    ``mean``/``std`` on the 0-255 scale that its inputs were normalised with)."""
    from safetensors.torch import save

    from plainnet.run_dir import atomic_write

    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"save_weights: metadata lacks {', '.join(missing)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": FORMAT, "plainnet": json.dumps(meta)})
    path = Path(path)
    atomic_write(path, lambda f: f.write(blob))
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The plainnet metadata of a weights file (a `UserError` for any other file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        meta = json.loads(header["plainnet"]) if header.get("format") == FORMAT else None
    except (KeyError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED):
        raise UserError(f"{path}: safetensors file without plainnet's metadata (not an export)")
    return meta


def load(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model in a weights file written by `save_weights` (``plainnet export``), in eval
    mode on ``device``; ``model.plainnet_meta`` holds its metadata (classes, mean, std, ...)."""
    from safetensors.torch import load_file

    from plainnet.models import build_model

    meta = read_metadata(path)
    try:
        model = build_model(meta["model"], len(meta["classes"]), width_mult=meta["width_mult"])
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    state = load_file(str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise UserError(f"{path}: the weights do not fit {meta['model']} ({detail})") from None
    model.plainnet_meta = meta
    return model.to(device).eval()
