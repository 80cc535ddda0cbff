"""The boards as dependent devices of a balena supervisor (issue 14, items 5 and 7).

Real gateway processes with virtual boards, against a stand-in supervisor
(tests/helpers/stand_in_supervisor.py) serving the proxyvisor's routes as balena-supervisor v14.7.1
did and sending its hooks to the gateway as it did. With a picofleet fleet, or outside balena,
none of it runs; with a fleet ``ApplicationUUID`` is the fleet's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.boards import app_uf2, rack_boards
from tests.helpers.fleet import FleetProcess
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.helpers.stand_in_supervisor import StandInSupervisor

pytestmark = pytest.mark.timeout(120)

KEY = "test-supervisor-key"
APP_ID = 4242
COMMIT = "5a1e3c9d0b7f4e2a8c6d1f3b5e7a9c0d"


@pytest.fixture
def supervisor() -> Iterator[StandInSupervisor]:
    """A stand-in supervisor whose device has the dependent app APP_ID."""
    stand_in = StandInSupervisor(KEY)
    stand_in.add_app(APP_ID, "pico-boards")
    stand_in.start()
    yield stand_in
    stand_in.close()


def balena_env(supervisor: StandInSupervisor) -> dict[str, str]:
    """What balena gives the gateway's container, and the dependent app's id."""
    return {
        "BALENA_SUPERVISOR_ADDRESS": supervisor.url,
        "BALENA_SUPERVISOR_API_KEY": KEY,
        "PICOFLEET_DEPENDENT_APP_ID": str(APP_ID),
    }


def registered(gateway: GatewayProcess, supervisor: StandInSupervisor, count: int) -> list[dict[str, Any]]:
    """Wait until the gateway lists ``count`` boards, each with the uuid the supervisor gave it."""

    def check() -> list[dict[str, Any]] | None:
        devices = gateway.devices()
        if len(devices) == count and all(
            supervisor.device(d["ResinUUID"]) is not None and d["ApplicationUUID"] == APP_ID for d in devices
        ):
            return devices
        return None

    return wait_for(check, 30, f"{count} boards registered with the supervisor", interval=0.05)


def test_boards_are_registered_once_and_keep_their_identity_across_a_restart(
    gateway_factory, supervisor: StandInSupervisor
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2", env=balena_env(supervisor))
    devices = registered(gateway, supervisor, 2)

    posts = supervisor.recorded("POST", "/v1/devices")
    assert len(posts) == 2 and all(call.body == {"appId": APP_ID} and call.authorized for call in posts)
    for device in devices:  # the uuid and the name the supervisor gave it
        assert device["Name"] == supervisor.device(device["ResinUUID"])["name"]
    wait_for(
        lambda: all(
            (s := supervisor.device(d["ResinUUID"])) and s["status"] == "Idle" and s["is_online"] is True
            for d in devices
        ),
        20,
        "the boards reported Idle and online",
    )
    dependent = gateway.get("/v1/enm/supervisor").json()["dependent"]
    assert dependent["appId"] == APP_ID and dependent["app"]["name"] == "pico-boards"
    assert {entry["uuid"] for entry in dependent["registered"].values()} == {d["ResinUUID"] for d in devices}

    gateway.stop()
    reports = len(supervisor.calls)
    again = gateway_factory("--simulate", "2", data=gateway.data, env=balena_env(supervisor))
    idle_boards(again, 2)
    wait_for(
        lambda: any(call.method == "PUT" for call in supervisor.calls[reports:]),
        20,
        "a report after the restart",
    )
    assert len(supervisor.recorded("POST", "/v1/devices")) == 2  # not registered again
    assert {(d["ResinUUID"], d["Name"], d["ApplicationUUID"]) for d in again.devices()} == {
        (d["ResinUUID"], d["Name"], APP_ID) for d in devices
    }


def test_a_hook_with_a_new_commit_flashes_its_asset_202_until_applied_then_200(
    gateway_factory, supervisor: StandInSupervisor
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2", env=balena_env(supervisor))
    devices = registered(gateway, supervisor, 2)
    endpoint = f"{gateway.url}/v1/devices/"
    supervisor.release(APP_ID, COMMIT, {"pico2-ice.uf2": app_uf2("2.0.0"), "notes.txt": b"release 2"})

    for device in devices:
        first = supervisor.send_update(endpoint, device["ResinUUID"])
        assert first.status_code == 202, first.text
        assert first.json()["state"] in ("downloading", "flashing") and first.json()["commit"] == COMMIT

    answers: set[int] = set()

    def applied() -> bool:
        codes = [supervisor.send_update(endpoint, d["ResinUUID"]).status_code for d in devices]
        answers.update(codes)
        return codes == [200, 200]

    wait_for(applied, 60, "both hooks answered 200", interval=0.2)
    assert answers <= {200, 202}
    for device in gateway.devices():
        assert device["Commit"] == device["TargetCommit"] == COMMIT
        assert device["FirmwareVersion"] == "picofleet-app 2.0.0" and device["Status"] == "Idle"
    assert all(board["firmware"]["version"] == "2.0.0" for board in rack_boards(gateway.data).values())
    # one download of the commit's asset for both boards
    assert len(supervisor.recorded("GET", f"/v1/dependent-apps/{APP_ID}/assets/{COMMIT}")) == 1

    for device in devices:  # reported back, with the logs of the flash
        uuid = device["ResinUUID"]
        wait_for(
            lambda uuid=uuid: (s := supervisor.device(uuid))["commit"] == COMMIT and s["status"] == "Idle",
            20,
            "the commit reported to the supervisor",
        )
        wait_for(
            lambda uuid=uuid: any("Flashing" in line["message"] for line in supervisor.device_logs(uuid)),
            20,
            "the flash's log lines at the supervisor",
        )
        assert all(isinstance(line["timestamp"], int) for line in supervisor.device_logs(uuid))


def test_a_board_that_leaves_local_mode_is_brought_back_to_the_hook_commit_without_a_new_hook(
    gateway_factory, supervisor: StandInSupervisor
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env=balena_env(supervisor))
    [device] = registered(gateway, supervisor, 1)
    uuid, serial = device["ResinUUID"], device["LocalUUID"]
    endpoint = f"{gateway.url}/v1/devices/"
    supervisor.release(APP_ID, COMMIT, {"pico2-ice.uf2": app_uf2("2.0.0")})
    wait_for(
        lambda: supervisor.send_update(endpoint, uuid).status_code == 200,
        60,
        "the hook applied",
        interval=0.2,
    )
    # from here on no hook is sent: the supervisor does not repeat one answered 200

    flashed = httpx.post(
        f"{gateway.url}/v1/devices/{serial}/flash?local_mode=true", content=app_uf2("3.0.0"), timeout=10
    )
    assert flashed.status_code == 202, flashed.text
    gateway.wait_devices(
        lambda d: d[0]["FirmwareVersion"] == "picofleet-app 3.0.0" and d[0]["Status"] == "Idle",
        30,
        "the operator's firmware in local mode",
    )
    assert gateway.devices()[0]["LocalMode"] is True and gateway.devices()[0]["Commit"] is None

    assert gateway.put(f"/v1/devices/{serial}/local-mode", json={"LocalMode": False}).status_code == 200
    gateway.wait_devices(
        lambda d: (
            d[0]["Commit"] == COMMIT
            and d[0]["FirmwareVersion"] == "picofleet-app 2.0.0"
            and d[0]["Status"] == "Idle"
        ),
        30,
        "the hook's commit again, without a new hook",
    )


def test_delete_twice_unknown_uuid_and_an_asset_without_the_board_image(
    gateway_factory, supervisor: StandInSupervisor
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env=balena_env(supervisor))
    [device] = registered(gateway, supervisor, 1)
    uuid, serial = device["ResinUUID"], device["LocalUUID"]
    endpoint = f"{gateway.url}/v1/devices/"

    unknown = httpx.put(f"{endpoint}0123abcd", json={"appId": APP_ID, "commit": COMMIT}, timeout=10)
    assert unknown.status_code == 404 and "no device" in unknown.json()["error"]

    flashes = rack_boards(gateway.data)[serial]["flashes"]
    supervisor.release(APP_ID, "badc0de", {"rp2040.uf2": app_uf2("9.0.0", board="rp2040")})
    refused = wait_for(
        lambda: (r := supervisor.send_update(endpoint, uuid)).status_code == 422 and r,
        20,
        "the hook refused with the reason",
        interval=0.1,
    )
    assert "no pico2-ice.uf2 nor firmware.uf2" in refused.json()["error"]
    assert gateway.get(f"/v1/devices/{serial}").json()["Commit"] is None
    assert rack_boards(gateway.data)[serial]["flashes"] == flashes  # nothing flashed

    first = supervisor.send_delete(endpoint, uuid)
    assert first.status_code == 200 and first.json()["deleted"] is True
    again = httpx.delete(f"{endpoint}{uuid}", timeout=10)  # the supervisor repeats until it gets a 200
    assert again.status_code == 200 and again.json()["deleted"] is False
    # still plugged in: registered anew, as edge-node-manager did
    [fresh] = registered(gateway, supervisor, 1)
    assert fresh["LocalUUID"] == serial and fresh["ResinUUID"] != uuid
    assert len(supervisor.recorded("POST", "/v1/devices")) == 2


def test_with_a_fleet_application_uuid_is_the_fleet_and_the_proxyvisor_stays_off(
    gateway_factory, fleet: FleetProcess, supervisor: StandInSupervisor
) -> None:  # type: ignore[no-untyped-def]
    key = fleet.create_fleet("lab")["provisioning_key"]
    gateway = gateway_factory(
        "--simulate", "2", "--fleet", fleet.url, f"--provisioning-key={key}", env=balena_env(supervisor)
    )
    gateway.wait_devices(
        lambda d: len(d) == 2 and all(x["ApplicationUUID"] == "lab" for x in d), 30, "ApplicationUUID lab"
    )
    assert "PICOFLEET_DEPENDENT_APP_ID is ignored: the gateway follows the fleet" in gateway.output()
    assert supervisor.recorded("POST", "/v1/devices") == []
    assert gateway.get("/v1/enm/supervisor").json()["dependent"] is None


def test_outside_balena_the_dependent_app_is_ignored_and_hooks_only_store(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"PICOFLEET_DEPENDENT_APP_ID": str(APP_ID)})
    [device] = idle_boards(gateway, 1)
    assert "PICOFLEET_DEPENDENT_APP_ID is ignored: not running on balena" in gateway.output()
    response = gateway.put(f"/v1/devices/{device['ResinUUID']}", json={"appId": APP_ID, "commit": COMMIT})
    assert response.status_code == 200 and response.content == b""  # stored, as before
    after = gateway.get(f"/v1/devices/{device['LocalUUID']}").json()
    assert after["TargetCommit"] == COMMIT and after["Commit"] is None and after["ApplicationUUID"] is None
    assert after["PendingFlash"] is None
