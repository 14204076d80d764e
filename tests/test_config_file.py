"""``plainnet train --config FILE``: a file of options, refused in one line when it is too large,
too deeply nested or holds more than single values, whatever it claims to be."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from plainnet.cli import main
from plainnet.config_file import MAX_CONFIG_BYTES, read_options


def _padded(suffix: str, size: int) -> str:
    """Valid options (``seed: 1``) padded to exactly ``size`` bytes."""
    head, pad = ("seed: 1\n#", "x") if suffix == ".yaml" else ('{"seed": 1}', " ")
    return head + pad * (size - len(head))


def _train_with(config, tmp_path, capsys) -> tuple[int, str]:
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("size", [MAX_CONFIG_BYTES + 1, 5_000_000])
def test_a_config_file_over_the_limit_is_refused_unparsed(
    tmp_path, capsys, monkeypatch, suffix, size
):
    def parse(*_args, **_kwargs):
        raise AssertionError("a file over the limit was parsed")

    monkeypatch.setattr(yaml, "safe_load", parse)
    monkeypatch.setattr(json, "loads", parse)
    config = tmp_path / f"options{suffix}"
    config.write_text(_padded(suffix, size))
    start = time.perf_counter()
    code, err = _train_with(config, tmp_path, capsys)
    assert time.perf_counter() - start < 1.0
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"plainnet: error: {config}: over {MAX_CONFIG_BYTES // 1024} kB")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_at_the_limit_is_read(tmp_path, suffix):
    config = tmp_path / f"options{suffix}"
    config.write_text(_padded(suffix, MAX_CONFIG_BYTES))
    assert config.stat().st_size == MAX_CONFIG_BYTES
    assert read_options(str(config)) == {"seed": 1}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_nested_too_deeply_is_one_line(tmp_path, capsys, suffix):
    config = tmp_path / f"options{suffix}"
    config.write_text('{"model": ' + "[" * 5000)  # YAML reads JSON too
    code, err = _train_with(config, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"plainnet: error: {config}: ") and "(nested too deeply)" in err


def _alias_bomb(levels: int) -> str:
    """YAML of a few hundred bytes whose ``model`` holds 10 ** ``levels`` strings: each level
    a list of ten aliases of the one before (at 9 levels, printing it took 580 MB)."""
    lists = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    lists += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return f"model: [{', '.join(lists)}]\n"


def test_a_config_value_that_is_not_a_single_value_is_named_not_printed(tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(_alias_bomb(5))
    code, err = _train_with(config, tmp_path, capsys)
    assert code == 2
    assert err == f"plainnet: error: {config}: option 'model' must be a single value, not a list\n"
    config.write_text("seed: 1\nlr_min: {low: 0.01}\n")
    code, err = _train_with(config, tmp_path, capsys)
    assert err.endswith("option 'lr_min' must be a single value, not a mapping\n")
