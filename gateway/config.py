"""Gateway configuration: one table of settings, four sources, one precedence.

Every setting is resolved on its own, first match wins:

1. its command-line flag (``picofleet gateway --port 8000``),
2. its environment variable (ENM_* names keep edge-node-manager's meaning; new ones are PICOFLEET_*),
3. the YAML file given by ``--config FILE`` or ``PICOFLEET_CONFIG`` (keys are the setting names),
4. its default. The defaults of ``db_directory`` and ``assets_directory`` derive from ``data``
   (``--data DIR`` puts everything under DIR), so an explicit ENM_DB_DIRECTORY or
   ENM_ASSETS_DIRECTORY still overrides them.

An invalid value stops the gateway before it starts with one line naming the setting, where it
came from and what is accepted (:class:`ConfigError`). docs/configuration.md lists the table;
tests/test_config.py keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from picofleet.common.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _number(value: str, convert: Callable[[str], Any], low: float, high: float, meaning: str) -> Any:
    try:
        number = convert(value.strip())
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"must be {meaning}")
    return number


def _port(value: str) -> int:
    return _number(value, int, 0, 65535, "a TCP port number between 0 and 65535 (0: any free port)")


def _whole(value: str) -> int:
    return _number(value, int, 0, 10_000, "a whole number between 0 and 10000")


def _positive_size(value: str) -> int:
    return _number(value, int, 1, 2**40, "a number of bytes > 0")


def _seconds(value: str) -> float:
    return _number(value, float, 0.001, 86_400, "a number of seconds between 0.001 and 86400")


def _level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return "warning" if level == "warn" else level


def _path(value: str) -> Path:
    return Path(_text(value)).expanduser()


def _names(value: str) -> frozenset[str]:
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def parse_simulate(value: str) -> tuple[tuple[int, str], ...]:
    """Parse ``N``, ``N:BOARD`` or a comma-separated list of them (``4,2:rp2040``)."""
    groups: list[tuple[int, str]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        count_text, _, board = part.partition(":")
        try:
            count = int(count_text)
        except ValueError:
            raise ValueError(f"'{part}' is not N or N:BOARD (for example 4 or 2:rp2040)") from None
        if not 0 <= count <= 256:
            raise ValueError(f"'{part}': the number of boards must be between 0 and 256")
        groups.append((count, board.strip() or "pico2-ice"))
    return tuple(groups)


USB_DISCOVERY_MODES = ("auto", "udev", "sysfs", "off")


def _usb_discovery(value: str) -> str:
    mode = value.strip().lower()
    if mode not in USB_DISCOVERY_MODES:
        raise ValueError(f"must be one of {', '.join(USB_DISCOVERY_MODES)}")
    return mode


def _optional_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _optional_text(value: str) -> str | None:
    return value.strip() or None


API_KEY_MIN_LENGTH = 16


def _optional_api_key(value: str) -> str | None:
    """``PICOFLEET_API_KEY``: empty (no key: the API is open, as ENM's), or 16 to 4096 printable
    ASCII characters without spaces (it travels in the ``X-Api-Key`` header)."""
    value = value.strip()
    if not value:
        return None
    if not API_KEY_MIN_LENGTH <= len(value) <= 4096 or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(
            f"must be {API_KEY_MIN_LENGTH} to 4096 printable ASCII characters without spaces "
            "(e.g. the output of `openssl rand -hex 24`)"
        )
    return value


def _optional_path(value: str) -> Path | None:
    return Path(value.strip()).expanduser() if value.strip() else None


def _optional_app_id(value: str) -> int | None:
    if not value.strip():
        return None
    return _number(value, int, 1, 2**31 - 1, "a balena application id: a whole number > 0")


def _reservation_seconds(value: str) -> int:
    return _number(value, int, 1, 366 * 86_400, "a whole number of seconds between 1 and 31622400")


@dataclass(frozen=True)
class Setting:
    """One configuration setting: where it can come from, how it is parsed, what it means."""

    name: str
    env: str
    flag: str | None
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    """A secret: its value is never shown (not in an error about it, nor in the config's repr)."""


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "PICOFLEET_HOST", "--host", "0.0.0.0", _text, "address the HTTP API listens on"),
    Setting("port", "PICOFLEET_PORT", "--port", "1337", _port, "port of the HTTP API (ENM's 1337)"),
    Setting(
        "data",
        "PICOFLEET_DATA",
        "--data",
        "/data",
        _path,
        "directory holding the database, the asset cache and the virtual boards",
    ),
    Setting("db_directory", "ENM_DB_DIRECTORY", None, "{data}/database", _path, "directory of the database"),
    Setting("db_file", "ENM_DB_FILE", None, "enm.db", _text, "file name of the database"),
    Setting(
        "assets_directory",
        "ENM_ASSETS_DIRECTORY",
        None,
        "{data}/assets",
        _path,
        "directory of the firmware asset cache",
    ),
    Setting("log_level", "ENM_LOG_LEVEL", "--log-level", "info", _level, "log level of the gateway"),
    Setting(
        "dependent_log_level",
        "DEPENDENT_LOG_LEVEL",
        None,
        "info",
        _level,
        "log level of the lines the boards log",
    ),
    Setting(
        "config_loop_delay",
        "ENM_CONFIG_LOOP_DELAY",
        None,
        "10",
        _seconds,
        "seconds between two passes of the process loop (polls of the fleet's target state)",
    ),
    Setting(
        "update_retries",
        "ENM_UPDATE_RETRIES",
        None,
        "1",
        _whole,
        "times a failed firmware update is retried (with exponential back-off)",
    ),
    Setting(
        "lock_file_location",
        "ENM_LOCK_FILE_LOCATION",
        None,
        "/tmp/balena/updates.lock",
        _path,
        "the balena update lock taken while boards are flashed",
    ),
    Setting(
        "boot_dir",
        "PICOFLEET_BOOT_DIR",
        None,
        "{data}/boot.d",
        _path,
        "directory of the user boot scripts run at start (docs/balena.md)",
    ),
    Setting(
        "boot_script_timeout",
        "PICOFLEET_BOOT_SCRIPT_TIMEOUT",
        None,
        "30",
        _seconds,
        "seconds a boot script may run before it is stopped",
    ),
    Setting(
        "simulate",
        "PICOFLEET_SIMULATE",
        "--simulate",
        "",
        parse_simulate,
        "virtual boards to add: N (pico2-ice) or N:BOARD, comma-separated",
    ),
    Setting(
        "usb_discovery",
        "PICOFLEET_USB_DISCOVERY",
        None,
        "auto",
        _usb_discovery,
        "how real USB boards are found: auto (udev, else sysfs polling), udev, sysfs or off",
    ),
    Setting(
        "disable_plugins",
        "PICOFLEET_DISABLE_PLUGINS",
        None,
        "",
        _names,
        "comma-separated plugin names not to load",
    ),
    Setting("fleet_url", "PICOFLEET_FLEET_URL", "--fleet", "", _optional_url, "URL of the fleet service"),
    Setting(
        "provisioning_key",
        "PICOFLEET_PROVISIONING_KEY",
        "--provisioning-key",
        "",
        _optional_text,
        "the fleet's provisioning key (used once, to provision this gateway); a flag shows in ps: "
        "prefer the environment or provisioning_key_file",
    ),
    Setting(
        "provisioning_key_file",
        "PICOFLEET_PROVISIONING_KEY_FILE",
        "--provisioning-key-file",
        "",
        _optional_path,
        "a file holding the provisioning key (instead of provisioning_key; keep it mode 0600)",
    ),
    Setting(
        "api_key",
        "PICOFLEET_API_KEY",
        None,
        "",
        _optional_api_key,
        "a key the API's state-changing ENM routes then require (X-Api-Key, or the control panel's "
        "sign-in; docs/api.md); none: the API is open, as ENM's",
        secret=True,
    ),
    Setting(
        "api_key_file",
        "PICOFLEET_API_KEY_FILE",
        "--api-key-file",
        "",
        _optional_path,
        "a file holding the API key (instead of api_key; keep it mode 0600)",
    ),
    Setting(
        "dependent_app_id",
        "PICOFLEET_DEPENDENT_APP_ID",
        None,
        "",
        _optional_app_id,
        "on balena: the appId of the dependent application whose devices the boards are "
        "(the supervisor's proxyvisor, docs/balena.md); ignored outside balena and with fleet_url",
    ),
    Setting(
        "assets_max_bytes",
        "PICOFLEET_ASSETS_MAX_BYTES",
        None,
        str(1024**3),
        _positive_size,
        "bound of the asset cache; assets in use are kept even beyond it (docs/assets.md)",
    ),
    Setting(
        "max_upload_bytes",
        "PICOFLEET_MAX_UPLOAD_BYTES",
        None,
        str(32 * 1024 * 1024),
        _positive_size,
        "largest firmware upload the API accepts",
    ),
    Setting(
        "max_bitstream_bytes",
        "PICOFLEET_MAX_BITSTREAM_BYTES",
        None,
        str(2 * 1024 * 1024),
        _positive_size,
        "largest FPGA bitstream upload (.asc or .bin) the API accepts",
    ),
    Setting(
        "micropython_uf2",
        "PICOFLEET_MICROPYTHON_UF2",
        None,
        "",
        _optional_path,
        "MicroPython UF2 flashed onto a real pico2-ice before its evaluation firmware is copied",
    ),
    Setting(
        "reservation_seconds",
        "PICOFLEET_RESERVATION_SECONDS",
        None,
        "3600",
        _reservation_seconds,
        "how long a reservation of boards lasts when the client does not say",
    ),
    Setting(
        "reservation_max_seconds",
        "PICOFLEET_RESERVATION_MAX_SECONDS",
        None,
        "86400",
        _reservation_seconds,
        "the longest reservation (or extension) a client may ask for",
    ),
)

SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}
CONFIG_FILE_ENV = "PICOFLEET_CONFIG"


@dataclass(frozen=True)
class GatewayConfig:
    """The resolved configuration of one gateway process."""

    host: str
    port: int
    data: Path
    db_directory: Path
    db_file: str
    assets_directory: Path
    log_level: str
    dependent_log_level: str
    config_loop_delay: float
    update_retries: int
    lock_file_location: Path
    boot_dir: Path
    boot_script_timeout: float
    simulate: tuple[tuple[int, str], ...]
    usb_discovery: str
    disable_plugins: frozenset[str]
    fleet_url: str | None
    provisioning_key: str | None
    provisioning_key_file: Path | None
    api_key: str | None = field(repr=False)
    api_key_file: Path | None
    dependent_app_id: int | None
    assets_max_bytes: int
    max_upload_bytes: int
    max_bitstream_bytes: int
    micropython_uf2: Path | None
    reservation_seconds: int
    reservation_max_seconds: int

    @property
    def data_dir(self) -> Path:
        """The data directory (``--data``)."""
        return self.data

    @property
    def db_path(self) -> Path:
        """Full path of the TinyDB file."""
        return self.db_directory / self.db_file


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"configuration file {path} is not valid YAML{line}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"configuration file {path} must be a mapping of setting: value")
    unknown = sorted(str(key) for key in content if key not in SETTINGS_BY_NAME)
    if unknown:
        raise ConfigError(
            f"configuration file {path}: unknown setting {unknown[0]!r} "
            f"(known: {', '.join(SETTINGS_BY_NAME)})"
        )
    return content


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> GatewayConfig:
    """Resolve every setting from flags > environment > YAML file > default.

    ``flags`` maps setting names to command-line values (``None`` = flag not given).
    Raises :class:`ConfigError` with one line for the first invalid value.
    """
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(CONFIG_FILE_ENV) or None
    from_file = _read_config_file(config_file) if config_file else {}

    resolved: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:  # "data" comes before the settings whose defaults derive from it
        if setting.name in flags:
            raw, source = str(flags[setting.name]), f"{setting.flag}"
        elif setting.env in environ:
            raw, source = environ[setting.env], setting.env
        elif setting.name in from_file:
            raw, source = _yaml_text(from_file[setting.name]), f"{setting.name} in {config_file}"
        else:
            raw, source = setting.default.format(data=resolved.get("data", "")), "default"
        try:
            resolved[setting.name] = setting.parse(raw)
        except ValueError as error:
            shown = "value" if setting.secret else repr(raw)
            raise ConfigError(f"invalid {setting.name} {shown} (from {source}): {error}") from None
        sources[setting.name] = source
    if resolved["provisioning_key_file"] is not None:
        if resolved["provisioning_key"] is not None:
            raise ConfigError(
                f"provisioning_key (from {sources['provisioning_key']}) and provisioning_key_file "
                f"(from {sources['provisioning_key_file']}) both give the provisioning key: give one"
            )
        resolved["provisioning_key"] = read_key_file(resolved["provisioning_key_file"])
    if resolved["api_key_file"] is not None:
        if resolved["api_key"] is not None:
            raise ConfigError(
                f"api_key (from {sources['api_key']}) and api_key_file "
                f"(from {sources['api_key_file']}) both give the API key: give one"
            )
        key = read_key_file(resolved["api_key_file"], "api_key_file")
        try:
            resolved["api_key"] = _optional_api_key(key)
        except ValueError as error:
            raise ConfigError(f"the key in api_key_file {resolved['api_key_file']} {error}") from None
    return GatewayConfig(**resolved)


def read_key_file(path: Path, setting: str = "provisioning_key_file") -> str:
    """The key in ``path`` (surrounding white space dropped), else ConfigError naming ``setting``."""
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read(4097).strip()
    except OSError as error:
        raise ConfigError(f"cannot read {setting} {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting} {path} is not UTF-8 text") from None
    if not key or len(key) > 4096 or len(key.split()) != 1:
        raise ConfigError(f"{setting} {path} must hold the key alone, on one line")
    return key
