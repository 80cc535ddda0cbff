"""Configuration: precedence, invalid values refused with one line, the docs table in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from picofleet.common.errors import ConfigError
from picofleet.gateway.config import SETTINGS, load_config
from tests.helpers.gateway import run_gateway_command

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_enm_and_data_dir() -> None:
    config = load_config({}, {})
    assert config.port == 1337
    assert config.db_path == Path("/data/database/enm.db")
    assert config.assets_directory == Path("/data/assets")
    assert config.update_retries == 1
    assert config.config_loop_delay == 10


def test_data_flag_moves_everything_but_enm_variables_still_override(tmp_path: Path) -> None:
    config = load_config({"data": str(tmp_path)}, {})
    assert config.db_path == tmp_path / "database" / "enm.db"
    assert config.assets_directory == tmp_path / "assets"
    config = load_config({"data": str(tmp_path)}, {"ENM_DB_DIRECTORY": "/elsewhere", "ENM_DB_FILE": "x.db"})
    assert config.db_path == Path("/elsewhere/x.db")
    assert config.assets_directory == tmp_path / "assets"


def test_precedence_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yml"
    config_file.write_text("port: 7000\nupdate_retries: 4\nlog_level: debug\n")
    env = {"PICOFLEET_PORT": "7100", "PICOFLEET_CONFIG": str(config_file)}
    config = load_config({"port": "7200"}, env)
    assert config.port == 7200  # flag
    config = load_config({}, env)
    assert config.port == 7100  # environment
    assert config.update_retries == 4  # file
    assert config.log_level == "debug"  # file
    assert config.config_loop_delay == 10  # default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENM_UPDATE_RETRIES": "abc"}, "invalid update_retries 'abc' (from ENM_UPDATE_RETRIES)"),
        ({"ENM_UPDATE_RETRIES": "-1"}, "whole number"),
        ({"ENM_CONFIG_LOOP_DELAY": "0"}, "invalid config_loop_delay"),
        ({"ENM_LOG_LEVEL": "loud"}, "must be one of debug, info"),
        ({"PICOFLEET_PORT": "70000"}, "TCP port number"),
        ({"PICOFLEET_SIMULATE": "four"}, "is not N or N:BOARD"),
        ({"PICOFLEET_FLEET_URL": "ftp://x"}, "http:// or https://"),
    ],
)
def test_invalid_values_are_refused_with_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({}, env)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_config_file_problems_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config({}, {}, config_file=str(bad))
    bad.write_text("prot: 1337\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config({}, {}, config_file=str(bad))
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config({}, {}, config_file=str(tmp_path / "missing.yml"))


def test_gateway_command_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    result = run_gateway_command(tmp_path, "--port", "x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "picofleet gateway: invalid port 'x' (from --port): must be a TCP port number between 0 and 65535 "
        "(0: any free port)"
    ]


def test_unknown_simulated_board_type_is_refused(tmp_path: Path) -> None:
    result = run_gateway_command(tmp_path, "--port", "0", "--simulate", "2:esp8266")
    assert result.returncode == 2
    assert "invalid simulate board type 'esp8266' (known: pico2-ice, rp2040, rp2350)" in result.stderr


def test_docs_table_lists_every_setting_with_its_default() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(none)"
        flag = f"`{setting.flag}`" if setting.flag else "–"
        assert f"| `{setting.name}` | `{setting.env}` | {flag} | {default} |" in doc, setting.name
