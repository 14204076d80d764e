"""`plainnet evaluate`: a trained model's test error, per class, per CIFAR-100 superclass, and
the snapshot ensemble of a cyclic run.

A run directory holds what is needed: ``config.json`` names the model and the data,
``checkpoint.pt`` the final weights, ``snapshots/iterNNNNNNNN.pt`` the weights at the end of each
CLR/SGDR cycle (where the rate is at its minimum). A snapshot ensemble (Huang et al. 2017,
"Snapshot Ensembles: Train 1, get M for free") averages the snapshots' softmax outputs: the
models of a cyclic schedule come for free, and averaging them usually beats the final one alone.

The result goes to ``RUN_DIR/evaluation.json`` (`evaluate_path`'s return value): ``test_error``,
``test_loss``, ``per_class_error`` {class: %}, ``coarse_confusion`` (CIFAR-100: 20 x 20 counts,
rows the true superclass, columns the superclass of the predicted fine class) or null,
``ensemble_test_error`` (null without ``--ensemble``), ``ensemble_snapshots`` (epochs) and
``snapshot_test_errors``. Every error is in percent of the test images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from plainnet.data import ImageData, load_dataset
from plainnet.errors import UserError
from plainnet.models import build_model
from plainnet.report import format_table
from plainnet.run_dir import RunDir, load_weights, read_json, write_json
from plainnet.train import TrainConfig, predict, resolve_device, resolve_switches

EVALUATION = "evaluation.json"


@dataclasses.dataclass
class Source:
    """What to evaluate: the weights, and the model and data they belong to."""

    weights: Path  # checkpoint.pt of a run, or any .pt holding a state_dict
    run: RunDir | None  # the run directory, when evaluating one
    cfg: TrainConfig  # model, width_mult, dataset, data_dir, test_limit, eval settings
    num_classes: int | None  # what the run was trained for (None: unknown, a bare checkpoint)


def resolve_source(path: str | Path, overrides: dict) -> Source:
    """A run directory or a checkpoint file, plus command-line ``overrides`` (model, width_mult,
    dataset, data_dir, test_limit, device, eval_batch_size; None values are ignored).

    A checkpoint file inside a run directory (``RUN/checkpoint.pt``, ``RUN/snapshots/*.pt``)
    takes the run's configuration; any other file needs ``--model`` (and the data options).
    """
    path = Path(path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint")
    if path.is_dir():
        run = RunDir(path)
        if not run.config.exists():
            raise UserError(f"{path}: not a run directory (no config.json)")
        if not run.checkpoint.exists():
            raise UserError(f"{path}: no checkpoint.pt yet (the run has not finished an epoch)")
        weights = run.checkpoint
    else:
        weights = path
        run = next(
            (RunDir(p) for p in (path.parent, path.parent.parent) if (p / "config.json").exists()),
            None,
        )
    stored = run.read_config() if run is not None else {}
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in stored.get("config", {}).items() if k in fields}
    if run is None and "model" not in overrides:
        raise UserError(f"{path}: not in a run directory; give --model (and the data options)")
    cfg = TrainConfig(**{**values, **overrides})
    try:
        build_model(cfg.model, 10, width_mult=cfg.width_mult)
    except ValueError as err:
        raise UserError(str(err)) from None
    num_classes = stored.get("resolved", {}).get("num_classes")
    return Source(weights, run if path.is_dir() else None, cfg, num_classes)


def load_model(
    state: object, cfg: TrainConfig, num_classes: int, device: torch.device, channels_last: bool
) -> nn.Module:
    """``cfg.model`` with the weights ``state`` (a state_dict, or a checkpoint holding one)."""
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a full training checkpoint
    if not isinstance(state, dict):
        raise UserError("the checkpoint holds no model weights (expected a state_dict)")
    model = build_model(cfg.model, num_classes, width_mult=cfg.width_mult)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:240]
        raise UserError(
            f"the weights do not fit {cfg.model} with {num_classes} classes ({detail})"
        ) from None
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def fine_to_coarse(fine: torch.Tensor, coarse: torch.Tensor, num_fine: int) -> torch.Tensor | None:
    """The superclass of each fine class, read off (fine, coarse) label pairs; None if a fine
    class does not occur or occurs under two superclasses (then no confusion can be shown)."""
    mapping = torch.full((num_fine,), -1, dtype=torch.int64)
    pairs = torch.unique(torch.stack([fine.cpu(), coarse.cpu()], 1), dim=0)
    if len(pairs) != len(torch.unique(pairs[:, 0])) or len(pairs) != num_fine:
        return None
    mapping[pairs[:, 0]] = pairs[:, 1]
    return mapping


def confusion(true: torch.Tensor, pred: torch.Tensor, n: int) -> torch.Tensor:
    """``n x n`` counts: row = true class, column = predicted class."""
    return torch.bincount(true.cpu() * n + pred.cpu(), minlength=n * n).reshape(n, n)


def per_class_error(labels: torch.Tensor, pred: torch.Tensor, n: int) -> tuple[list, list]:
    """(error % per class, test images per class); a class without images gets None."""
    counts = torch.bincount(labels.cpu(), minlength=n)
    wrong = torch.bincount(labels.cpu()[pred.cpu() != labels.cpu()], minlength=n)
    errors = [
        100.0 * w / c if c else None for w, c in zip(wrong.tolist(), counts.tolist(), strict=True)
    ]
    return errors, counts.tolist()


def error_rate(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 error in % of ``scores`` (logits or probabilities, one row per image)."""
    return (scores.argmax(1) != labels).float().mean().item() * 100


def evaluate_path(
    path: str | Path,
    *,
    ensemble: bool = False,
    last: int | None = None,
    overrides: dict | None = None,
    output: str | Path | None = None,
    data: ImageData | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate a run directory (or a checkpoint file) on its test set; print a summary.

    ``ensemble`` adds the snapshot ensemble (of the ``last`` snapshots, default all) and each
    snapshot alone. The result is written to ``output`` (default ``RUN_DIR/evaluation.json``
    for a run directory, nothing for a bare checkpoint) and returned. ``data`` may be passed
    pre-loaded (the full data set, on the CPU).
    """
    src = resolve_source(path, overrides or {})
    cfg = src.cfg
    if ensemble and src.run is None:
        raise UserError("--ensemble needs a run directory (it averages the run's snapshots)")
    if last is not None and last < 1:
        raise UserError(f"--last must be a positive integer, got {last}")
    snapshots = src.run.snapshot_paths() if ensemble else []
    if ensemble and not snapshots:
        raise UserError(
            f"{src.run.path}: no snapshots to ensemble (a step schedule, --no-snapshots, or no "
            "CLR/SGDR cycle finished yet)"
        )
    snapshots = snapshots[-last:] if last else snapshots
    device = resolve_device(cfg.device)
    # The run's own settings: the same evaluation as train's. CUDA graphs concern the training
    # step alone, so a run trained with them evaluates anywhere.
    switches = resolve_switches(dataclasses.replace(cfg, cuda_graphs="off"), device)

    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    mapping = None
    if data.test_coarse_labels is not None:  # from the whole test set, before any subset
        mapping = fine_to_coarse(data.test_labels, data.test_coarse_labels, data.num_classes)
    data = data.subset(None, cfg.test_limit).to(device)
    if src.num_classes is not None and src.num_classes != data.num_classes:
        raise UserError(
            f"the model was trained for {src.num_classes} classes, {data.name} has "
            f"{data.num_classes}: pass the run's data set (--dataset, --data-dir)"
        )

    def logits_of(weights: Path) -> torch.Tensor:
        model = load_model(
            load_weights(weights), cfg, data.num_classes, device, switches["channels_last"]
        )
        return predict(
            model,
            data.test_images,
            data,
            batch_size=cfg.eval_batch_size,
            amp=switches["amp"],
            channels_last=switches["channels_last"],
        )

    labels = data.test_labels
    logits = logits_of(src.weights)
    pred = logits.argmax(1)  # exactly as train's evaluate, so the errors agree to the bit
    errors, counts = per_class_error(labels, pred, data.num_classes)
    result: dict = {
        "source": str(src.weights),
        "model": cfg.model,
        "dataset": data.name,
        "test_images": len(labels),
        "test_error": error_rate(logits, labels),
        "test_loss": F.cross_entropy(logits, labels).item(),
        "per_class_error": dict(zip(data.classes, errors, strict=True)),
        "per_class_images": dict(zip(data.classes, counts, strict=True)),
        "coarse_classes": None,
        "coarse_error": None,
        "coarse_confusion": None,
        "ensemble_test_error": None,
        "ensemble_test_loss": None,
        "ensemble_snapshots": [],
        "snapshot_test_errors": {},
    }
    if src.run is not None and src.run.summary.exists():
        summary = read_json(src.run.summary)
        result["run_status"] = summary.get("status")
        result["epochs_done"] = summary.get("epochs_done")
    if mapping is not None and data.test_coarse_labels is not None:
        true_coarse = data.test_coarse_labels.cpu()
        pred_coarse = mapping[pred.cpu()]
        result["coarse_classes"] = data.coarse_classes
        result["coarse_error"] = (pred_coarse != true_coarse).float().mean().item() * 100
        n_coarse = len(data.coarse_classes or [])
        result["coarse_confusion"] = confusion(true_coarse, pred_coarse, n_coarse).tolist()

    if snapshots:
        ipe = src.run.read_config()["resolved"]["iters_per_epoch"]

        def epoch_of(path: Path) -> float:  # snapshots are named by iteration
            return round(int(path.stem.removeprefix("iter")) / ipe, 2)

        # log(sum of the members' softmax), accumulated in log space: a confident wrong member
        # puts probabilities far below float32's smallest number, and the loss needs their logs.
        log_total = torch.full_like(logits, -torch.inf)
        for p in snapshots:
            member = logits_of(p)
            result["snapshot_test_errors"][f"{epoch_of(p):g}"] = error_rate(member, labels)
            log_total = torch.logaddexp(log_total, member.log_softmax(1))
        log_mean = log_total - math.log(len(snapshots))
        result["ensemble_test_error"] = error_rate(log_mean, labels)
        result["ensemble_test_loss"] = F.nll_loss(log_mean, labels).item()
        result["ensemble_snapshots"] = [epoch_of(p) for p in snapshots]

    if output is None and src.run is not None:
        output = src.run.path / EVALUATION
    if output is not None:
        write_json(Path(output), result)
    log(format_evaluation(result))
    if output is not None:
        log(f"wrote {output}")
    return result


def format_evaluation(result: dict) -> str:
    """The readable summary `plainnet evaluate` prints: Markdown tables."""
    lines = [
        f"{result['model']} on {result['dataset']} ({result['test_images']:,} test images), "
        f"weights {result['source']}",
        "",
        f"test error {result['test_error']:.2f} %  (loss {result['test_loss']:.4f})",
    ]
    if result["ensemble_test_error"] is not None:
        rows = [
            [f"snapshot epoch {epoch}", f"{err:.2f}"]
            for epoch, err in result["snapshot_test_errors"].items()
        ]
        n = len(result["ensemble_snapshots"])
        rows.append([f"ensemble of {n} snapshots", f"{result['ensemble_test_error']:.2f}"])
        rows.append(["final model", f"{result['test_error']:.2f}"])
        lines += ["", "Snapshot ensemble (mean of softmax outputs):", ""]
        lines.append(format_table(["model", "test error %"], rows))
    per_class = sorted(
        ((k, v) for k, v in result["per_class_error"].items() if v is not None),
        key=lambda kv: -kv[1],
    )
    images = result["per_class_images"]
    lines += ["", "Per-class test error, worst first:", ""]
    lines.append(
        format_table(
            ["class", "images", "error %"], [[k, str(images[k]), f"{v:.1f}"] for k, v in per_class]
        )
    )
    if result["coarse_confusion"] is not None:
        lines += ["", *coarse_summary(result)]
    return "\n".join(lines)


def coarse_summary(result: dict, top: int = 10) -> list[str]:
    """The superclass error, the full confusion matrix and its largest off-diagonal cells."""
    names, matrix = result["coarse_classes"], result["coarse_confusion"]
    n = len(matrix)
    lines = [
        f"Superclass error (fine prediction mapped to its superclass): "
        f"{result['coarse_error']:.2f} %",
        "",
        "Superclass confusion (rows: true, columns: predicted):",
        "",
    ]
    headers = ["true \\ predicted", *(str(j) for j in range(n))]
    rows = [[f"{i} {names[i]}", *(str(c) for c in matrix[i])] for i in range(n)]
    lines.append(format_table(headers, rows))
    cells = sorted(
        ((matrix[i][j], i, j) for i in range(n) for j in range(n) if i != j and matrix[i][j]),
        reverse=True,
    )[:top]
    if cells:
        lines += ["", "Most confused superclasses:", ""]
        lines.append(
            format_table(
                ["true", "predicted as", "images"],
                [[names[i], names[j], str(c)] for c, i, j in cells],
            )
        )
    return lines
