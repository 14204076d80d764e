"""Trained weights that leave plainnet: one safetensors file per model, whose metadata says
how to rebuild it (model name, width, classes, the data set's normalisation).

safetensors holds tensors and strings only, so loading a file can never run code, and any
program with the `safetensors` package reads it without plainnet. `load` gives the network
with what a program needs to classify images as the run did: ``model.classes`` and
``model.preprocess`` (a `Preprocess`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plainnet.data.augment import normalize
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
    if not _well_formed(meta):
        raise UserError(f"{path}: plainnet metadata with malformed classes, mean or std")
    return meta


def _well_formed(meta: dict[str, Any]) -> bool:
    """Class names a non-empty list of strings; mean and std three finite numbers, std > 0."""
    classes, mean, std = meta["classes"], meta["mean"], meta["std"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return False
    stats = [*mean, *std] if isinstance(mean, list) and isinstance(std, list) else []
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in stats)
    return len(stats) == 6 and numbers and all(map(math.isfinite, stats)) and min(std) > 0


def load(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model in a weights file written by `save_weights` (``plainnet export``), in eval
    mode on ``device``, with three attributes: ``model.classes`` (the class names, by output
    index), ``model.preprocess`` (a `Preprocess`: images to the model's input, normalised as
    in training) and ``model.plainnet_meta`` (all the metadata: mean, std, test_error, ...)."""
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
    model.classes = list(meta["classes"])
    model.preprocess = Preprocess(tuple(meta["mean"]), tuple(meta["std"]))
    return model.to(device).eval()


@dataclass(frozen=True)
class Preprocess:
    """Images to a network's input, normalised exactly as plainnet's training step does
    (`plainnet.data.normalize`): ``(x - mean) / std`` per channel, ``x`` on the 0-255 scale.

    Call it on a uint8 tensor (values 0-255), a float tensor (values in [0, 1]), either
    ``(N, 3, H, W)`` or ``(3, H, W)``, or a PIL image (converted to RGB). It returns float32
    ``(N, 3, H, W)`` on the input's device (a PIL image: the CPU); uint8 images and the same
    images divided by 255 give the same result to the bit. Anything else is a `ValueError`.
    """

    mean: tuple[float, float, float]  # per channel (R, G, B), on the 0-255 scale
    std: tuple[float, float, float]  # ditto

    def __call__(self, images: Any) -> torch.Tensor:
        x = _as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            layout = (
                " (channels first: permute (H, W, 3) to (3, H, W))" if x.shape[-1:] == (3,) else ""
            )
            raise ValueError(
                f"expected images (N, 3, H, W) or (3, H, W) with 3 colour channels, got shape "
                f"{tuple(x.shape)}{layout}"
            )
        if x.dtype == torch.uint8:
            return normalize(x, self.mean, self.std)
        if not x.is_floating_point():
            raise ValueError(f"expected uint8 (0-255) or a float tensor (0-1), got {x.dtype}")
        low, high = x.aminmax() if x.numel() else (0, 0)
        if not (0 <= low <= high <= 1):  # also false for NaN
            raise ValueError(f"floats must be in [0, 1], found {float(low):g} to {float(high):g}")
        # (u / 255) * 255 is u again in float32 for every byte u: the same input to the bit.
        return normalize(x.to(torch.float32) * 255, self.mean, self.std)


def _as_tensor(images: Any) -> torch.Tensor:
    """A tensor as it is; a PIL image as uint8 (3, H, W) RGB."""
    if isinstance(images, torch.Tensor):
        return images
    from PIL import Image

    if isinstance(images, Image.Image):
        rgb = images.convert("RGB")  # grey to R = G = B, alpha dropped, palette looked up
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    kind = type(images)
    raise ValueError(
        f"expected a torch tensor or a PIL image, not {kind.__module__}.{kind.__name__}"
    )
