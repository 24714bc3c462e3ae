"""The TOML config: defaults, relative paths, and an error that names the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.agent.config import load_config
from ferry.agent.errors import ConfigError

MINIMAL = 'state_dir = "state"\nhardware = "x86_64"\n'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path)


def test_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    assert config.state_dir == tmp_path / "state"
    assert config.models_dir == tmp_path / "state" / "models"
    assert config.install.keep_versions == 2 and config.mqtt.enabled and not config.probe.configured


def test_probe_command_may_be_a_string(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL + "[probe]\ncommand = \"python3 -c 'print(1)'\"\n")
    assert config.probe.command == ("python3", "-c", "print(1)")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('hardware = "x86_64"\n', "state_dir"),
        ('state_dir = "s"\n', "hardware"),
        (MINIMAL + "colour = 1\n", "colour"),
        (MINIMAL + "[poll]\nintervall_s = 5\n", "poll.intervall_s"),
        (MINIMAL + '[poll]\ninterval_s = "often"\n', "poll.interval_s"),
        (MINIMAL + "[poll]\njitter = 3\n", "poll.jitter"),
        (MINIMAL + "[install]\nkeep_versions = 1\n", "install.keep_versions"),
        (MINIMAL + "[install]\nuse_deltas = 1\n", "install.use_deltas"),
        (MINIMAL + '[server]\nurl = "ftp://x"\n', "server.url"),
        (MINIMAL + '[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        (MINIMAL + '[probe]\nentry_point = "not a function"\n', "probe.entry_point"),
        (MINIMAL + '[probe]\ncommand = ["a"]\nentry_point = "m:f"\n', "probe.entry_point"),
        (MINIMAL + "[probe]\ntimeout_s = -1\n", "probe.timeout_s"),
        (MINIMAL + "[report]\nbatch = 1000\n", "report.batch"),
        (MINIMAL + '[tags]\n"bad key" = "x"\n', "tags.bad key"),
        (MINIMAL + 'log_level = "loud"\n', "log_level"),
        (MINIMAL + 'device_id = "a/b"\n', "device_id"),
    ],
)
def test_bad_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert f"'{key}'" in str(err.value) and err.value.code == "config_invalid"


def test_not_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "state_dir = [unclosed\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
