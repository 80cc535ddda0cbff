"""The balena deployment files: Dockerfile.template rendered and parsed, balena.yml, compose files.

balena's builder replaces ``%%BALENA_*%%`` variables in Dockerfile.template for the device type
before docker builds it; the test does the same and parses the result with dockerfile-parse.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from picofleet.fleet import service as fleet_service
from picofleet.gateway.config import SETTINGS, load_config
from picofleet.gateway.features import FEATURES

ROOT = Path(__file__).resolve().parents[1]
MACHINES = {"raspberrypi3": "armv7hf", "raspberrypi4-64": "aarch64", "raspberrypi5": "aarch64"}
"""The supported device types and their %%BALENA_ARCH%%."""
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT",
}  # fmt: skip
IMAGE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*:[\w][\w.-]{0,127}")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def render(machine: str) -> str:
    """Dockerfile.template as balena's builder renders it for ``machine``."""
    text = (ROOT / "Dockerfile.template").read_text()
    return text.replace("%%BALENA_MACHINE_NAME%%", machine).replace("%%BALENA_ARCH%%", MACHINES[machine])


def parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [item["value"] for item in parser.structure if item["instruction"] == name]


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_the_template_renders_to_a_valid_dockerfile(machine: str) -> None:
    text = render(machine)
    assert "%%" not in text  # every build variable it uses is one balena renders
    parser = parse(text)

    assert {item["instruction"] for item in parser.structure} <= INSTRUCTIONS
    assert parser.structure[0]["instruction"] in ("COMMENT", "ARG", "FROM")
    assert parser.parent_images == [
        f"balenalib/{machine}-debian-python:3.11.2-bookworm-build",
        f"balenalib/{machine}-debian-python:3.11.2-bookworm-run",
    ]
    assert parser.envs["UDEV"] == "1"
    assert parser.envs["PICOFLEET_DATA"] == "/data"
    assert parser.labels["io.balena.features.supervisor-api"] == "1"
    assert instructions(parser, "EXPOSE") == ["1337"]
    assert json.loads(parser.cmd) == ["picofleet", "gateway"]
    assert any("install_packages" in run and "udev" in run for run in instructions(parser, "RUN"))


def test_the_template_copies_the_whole_project_and_installs_it() -> None:
    parser = parse(render("raspberrypi4-64"))
    copied: set[str] = set()
    for value in instructions(parser, "COPY"):
        words = shlex.split(value)
        if any(word.startswith("--from=") for word in words):
            continue
        sources = words[:-1]
        for source in sources:
            assert (ROOT / source).exists(), source  # the build context is the repository
        copied.update(sources)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dirs.values()) | {"pyproject.toml", PROJECT["readme"]} <= copied
    assert any(f"--find-links=/wheels {PROJECT['name']}" in run for run in instructions(parser, "RUN"))


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command, as argv (it is shell-form: ``CMD python3 -c "..."``)."""
    value = instructions(parse(render("raspberrypi5")), "HEALTHCHECK")[0]
    command = shlex.split(value[value.index("CMD ") + 4 :])
    assert command[0] == "python3"
    return [sys.executable, *command[1:]]


def test_the_healthcheck_passes_on_a_running_gateway_and_fails_without_one(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory()
    port = gateway.url.rsplit(":", 1)[1]
    command = healthcheck_command()
    assert "/v1/enm/status" in command[-1]
    healthy = subprocess.run(command, env={"PICOFLEET_PORT": port}, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    gateway.stop()
    unhealthy = subprocess.run(command, env={"PICOFLEET_PORT": port}, capture_output=True, timeout=30)
    assert unhealthy.returncode != 0


def balena_yml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "balena.yml").read_text())


def test_balena_yml_fields() -> None:
    manifest = balena_yml()
    assert manifest["type"] == "sw.application"
    assert manifest["name"] and manifest["description"].strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?", manifest["version"])
    assert manifest["version"] == PROJECT["version"]
    data = manifest["data"]
    assert set(data["supportedDeviceTypes"]) == set(MACHINES)
    assert data["defaultDeviceType"] in data["supportedDeviceTypes"]


def test_balena_yml_variables_are_the_gateways_settings_at_their_defaults() -> None:
    variables = balena_yml()["data"]["applicationEnvironmentVariables"]
    assert all(isinstance(item, dict) and len(item) == 1 for item in variables)
    pairs = {key: value for item in variables for key, value in item.items()}
    assert len(pairs) == len(variables)  # no variable twice
    defaults = {setting.env: setting.default for setting in SETTINGS}
    defaults.update({feature.env: "0" for feature in FEATURES})
    for name, value in pairs.items():
        assert name in defaults, f"{name} is not a setting of the gateway"
        assert isinstance(value, str) and value == defaults[name], name
    assert {feature.env for feature in FEATURES} <= set(pairs)  # operators see the flags they can switch
    load_config({}, pairs)  # every value is one the gateway accepts


def test_compose_files() -> None:
    device = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway = device["services"]["gateway"]
    assert gateway["build"] == "."
    assert gateway["privileged"] is True
    assert gateway["labels"]["io.balena.features.supervisor-api"] == "1"
    assert "1337:1337" in gateway["ports"]
    assert any(volume.endswith(":/data") for volume in gateway["volumes"])
    assert set(device["services"]) == {"gateway"}  # balena runs every service here on each Pi

    server = yaml.safe_load((ROOT / "fleet" / "docker-compose.yml").read_text())
    fleet = server["services"]["fleet"]
    assert (ROOT / "fleet" / fleet["build"]["context"] / fleet["build"]["dockerfile"]).resolve() == (
        ROOT / "fleet" / "Dockerfile"
    )
    assert "8080:8080" in fleet["ports"]
    settings = {fleet_service.TOKEN_ENV, fleet_service.MAX_ASSET_ENV, fleet_service.WORKERS_ENV}
    assert set(fleet["environment"]) <= settings  # each one the fleet service reads
    parser = parse((ROOT / "fleet" / "Dockerfile").read_text())
    assert {item["instruction"] for item in parser.structure} <= INSTRUCTIONS
    assert all(IMAGE.fullmatch(image) for image in parser.parent_images)
    assert json.loads(parser.cmd)[:3] == ["picofleet", "fleet", "serve"]
    for value in instructions(parser, "COPY"):
        for source in shlex.split(value)[:-1]:
            assert (ROOT / source).exists(), source


def test_docs_list_every_feature_flag_off_by_default() -> None:
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    balena = (ROOT / "docs" / "balena.md").read_text()
    for feature in FEATURES:
        assert f"| `{feature.env}` | off |" in configuration, feature.name
        assert feature.env in balena, feature.name
