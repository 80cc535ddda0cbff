"""Client events: the in-process EventBus, and the `/v1/events` websocket of a real gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from picofleet.gateway.evaluation.events import EventBus
from tests.helpers.fpga import session_counter
from tests.helpers.gateway import GatewayProcess, idle_boards, running_gateway
from tests.test_evaluations import reserve, stream_evaluation, upload, variant
from tests.test_reservations import events, next_event, post

pytestmark = pytest.mark.timeout(60)


def test_a_subscriber_gets_its_clients_events_in_order_with_their_time() -> None:
    async def scenario() -> None:
        bus = EventBus()
        bus.publish("alice", {"event": "lost"})  # nobody listens: not kept
        async with bus.subscribe("alice") as alice, bus.subscribe("bob") as bob:
            bus.publish("alice", {"event": "one", "serial": "A"})
            bus.publish("bob", {"event": "other"})
            bus.publish("alice", {"event": "two"})
            first, second = await alice.get(), await alice.get()
            assert [first["event"], second["event"]] == ["one", "two"]
            assert first["serial"] == "A" and first["time"] <= second["time"]
            assert (await bob.get())["event"] == "other"
            assert bus.subscribers("alice") == 1
        assert bus.subscribers("alice") == 0 and bus.subscribers("bob") == 0

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_the_oldest_events_and_is_told_how_many() -> None:
    async def scenario() -> None:
        bus = EventBus(capacity=3)
        async with bus.subscribe("alice") as subscription:
            for number in range(5):
                bus.publish("alice", {"event": "tick", "number": number})
            dropped = await subscription.get()
            assert dropped is not None and dropped["event"] == "events_dropped" and dropped["count"] == 2
            kept = [await subscription.get() for _ in range(3)]
            assert [event["number"] for event in kept if event] == [2, 3, 4]

    asyncio.run(scenario())


def test_closing_the_bus_ends_every_subscription() -> None:
    async def scenario() -> list[dict]:
        bus = EventBus()
        subscription = bus.subscribe("alice")

        async def collect() -> list[dict]:
            return [event async for event in subscription]

        reader = asyncio.create_task(collect())
        bus.publish("alice", {"event": "last"})
        await asyncio.sleep(0)
        bus.close()
        return await asyncio.wait_for(reader, 5)

    assert [event["event"] for event in asyncio.run(scenario())] == ["last"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two virtual boards; their FPGA is the fast timing model (a count takes its window, no netlist)."""
    with running_gateway(tmp_path_factory.mktemp("gw"), 2, env={"PICOFLEET_SIM_FPGA": "timing"}) as service:
        yield service


def events_url(gateway: GatewayProcess, query: str = "") -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/events" + query


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer rt_not-a-token"}])
def test_the_event_socket_needs_a_clients_token(gateway: GatewayProcess, headers: dict[str, str]) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(events_url(gateway), additional_headers=headers, open_timeout=10)
    assert refused.value.response.status_code == 403
    assert b"token" in refused.value.response.body


def test_each_client_hears_only_its_own_events(gateway: GatewayProcess) -> None:
    alice = post(gateway, "/v1/reservations", {"name": "alice", "count": 1, "seconds": 600}).json()
    bob = post(gateway, "/v1/reservations", {"name": "bob", "count": 1, "seconds": 600}).json()
    alice_serial = alice["reservations"][0]["serial"]
    bob_serial = bob["reservations"][0]["serial"]
    with (
        events(gateway, alice["token"]) as alice_events,
        connect(events_url(gateway, f"?token={bob['token']}"), open_timeout=10) as bob_events,
    ):
        subscribed = json.loads(bob_events.recv(timeout=10))
        assert subscribed["name"] == "bob"
        assert [r["serial"] for r in subscribed["reservations"]] == [bob_serial]
        post(gateway, "/v1/reservations/end", {"name": "alice"}, alice["token"])
        post(gateway, "/v1/reservations/end", {"name": "bob"}, bob["token"])
        assert next_event(alice_events, "reservation_ended")["serial"] == alice_serial
        assert next_event(bob_events, "reservation_ended")["serial"] == bob_serial  # not alice's first


@pytest.mark.timeout(300)
def test_each_evaluation_result_is_also_an_event(
    gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    packed = session_counter(tmp_path_factory, 16).bin.read_bytes()
    idle_boards(gateway, 2)  # both free again after the reservations of the tests before
    token, serials = reserve(gateway, "carol", 2, {"clock_hz": 1_000_000, "window_ms": 50})
    shas = [upload(gateway, variant(packed, index)) for index in range(3)]
    body = {"name": "carol", "bitstreams": [{"sha256": sha} for sha in shas]}
    with events(gateway, token) as socket:
        *results, summary = stream_evaluation(gateway, token, body)
        assert summary["done"] and summary["results"] == 6 and summary["failed"] == 0, summary
        heard = [next_event(socket, "evaluation_result", timeout=10) for _ in results]

        def seen(result: dict) -> tuple:
            return result["evaluation"], result["serial"], result["sha256"], result["pulses"]

        assert sorted(map(seen, heard)) == sorted(map(seen, results))
        assert {(r["serial"], r["sha256"]) for r in heard} == {(s, sha) for s in serials for sha in shas}
        # and not one more: the reservations' end comes next, with no result event before it
        assert post(gateway, "/v1/reservations/end", {"name": "carol"}, token).status_code == 200
        later = []
        while sum(event["event"] == "reservation_ended" for event in later) < len(serials):
            later.append(json.loads(socket.recv(timeout=10)))
        assert "evaluation_result" not in [event["event"] for event in later], later
