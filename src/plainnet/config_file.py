"""``plainnet train --config FILE``: options from a JSON or YAML file, a run's ``config.json``
or a small mapping of options.

Such a file has a few kB, so anything over `MAX_CONFIG_BYTES` is refused before a byte of it
is parsed: PyYAML took 196 s and 4.9 GB of memory for a 52 MB file, only to fail on it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from plainnet.errors import UserError, one_line

MAX_CONFIG_BYTES = 256 * 1024  # a run's config.json has about 2 kB


def read_options(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or YAML file (by its suffix): a run's ``config.json`` or a mapping
    of options (names with ``-`` or ``_``) to single values. A file over `MAX_CONFIG_BYTES`,
    unknown names, a value that is a list or a mapping, and anything but a mapping are one-line
    `UserError`s."""
    from plainnet.config import TrainConfig

    file = Path(path)
    data = read_limited(file)
    if file.suffix.lower() in (".yaml", ".yml"):
        value = parse_yaml(file, data)
    else:
        from plainnet.run_dir import parse_json

        value = parse_json(file, data)
    if isinstance(value, dict) and isinstance(value.get("config"), dict):
        value = value["config"]  # a run's config.json
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected options as a mapping (name: value)")
    options = {str(k).replace("-", "_"): v for k, v in value.items()}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"{file}: unknown option {unknown[0]!r}")
    for name, v in options.items():  # a YAML alias bomb is a list of lists, say: no repr of it
        if not isinstance(v, str | int | float | bool | None):
            kind = {"dict": "mapping"}.get(type(v).__name__, type(v).__name__)
            raise UserError(f"{file}: option {name!r} must be a single value, not a {kind}")
    return options


def read_limited(file: Path) -> bytes:
    """The bytes of ``file``; one over `MAX_CONFIG_BYTES` is refused unread (a pipe or device,
    whose size is unknown, after `MAX_CONFIG_BYTES` + 1 bytes)."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = b"" if size > MAX_CONFIG_BYTES else f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{file}: no such file") from None
    except OSError as err:
        raise UserError(f"{file}: cannot read ({err.strerror or err})") from None
    if size > MAX_CONFIG_BYTES or len(data) > MAX_CONFIG_BYTES:
        raise UserError(
            f"{file}: over {MAX_CONFIG_BYTES // 1024} kB, too large for a file of options (a "
            "run's config.json has a few kB): is it the right file?"
        )
    return data


def parse_yaml(file: Path, data: bytes) -> Any:
    """The YAML document in ``data`` (PyYAML's safe loader: plain values only, no code)."""
    try:
        import yaml
    except ImportError:
        raise UserError(f"{file}: reading YAML needs PyYAML: pip install pyyaml") from None
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as err:
        raise UserError(f"{file}: not readable YAML ({one_line(err)})") from None
    except RecursionError:
        raise UserError(f"{file}: not readable YAML (nested too deeply)") from None
