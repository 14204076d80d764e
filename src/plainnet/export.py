"""`plainnet export`: a run's weights as one safetensors file that any program can load
(`plainnet.models.load`, or safetensors and the model's name in the file's metadata)."""

from __future__ import annotations

from pathlib import Path

from plainnet.config import TrainConfig, upgrade
from plainnet.data import load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import load_model
from plainnet.models.weights import save_weights
from plainnet.run_dir import RunDir


def export_run(
    run_dir: str | Path, out: str | Path | None = None, *, snapshot: int | None = None
) -> Path:
    """Write the run's final weights (or those of the snapshot at iteration ``snapshot``) to
    ``out`` (default ``RUN/model.safetensors``), with the model name, width, class names and
    normalisation in the metadata. A file outside the run is never overwritten."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise UserError(f"{run.path}: not a run directory (no config.json)")
    record = run.read_config()
    cfg, resolved = upgrade(record["config"]), record["resolved"]
    weights = run.checkpoint
    if snapshot is not None:
        found = {int(p.stem[4:]): p for p in run.snapshot_paths()}
        if snapshot not in found:
            raise UserError(
                f"{run.path}: no snapshot at iteration {snapshot} (have: {sorted(found)})"
            )
        weights = found[snapshot]
    elif not weights.exists():
        raise UserError(f"{run.path}: no checkpoint.pt yet (the run has not finished an epoch)")
    out = Path(out) if out is not None else run.path / "model.safetensors"
    if out.exists() and out.resolve().parent != run.path.resolve():
        raise UserError(f"{out} exists: choose another --out (a file outside the run is kept)")
    classes, mean, std = data_facts(cfg, record)
    model = load_model(weights, TrainConfig(**cfg), resolved["num_classes"], "cpu")
    summary = run.read_summary() if run.summary.exists() else {}
    meta = {
        "model": cfg["model"], "width_mult": cfg["width_mult"], "classes": classes,
        "mean": mean, "std": std, "dataset": resolved.get("dataset", cfg["dataset"]),
        "source": str(weights), "test_error": summary.get("test_error"),
        "schedule": cfg["schedule"], "seed": cfg["seed"],
    }  # fmt: skip
    return save_weights(out, model, meta)


def data_facts(cfg: dict, record: dict) -> tuple[list[str], list[float], list[float]]:
    """Class names and normalisation: from config.json where recorded, else from the data."""
    identity = record.get("identity") or {}
    stats = record["resolved"].get("normalization")
    if identity.get("classes") and stats:
        return identity["classes"], stats["mean"], stats["std"]
    data = load_dataset(cfg["dataset"], cfg["data_dir"])
    return list(data.classes), list(data.mean), list(data.std)
