"""`picofleet gateway`: run the gateway (ENM API on :1337, boards, virtual boards)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence

from picofleet.common.errors import ConfigError
from picofleet.gateway.config import SETTINGS_BY_NAME, GatewayConfig, load_config

FLAG_SETTINGS = (
    "host",
    "port",
    "data",
    "simulate",
    "fleet_url",
    "provisioning_key",
    "provisioning_key_file",
    "api_key_file",
    "log_level",
)


def add_gateway_flags(
    parser: argparse.ArgumentParser,
    names: Sequence[str] = FLAG_SETTINGS,
    fixed: Mapping[str, str] | None = None,
) -> None:
    """The flags shared by `gateway` and `demo`; each is a setting of gateway/config.py.

    ``names``: the settings offered (default all of ``FLAG_SETTINGS``); ``fixed``: settings the
    command gives a default of its own (the demo's ``--data demo-data``), shown instead of the
    gateway's, without the environment variable (the command's default wins over it).
    """
    fixed = fixed or {}
    for name in names:
        setting = SETTINGS_BY_NAME[name]
        assert setting.flag is not None, f"setting {name} has no flag"
        source = (
            f"default {fixed[name]}"
            if name in fixed
            else f"env {setting.env}; default {setting.default or 'none'}"
        )
        parser.add_argument(setting.flag, dest=name, default=None, help=f"{setting.help} ({source})")
    parser.add_argument(
        "--config",
        dest="config_file",
        default=None,
        help="YAML file of settings (env PICOFLEET_CONFIG); flags and environment win over it",
    )


def config_from_args(args: argparse.Namespace, **overrides: object) -> GatewayConfig:
    """Resolve the configuration from the parsed flags (flags > environment > file > defaults)."""
    flags = {name: getattr(args, name, None) for name in FLAG_SETTINGS}  # the demo offers fewer
    flags.update({key: value for key, value in overrides.items() if flags.get(key) is None})
    return load_config(flags, config_file=args.config_file)


def serve(config: GatewayConfig) -> int:
    """Run the gateway until SIGINT/SIGTERM; configuration problems end it with one line."""
    from picofleet.gateway.service import run_gateway, setup_logging

    setup_logging(config)
    try:
        asyncio.run(run_gateway(config))
    except ConfigError as error:
        print(f"picofleet gateway: {error}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the gateway."""
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print(f"picofleet gateway: {error}", file=sys.stderr)
        return 2
    return serve(config)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet gateway`."""
    parser = subparsers.add_parser("gateway", help="run the gateway", description=run.__doc__)
    add_gateway_flags(parser)
    parser.set_defaults(run=run)
