"""Engine session settings: declared once per engine, validated on one path, refused with the allowed
values named (never rounded), and read the same way by the CLI, the server's configuration and
signalling."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from conftest import vcstream_argv
from vcstream.engines.passthrough import PassthroughSettings
from vcstream.engines.registry import ENGINE_NAMES, all_setting_specs, settings_type
from vcstream.engines.seedvc.settings import SeedVCSettings
from vcstream.engines.settings import SettingsError, parse_pairs
from vcstream.engines.world import WorldEngine
from vcstream.engines.world_settings import WorldSettings
from vcstream.service.config import ServiceSettings
from vcstream.service.engine_loader import load_engine
from vcstream.service.signalling import SignallingError, settings_schema, validate_settings


def test_each_engine_declares_its_settings_with_a_schema() -> None:
    for name in ENGINE_NAMES:
        kind = settings_type(name)
        schema = kind().schema()
        assert "block_time" in schema, name
        for setting, spec in schema.items():
            assert spec["type"] in ("number", "integer", "string"), (name, setting)
            assert spec["label"] and spec["help"], (name, setting)
            assert spec["default"] == getattr(kind(), setting)
    seedvc = SeedVCSettings().schema()
    assert seedvc["block_time"] == {
        "type": "number",
        "label": "Block size",
        "help": seedvc["block_time"]["help"],
        "default": 0.18,
        "unit": "s",
        "min": 0.04,
        "max": 1.0,
        "step": 0.02,
    }
    assert seedvc["dtype"]["choices"] == ["fp32", "fp16", "bf16"]
    assert WorldSettings().schema()["block_time"]["step"] == 0.005  # whole 5 ms analysis frames
    assert set(SeedVCSettings().schema(per_call_only=True)) == {"block_time", "diffusion_steps"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"block_time": 0.19},
            r"block_time 0\.19 s is not allowed: 0\.04 to 1 s in steps of 0\.02 s \(nearest: 0\.18 or 0\.2\)",
        ),
        ({"block_time": 1.2}, r"block_time 1\.2 s is not allowed: 0\.04 to 1 s"),
        ({"diffusion_steps": 2.5}, "diffusion_steps must be a whole number"),
        ({"diffusion_steps": 0}, "diffusion_steps 0 is not allowed: 1 to 30"),
        ({"diffusion_steps": True}, "diffusion_steps must be a number"),
        ({"cfg_rate": math.nan}, "cfg_rate must be a number"),
        ({"cfg_rate": "lots"}, "cfg_rate must be a number, got 'lots'"),
        ({"dtype": "int8"}, "dtype 'int8' is not allowed: use one of fp32, fp16, bf16"),
        ({"block_tme": 0.2}, "'block_tme' is not a seedvc setting; seedvc has block_time, crossfade_time"),
        ({"extra_time_ce": 0.2, "extra_time_dit": 0.5}, "extra_time_dit cannot exceed extra_time_ce"),
    ],
)
def test_bad_values_are_refused_naming_what_is_allowed(values: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        SeedVCSettings().updated(values)


def test_values_are_typed_and_kept_exactly_on_the_grid() -> None:
    settings = SeedVCSettings().updated({"block_time": "0.3", "diffusion_steps": 4.0, "cfg_rate": 0})
    assert (settings.block_time, settings.diffusion_steps, settings.cfg_rate) == (0.3, 4, 0.0)
    assert type(settings.diffusion_steps) is int and type(settings.cfg_rate) is float
    # arithmetic noise from a client (0.1 + 0.08) is on the grid, and stored as the grid value
    assert SeedVCSettings().updated({"block_time": 0.1 + 0.08}).block_time == 0.18
    with pytest.raises(SettingsError):
        WorldSettings(block_time=0.102)  # direct construction is checked too


def test_a_caller_may_change_only_per_call_settings() -> None:
    with pytest.raises(
        SettingsError,
        match="set by the server's operator, not per call; per call: block_time, diffusion_steps",
    ):
        SeedVCSettings().updated({"cfg_rate": 0.5}, per_call_only=True)
    defaults = SeedVCSettings(diffusion_steps=4)
    assert settings_schema(defaults)["diffusion_steps"]["default"] == 4
    changed = validate_settings({"block_time": 0.3}, defaults)
    assert changed.values(per_call_only=True) == {"block_time": 0.3, "diffusion_steps": 4}
    for raw, code in (([1], "settings must be an object"), ({"block_time": 0.31}, "nearest: 0.3 or 0.32")):
        with pytest.raises(SignallingError, match=code) as refused:
            validate_settings(raw, defaults)
        assert refused.value.code == "bad_settings" and not refused.value.fatal


def test_one_flag_per_setting_across_engines() -> None:
    specs = all_setting_specs()
    assert specs["block_time"][2] == list(ENGINE_NAMES)
    assert specs["diffusion_steps"][2] == ["seedvc"]
    assert PassthroughSettings().block_time == 0.1


def _vcstream(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        vcstream_argv(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_refuses_settings_the_engine_does_not_take(tmp_path: Path) -> None:
    source = tmp_path / "in.wav"
    source.write_bytes(b"")  # never read: the settings are checked first
    steps = _vcstream("convert", source, "-r", source, "-o", tmp_path / "o.wav", "--diffusion-steps", "3")
    assert steps.returncode == 1 and "--diffusion-steps do(es) not apply to engine world" in steps.stderr
    grid = _vcstream("convert", source, "-r", source, "-o", tmp_path / "o.wav", "--block-time", "0.102")
    assert grid.returncode == 1 and "nearest: 0.1 or 0.105" in grid.stderr
    assert "--diffusion-steps" in _vcstream("rtp", "--help").stdout


def test_server_defaults_come_from_the_environment_and_are_checked_at_load(tmp_path: Path) -> None:
    assert parse_pairs(["diffusion_steps=8", " cfg-rate = 0.5"]) == {
        "diffusion_steps": "8",
        "cfg_rate": "0.5",
    }
    with pytest.raises(SettingsError, match="NAME=VALUE"):
        parse_pairs(["steps"])
    env = {"VCSTREAM_ENGINE": "world", "VCSTREAM_BLOCK_TIME": "0.2", "VCSTREAM_DATA_DIR": str(tmp_path)}
    loaded = load_engine(ServiceSettings.from_env(env))
    assert isinstance(loaded.engine, WorldEngine) and loaded.defaults.block_time == 0.2
    with pytest.raises(SettingsError, match=r"nearest: 0\.1 or 0\.105"):
        load_engine(ServiceSettings.from_env({**env, "VCSTREAM_BLOCK_TIME": "0.102"}))
    with pytest.raises(SettingsError, match="'diffusion_steps' is not a world setting"):
        load_engine(ServiceSettings.from_env({**env, "VCSTREAM_ENGINE_SETTINGS": "diffusion_steps=3"}))
