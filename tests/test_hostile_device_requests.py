"""Issue #13, items 8, 11 and 15: bounded commits, over-long numbers, identify tells the outcome.

A real gateway with two virtual boards (the second is given a firmware that cannot blink) and,
for the JSON numbers, a real fleet service: both read JSON bodies the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from picofleet.firmware.formats import boot_header, image, uf2
from tests.helpers.boards import rack_boards
from tests.helpers.fleet import FleetProcess
from tests.helpers.gateway import GatewayProcess, running_gateway, wait_for

pytestmark = pytest.mark.timeout(120)

JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("hostile") / "data", 2) as process:
        yield process


def targets(device: dict[str, Any]) -> dict[str, Any]:
    return {key: device[key] for key in ("TargetCommit", "TargetEnvironment", "TargetConfig")}


# -- item 8: the commit of PUT /v1/devices/{uuid} (and of a one-off flash) is bounded -----------------


@pytest.mark.parametrize(
    ("commit", "shown"),
    [
        ("a" * 1_000_000, "of 1000000 characters"),  # a 1 MB commit fits in a 1 MiB JSON body
        ("a" * 65, repr("a" * 65)),
        ("a" * 81, "of 81 characters"),
        ("", "''"),
        ("release 1", "'release 1'"),
        ("../../etc", "'../../etc'"),
        ("caf\u00e9", "'caf\u00e9'"),
    ],
)
def test_an_invalid_commit_is_refused_and_changes_nothing(
    gateway: GatewayProcess, commit: str, shown: str
) -> None:
    device = gateway.devices()[0]
    uuid = device["LocalUUID"]
    response = gateway.put(f"/v1/devices/{uuid}", json={"commit": commit})
    assert response.status_code == 400
    assert response.json()["error"] == f"commit {shown} is not 1 to 64 letters, digits, '.', '_' or '-'"
    assert targets(gateway.get(f"/v1/devices/{uuid}").json()) == targets(device)


def test_commits_as_balena_and_git_write_them_are_taken(gateway: GatewayProcess) -> None:
    uuid = gateway.devices()[0]["LocalUUID"]
    for commit in ("0" * 32, "16b5cd4df8085d2872a6f6fc0c378629a185d78b", "f" * 64, "v1.2_rc-3", None):
        assert gateway.put(f"/v1/devices/{uuid}", json={"commit": commit}).status_code == 200
        assert gateway.get(f"/v1/devices/{uuid}").json()["TargetCommit"] == commit


def test_a_flash_with_an_invalid_commit_is_refused_before_the_upload_is_read(gateway: GatewayProcess) -> None:
    uuid = gateway.devices()[0]["LocalUUID"]
    response = httpx.post(
        f"{gateway.url}/v1/devices/{uuid}/flash",
        params={"commit": "x" * 100},
        content=b"not even a UF2",
        headers=OCTETS,
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("the commit query parameter of 100 characters is not 1 to 64")
    assert gateway.get(f"/v1/devices/{uuid}").json()["PendingFlash"] is None


# -- item 11: over-long numbers say what is wrong, on both services ---------------------------------


NUMBERS = [
    ("1" * 5000, "malformed JSON: a number with 5000 digits (at most 4300 are accepted)"),
    ("-" + "9" * 4301, "malformed JSON: a number with 4301 digits (at most 4300 are accepted)"),
    ("1e999", "malformed JSON: the number 1e999 is out of range (not a finite double)"),
]


@pytest.mark.parametrize(("number", "message"), NUMBERS)
def test_an_over_long_number_is_malformed_json_at_the_gateway(
    gateway: GatewayProcess, number: str, message: str
) -> None:
    response = gateway.put("/v1/enm/status", content=f'{{"targetStatus": {number}}}', headers=JSON)
    assert response.status_code == 400
    assert response.json() == {"error": message}  # not Python's sys.set_int_max_str_digits() hint
    assert gateway.get("/v1/enm/status").json()["targetStatus"] == "Running"


def test_an_over_long_number_is_malformed_json_at_the_fleet(fleet: FleetProcess) -> None:
    for number, message in NUMBERS:
        response = fleet.request("POST", "/v1/fleets", content=f'{{"name": {number}}}', headers=JSON)
        assert response.status_code == 400
        assert response.json() == {"error": message}
    assert fleet.request("GET", "/v1/fleets").json() == []


def test_a_4300_digit_integer_is_still_a_number(gateway: GatewayProcess) -> None:
    response = gateway.put("/v1/enm/status", content=f'{{"targetStatus": {"7" * 4300}}}', headers=JSON)
    assert response.status_code == 400 and "targetStatus" in response.json()["error"]  # read, then refused


# -- item 15: identify answers with the outcome of the blink -----------------------------------------


def test_identify_answers_200_once_the_board_blinks(gateway: GatewayProcess) -> None:
    serial = gateway.devices()[0]["LocalUUID"]
    response = gateway.put(f"/v1/devices/{serial}/identify")
    assert response.status_code == 200, response.text
    assert rack_boards(gateway.data)[serial]["led_blinking"]  # already: the answer came after the blink


def test_identify_says_when_the_firmware_cannot_blink(gateway: GatewayProcess) -> None:
    serial = gateway.devices()[1]["LocalUUID"]
    # a bootable image (IMAGE_DEF block) with no descriptor: it boots and never answers
    body = boot_header.bootable("rp2350", b"\x00" * 4096)
    silent = uf2.from_binary(body, image.FLASH_BASE, uf2.RP2350_ARM_S)
    flashed = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash?commit=silent", content=silent, headers=OCTETS, timeout=10
    )
    assert flashed.status_code == 202, flashed.text
    wait_for(
        lambda: (
            (d := gateway.get(f"/v1/devices/{serial}").json())["Status"] == "Idle" and d["Commit"] == "silent"
        ),
        30,
        "the board running the silent firmware",
    )
    response = gateway.put(f"/v1/devices/{serial}/identify")
    assert response.status_code == 409
    assert response.json()["error"] == (
        f"device {serial} did not blink: its firmware cannot blink "
        "(it runs a firmware that does not identify itself)"
    )
    assert not rack_boards(gateway.data)[serial]["led_blinking"]
    assert gateway.get(f"/v1/devices/{serial}").json()["Status"] == "Idle"  # not Broken: nothing failed
