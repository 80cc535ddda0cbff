"""The supervisor bridge against a stand-in supervisor: late start, API key, blink, supervisor gone.

Every test runs a real gateway process; the stand-in (tests/helpers/fake_supervisor.py) serves
balena's documented endpoints on loopback and records what it was asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from picofleet.supervisor_bridge.environment import BalenaEnvironment
from tests.helpers.boards import rack_boards
from tests.helpers.fake_supervisor import DEVICE, FakeSupervisor
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for

KEY = "test-supervisor-key"


@pytest.fixture
def supervisor() -> Iterator[FakeSupervisor]:
    """A stand-in supervisor, not started yet."""
    fake = FakeSupervisor(KEY)
    yield fake
    fake.close()


def balena_env(fake: FakeSupervisor, key: str = KEY, **extra: str) -> dict[str, str]:
    """The variables balena gives a service with the supervisor-api label."""
    return {
        "BALENA_SUPERVISOR_ADDRESS": fake.url,
        "BALENA_SUPERVISOR_API_KEY": key,
        "BALENA_DEVICE_UUID": "5fd1e8c0a9b24d7c8e6f0123456789ab",
        "BALENA_DEVICE_NAME_AT_INIT": "rack-pi",
        **extra,
    }


def bridge(gateway: GatewayProcess) -> dict[str, Any]:
    response = gateway.get("/v1/enm/supervisor")
    assert response.status_code == 200, response.text
    return response.json()


def wait_ready(gateway: GatewayProcess, timeout: float = 20) -> dict[str, Any]:
    return wait_for(
        lambda: (s := bridge(gateway))["state"] == "ready" and s, timeout, "the supervisor bridge"
    )


def test_supervisor_up_late_while_the_gateway_api_answers(
    gateway_factory, supervisor: FakeSupervisor
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory(env=balena_env(supervisor))

    # the supervisor is not there yet: the gateway's own API answers all the same (ENM issue #73)
    assert gateway.get("/v1/enm/status").json()["currentStatus"] == "Running"
    waiting = wait_for(lambda: (s := bridge(gateway))["attempts"] >= 2 and s, 10, "a second /ping attempt")
    assert waiting["state"] == "waiting" and waiting["enabled"] is True
    assert "cannot connect" in waiting["reason"]
    assert waiting["device"]["name"] == "rack-pi"
    assert waiting["device"]["uuid"] == "5fd1e8c0a9b24d7c8e6f0123456789ab"
    assert gateway.put("/v1/enm/identify").status_code == 503  # nobody to blink yet

    supervisor.start()
    ready = wait_ready(gateway)
    assert ready["supervisor"]["supervisor_version"] == DEVICE["supervisor_version"]
    assert ready["applications"]["picofleet"]["services"]["gateway"]["status"] == "Running"
    assert ready["reason"] is None

    pings = supervisor.recorded("GET", "/ping")
    assert pings and all(call.apikey is None for call in pings)  # /ping needs no key
    device_calls = supervisor.recorded("GET", "/v1/device")
    assert device_calls and all(call.apikey == KEY for call in device_calls)  # ?apikey= as balena documents
    log = gateway.output()
    assert "balena device rack-pi (5fd1e8c0a9b24d7c8e6f0123456789ab): waiting for the supervisor" in log
    assert "the balena supervisor answered after" in log
    assert KEY not in log  # never logged


def test_identify_blinks_through_the_supervisor_with_the_api_key(
    gateway_factory, supervisor: FakeSupervisor
) -> None:  # type: ignore[no-untyped-def]
    supervisor.start()
    gateway = gateway_factory("--simulate", "1", env=balena_env(supervisor))
    wait_ready(gateway)
    idle_boards(gateway, 1)

    response = gateway.put("/v1/enm/identify")
    assert response.status_code == 200, response.text
    assert response.json() == {"blinking": True, "seconds": 15, "boards": []}  # boards: a feature flag
    blinks = supervisor.recorded("POST", "/v1/blink")
    assert len(blinks) == 1 and blinks[0].apikey == KEY and blinks[0].authorized
    assert not any(board["led_blinking"] for board in rack_boards(gateway.data).values())


def test_a_wrong_api_key_is_reported_not_logged(gateway_factory, supervisor: FakeSupervisor) -> None:  # type: ignore[no-untyped-def]
    supervisor.start()
    wrong = "not-the-key-1234"
    gateway = gateway_factory(env=balena_env(supervisor, key=wrong))
    state = wait_for(lambda: (s := bridge(gateway))["reason"] and s, 20, "the refusal")
    assert "401" in state["reason"] and "BALENA_SUPERVISOR_API_KEY" in state["reason"]

    response = gateway.put("/v1/enm/identify")
    assert response.status_code == 502
    assert "answered 401" in response.json()["error"]
    assert supervisor.recorded("POST", "/v1/blink")[0].apikey == wrong
    assert wrong not in gateway.output()


def test_supervisor_gone_then_back(gateway_factory, supervisor: FakeSupervisor) -> None:  # type: ignore[no-untyped-def]
    supervisor.start()
    gateway = gateway_factory(env=balena_env(supervisor))
    wait_ready(gateway)

    supervisor.stop()
    gone = gateway.put("/v1/enm/identify")
    assert gone.status_code == 503
    assert "does not answer POST /v1/blink" in gone.json()["error"]
    assert bridge(gateway)["state"] == "waiting"
    assert gateway.get("/v1/enm/status").status_code == 200
    wait_for(lambda: "the balena supervisor stopped answering" in gateway.output(), 10, "the warning")

    supervisor.start()
    wait_ready(gateway)
    assert gateway.put("/v1/enm/identify").status_code == 200


def test_a_hanging_supervisor_never_blocks_the_gateway_api(
    gateway_factory, supervisor: FakeSupervisor
) -> None:  # type: ignore[no-untyped-def]
    supervisor.start()
    gateway = gateway_factory(env=balena_env(supervisor))
    wait_ready(gateway)
    supervisor.hang()
    answers: list[httpx.Response] = []
    identify = threading.Thread(target=lambda: answers.append(gateway.put("/v1/enm/identify")))
    identify.start()
    wait_for(lambda: supervisor.recorded("POST", "/v1/blink"), 10, "the blink request to arrive")

    assert gateway.get("/v1/enm/status").status_code == 200  # answered while the blink hangs
    assert bridge(gateway)["state"] == "ready"
    assert identify.is_alive()

    identify.join(15)
    assert answers and answers[0].status_code == 503
    assert "no answer within 5 s" in answers[0].json()["error"]


def test_outside_balena_the_bridge_is_off_and_says_so_once(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory()
    state = bridge(gateway)
    assert (state["enabled"], state["state"]) == (False, "off")
    response = gateway.put("/v1/enm/identify")
    assert response.status_code == 409
    assert "not running on balena" in response.json()["error"]
    assert gateway.output().count("the supervisor bridge is off") == 1


def test_identify_boards_feature_flag_blinks_the_boards_too(
    gateway_factory, supervisor: FakeSupervisor
) -> None:  # type: ignore[no-untyped-def]
    supervisor.start()
    env = balena_env(supervisor, PICOFLEET_FEATURE_IDENTIFY_BOARDS="1")
    gateway = gateway_factory("--simulate", "1", env=env)
    wait_ready(gateway)
    serial = idle_boards(gateway, 1)[0]["LocalUUID"]
    assert "feature flags on: PICOFLEET_FEATURE_IDENTIFY_BOARDS" in gateway.output()

    response = gateway.put("/v1/enm/identify")
    assert response.status_code == 200, response.text
    assert response.json()["boards"] == [serial]
    wait_for(lambda: rack_boards(gateway.data)[serial]["led_blinking"], 5, "the board's LED to blink")
    assert len(supervisor.recorded("POST", "/v1/blink")) == 1


def test_openapi_describes_the_balena_routes(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    paths = gateway_factory().get("/openapi.json").json()["paths"]
    assert "put" in paths["/v1/enm/identify"]
    assert {"409", "502", "503"} <= set(paths["/v1/enm/identify"]["put"]["responses"])
    assert "get" in paths["/v1/enm/supervisor"]


def test_legacy_resin_names_are_read_when_balena_ones_are_absent() -> None:
    env = BalenaEnvironment.from_environ(
        {
            "RESIN_SUPERVISOR_ADDRESS": "http://127.0.0.1:48484/",
            "RESIN_SUPERVISOR_API_KEY": "k",
            "RESIN_DEVICE_UUID": "u",
            "RESIN_DEVICE_NAME_AT_INIT": "n",
            "RESIN_SUPERVISOR_OVERRIDE_LOCK": "1",
        }
    )
    assert (env.address, env.api_key, env.device_uuid, env.device_name) == (
        "http://127.0.0.1:48484",
        "k",
        "u",
        "n",
    )
    assert env.on_balena and env.override_lock
    both = BalenaEnvironment.from_environ(
        {"BALENA_SUPERVISOR_ADDRESS": "http://a:1", "RESIN_SUPERVISOR_ADDRESS": "http://b:2"}
    )
    assert both.address == "http://a:1"
    assert not BalenaEnvironment.from_environ({"BALENA_SUPERVISOR_ADDRESS": "  "}).on_balena
