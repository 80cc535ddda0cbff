"""The evaluation scheduler (gateway/evaluation/scheduler.py) against in-process fake boards.

Each fake board runs a fake pulse-count firmware behind the methods of
firmware/host/pulsecount.py's PulseCountBoard: slots held least-recently-used, a load that takes
time, an evaluate answered when its window ends, and knobs to make a board refuse a bitstream,
stop answering or lose its port. A small loop stands in for the board task (gateway/boards/board.py):
it calls ``serve`` while the board is reserved and waits for ``wake``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from picofleet.common.http.errors import ApiError, error_response
from picofleet.firmware.host.errors import FirmwareError, NoAnswer, PortLost
from picofleet.gateway.config import load_config
from picofleet.gateway.evaluation import queues
from picofleet.gateway.evaluation.clients import Clients, token_digest
from picofleet.gateway.evaluation.events import EventBus
from picofleet.gateway.evaluation.jobs import DEFAULT_ARGS, Evaluation
from picofleet.gateway.evaluation.scheduler import EvaluationRefused, EvaluationScheduler
from picofleet.gateway.http import evaluations as evaluation_routes
from picofleet.gateway.http.context import GatewayApi
from tests.helpers.boards import rack
from tests.helpers.fpga import session_counter, session_loop
from tests.helpers.gateway import GatewayProcess, running_gateway, wait_for
from tests.helpers.wait import until

WINDOW_MS = 100
ARGS = {"clock_hz": 1_000_000, "window_ms": WINDOW_MS}
TOKEN = "rt_alices"
T = TypeVar("T")


def expected_pulses(sha: str) -> int:
    """What the fake firmware counts for a bitstream."""
    return int(sha[:6], 16) % 1000


class FakeFirmware:
    """The board's side: what it holds and counts; shared by every port (session) of the board."""

    def __init__(self, serial: str, slots: int = 2, load_seconds: float = 0.0) -> None:
        self.serial = serial
        self.slots = slots
        self.load_seconds = load_seconds
        self.held: OrderedDict[str, None] = OrderedDict()
        self.programmed: str | None = None
        self.loads: list[tuple[str, float, float]] = []
        self.evaluations: list[tuple[str, float]] = []
        self.refuse: dict[str, str] = {}
        self.stuck = False
        self.lost = False
        self.on_evaluate: Callable[[FakeFirmware, str], None] | None = None
        self.on_load: Callable[[FakeFirmware, str], None] | None = None  # may raise (e.g. NoAnswer)
        self.lock = threading.Lock()

    def forget_everything(self) -> None:
        """A reboot: no bitstream held."""
        self.held.clear()
        self.programmed = None


def hang(firmware: FakeFirmware, sha: str) -> None:
    """An ``on_evaluate``: the board stops answering from this evaluation on (until restarted)."""
    firmware.stuck = True
    firmware.on_evaluate = None


class FakeClient:
    """PulseCountBoard's methods over a fake firmware."""

    def __init__(self, firmware: FakeFirmware) -> None:
        self.firmware = firmware
        self.next_id = 1
        self.pending: dict[int, tuple[float, dict[str, Any]]] = {}

    def _check(self) -> None:
        if self.firmware.lost:
            raise PortLost(f"serial port of {self.firmware.serial} failed: EIO")

    def identify(self, timeout: float = 2.0) -> dict:
        self._check()
        return {
            "proto": 2,
            "serial": self.firmware.serial,
            "slots": self.firmware.slots,
            "max_bitstream": 135100,
        }

    def status(self, timeout: float = 2.0) -> dict:
        self._check()
        fw = self.firmware
        return {"loaded": list(fw.held), "programmed": fw.programmed, "counting": False}

    def load(self, sha256: str, data: bytes, timeout: float = 10.0) -> None:
        self._check()
        fw = self.firmware
        if fw.on_load is not None:
            fw.on_load(fw, sha256)
        started = time.monotonic()
        time.sleep(fw.load_seconds)
        self._check()
        with fw.lock:
            while len(fw.held) >= fw.slots:
                victim = next(s for s in fw.held if s != fw.programmed or len(fw.held) == 1)
                del fw.held[victim]
            fw.held[sha256] = None
            fw.loads.append((sha256, started, time.monotonic()))

    def start_evaluate(self, sha256: str, clock_hz: int, window_ms: int) -> int:
        self._check()
        fw = self.firmware
        request = self.next_id
        self.next_id += 1
        now = time.monotonic()
        if sha256 not in fw.held:
            self.pending[request] = (now, {"ok": False, "error": f"bitstream {sha256} is not loaded"})
        elif sha256 in fw.refuse:
            self.pending[request] = (now, {"ok": False, "error": fw.refuse[sha256]})
        else:
            fw.held.move_to_end(sha256)
            fw.programmed = sha256
            fw.evaluations.append((sha256, now))
            answer = {"ok": True, "pulses": expected_pulses(sha256), "sha256": sha256}
            self.pending[request] = (now + window_ms / 1000, answer)
            if fw.on_evaluate is not None:
                fw.on_evaluate(fw, sha256)
        return request

    def wait(self, request_id: int, timeout: float) -> dict:
        self._check()
        done_at, answer = self.pending[request_id]
        if self.firmware.stuck:
            time.sleep(timeout)
            raise NoAnswer(f"no answer to 'evaluate' within {timeout:.1f} s")
        remaining = done_at - time.monotonic()
        if remaining > timeout:
            time.sleep(timeout)
            self._check()
            raise NoAnswer(f"no answer to 'evaluate' within {timeout:.1f} s")
        time.sleep(max(0.0, remaining))
        self._check()
        del self.pending[request_id]
        if not answer["ok"]:
            raise FirmwareError(f"board answered: {answer['error']}")
        return {"id": request_id, **answer}


@dataclass
class FakePort:
    firmware: FakeFirmware


@dataclass
class FakeReservation:
    serial: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


class FakeBoard:
    """What the scheduler uses of gateway/boards/board.py's Board (interfaces.ServedBoard)."""

    def __init__(self, serial: str, firmware: FakeFirmware) -> None:
        self.serial = serial
        self.label = f"fake ({serial})"
        self.firmware = firmware
        self.port: FakePort | None = FakePort(firmware)
        self.wake = asyncio.Event()
        self.sightings: dict[str, object] = {"application": object()}
        self.broken = False
        self.evaluation_ready = True
        self.record: dict[str, Any] = {"Status": "Reserved", "RestartFlag": False, "ResinUUID": f"r-{serial}"}
        self.restarts = 0
        self.statuses: list[str] = []

    async def update(self, **fields: Any) -> None:
        self.record.update(fields)
        if "Status" in fields:
            self.statuses.append(fields["Status"])

    async def close_port(self) -> None:
        self.port = None


class FakeReservations:
    """What the scheduler uses of the reservation book (interfaces.ReservationLookup)."""

    def __init__(self) -> None:
        self.by_serial: dict[str, FakeReservation] = {}
        self.events = EventBus()

    def of(self, serial: str) -> FakeReservation | None:
        return self.by_serial.get(serial)

    def of_client(self, name: str) -> list[FakeReservation]:
        return [r for r in self.by_serial.values() if r.name == name]


class FakeManager:
    """What the scheduler uses of the device manager (interfaces.BoardKeeper); its reservations too."""

    def __init__(self, data: Path) -> None:
        self.config = load_config({"data": str(data)}, {})
        self.boards: dict[str, FakeBoard] = {}
        self.reservations = FakeReservations()
        self.lock_holders = 0

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)

    def find(self, uuid: str) -> FakeBoard | None:
        """A board by LocalUUID or ResinUUID, as DeviceManager.find."""
        by_resin = (b for b in self.boards.values() if b.record["ResinUUID"] == uuid)
        return self.boards.get(uuid) or next(by_resin, None)

    @contextlib.asynccontextmanager
    async def updating(self) -> AsyncIterator[None]:
        self.lock_holders += 1
        try:
            yield
        finally:
            self.lock_holders -= 1

    async def request_restart(self, board: FakeBoard) -> None:
        board.record["RestartFlag"] = True
        board.wake.set()


async def board_task(
    board: FakeBoard, manager: FakeManager, scheduler: EvaluationScheduler[FakeBoard]
) -> None:
    """The board task's part in evaluations: restart when asked, reopen the port, serve."""
    while True:
        board.wake.clear()
        if board.record.get("RestartFlag"):
            board.restarts += 1
            board.record["RestartFlag"] = False
            board.firmware.stuck = False
            board.firmware.forget_everything()
            board.port = None
        if board.sightings and not board.firmware.lost:
            board.port = board.port or FakePort(board.firmware)
            if manager.reservations.of(board.serial) is not None:
                await scheduler.serve(board)
        await board.wake.wait()


class Rig:
    """A scheduler with fake boards reserved by "alice", and stored bitstreams."""

    def __init__(self, tmp_path: Path, boards: int = 2, slots: int = 2, load_seconds: float = 0.0):
        self.manager = FakeManager(tmp_path)
        self.scheduler = EvaluationScheduler(self.manager, self.manager.reservations)
        self.scheduler.connect = lambda port, on_log: FakeClient(port.firmware)
        self.scheduler.answer_margin = 1.0
        self.scheduler.queues.lost_grace = 0.5
        self.boards: list[FakeBoard] = []
        for index in range(boards):
            serial = f"SERIAL{index}"
            board = FakeBoard(serial, FakeFirmware(serial, slots, load_seconds))
            self.manager.boards[serial] = board
            self.manager.reservations.by_serial[serial] = FakeReservation(serial, "alice")
            self.boards.append(board)
        self.tasks: list[asyncio.Task[None]] = []

    def bitstreams(self, count: int) -> list[tuple[str, str]]:
        """``count`` stored bitstreams as (sha256, label)."""
        return [(self.scheduler.bitstreams.cache.put(os.urandom(2000)), f"b{i}") for i in range(count)]

    async def __aenter__(self) -> Rig:
        self.tasks = [asyncio.create_task(board_task(b, self.manager, self.scheduler)) for b in self.boards]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.scheduler.stop()


async def results_of(evaluation: Evaluation, timeout: float = 10.0) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [result async for result in evaluation.follow()]

    return await asyncio.wait_for(collect(), timeout)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_each_runs_every_bitstream_on_every_board_exactly_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            bitstreams = rig.bitstreams(5)
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            results = await results_of(evaluation)
            assert sorted((r["serial"], r["sha256"]) for r in results) == sorted(
                (board.serial, sha) for board in rig.boards for sha, _ in bitstreams
            )
            labels = dict(bitstreams)
            for result in results:
                assert result["pulses"] == expected_pulses(result["sha256"])
                assert result["label"] == labels[result["sha256"]]
                assert result["evaluation"] == evaluation.id
            assert evaluation.summary() == {
                "evaluation": evaluation.id,
                "done": True,
                "results": 10,
                "failed": 0,
            }
            assert all("Evaluating" in board.statuses for board in rig.boards)

    run(main())


def test_the_next_bitstream_is_sent_while_the_current_one_counts(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1, load_seconds=0.05) as rig:
            bitstreams = rig.bitstreams(6)
            started = time.monotonic()
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            await results_of(evaluation)
            elapsed = time.monotonic() - started
            firmware = rig.boards[0].firmware
            # every load but the first happened while the previous bitstream was counting
            counted = {sha: at for sha, at in firmware.evaluations}
            order = [sha for sha, _ in firmware.evaluations]
            for previous, (_, load_started, load_ended) in zip(order, firmware.loads[1:], strict=False):
                assert (
                    counted[previous] <= load_started and load_ended <= counted[previous] + WINDOW_MS / 1000
                )
            # so the board costs a window per bitstream, not a window plus a transfer
            assert elapsed < 6 * WINDOW_MS / 1000 + 0.05 + 0.15, elapsed

    run(main())


def test_a_bitstream_the_board_holds_is_never_sent_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1, slots=4) as rig:
            bitstreams = rig.bitstreams(3)
            for _ in range(3):
                await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            firmware = rig.boards[0].firmware
            assert sorted(sha for sha, _, _ in firmware.loads) == sorted(sha for sha, _ in bitstreams)
            assert len(firmware.evaluations) == 9

    run(main())


def test_units_prefer_a_board_that_holds_their_bitstream(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1, slots=2) as rig:
            a, b = rig.bitstreams(2)
            await results_of(rig.scheduler.submit("alice", [a, b], "each", args=ARGS))
            firmware = rig.boards[0].firmware
            firmware.loads.clear()
            # queued as c, a, d, b: a and b are held, so they go first, then c and d are sent
            c, d = rig.bitstreams(2)
            await results_of(rig.scheduler.submit("alice", [c, a, d, b], "each", args=ARGS))
            assert [sha for sha, _ in firmware.evaluations[2:4]] in ([b[0], a[0]], [a[0], b[0]])
            assert sorted(sha for sha, _, _ in firmware.loads) == sorted([c[0], d[0]])

    run(main())


def test_any_mode_finishes_every_unit_once_when_a_board_is_lost_mid_evaluation(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            lost, _ = rig.boards

            def unplug_on_second(firmware: FakeFirmware, sha: str) -> None:
                if len(firmware.evaluations) == 2:
                    firmware.lost = True

            lost.firmware.on_evaluate = unplug_on_second
            bitstreams = rig.bitstreams(12)
            evaluation = rig.scheduler.submit("alice", bitstreams, "any", args=ARGS)
            results = await results_of(evaluation)
            assert sorted(r["sha256"] for r in results) == sorted(sha for sha, _ in bitstreams)
            assert all(r["pulses"] == expected_pulses(r["sha256"]) for r in results)
            assert evaluation.failed == 0
            assert sum(r["serial"] == lost.serial for r in results) == 1  # its second one was requeued
            assert lost.port is None  # the scheduler let go of the failed port

    run(main())


def test_each_mode_fails_the_units_of_a_board_that_stays_away(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            lost, survivor = rig.boards

            def unplug(firmware: FakeFirmware, sha: str) -> None:
                firmware.lost = True
                lost.sightings.clear()

            lost.firmware.on_evaluate = unplug
            bitstreams = rig.bitstreams(4)
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            results = await results_of(evaluation)
            assert len(results) == 8
            mine = [r for r in results if r["serial"] == lost.serial]
            assert len(mine) == 4 and all("offline" in r["error"] for r in mine), mine
            assert all("pulses" in r for r in results if r["serial"] == survivor.serial)

    run(main())


def test_a_stuck_board_is_restarted_and_its_unit_goes_to_another_board(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            stuck, _ = rig.boards

            stuck.firmware.on_evaluate = hang
            bitstreams = rig.bitstreams(6)
            evaluation = rig.scheduler.submit("alice", bitstreams, "any", args=ARGS)
            results = await results_of(evaluation)
            assert sorted(r["sha256"] for r in results) == sorted(sha for sha, _ in bitstreams)
            assert evaluation.failed == 0
            assert stuck.restarts == 1

    run(main())


def test_a_stuck_board_fails_its_pinned_unit_and_goes_on_after_the_restart(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            board = rig.boards[0]

            board.firmware.on_evaluate = hang
            bitstreams = rig.bitstreams(3)
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            results = await results_of(evaluation)
            assert len(results) == 3 and evaluation.failed == 1
            assert "did not answer" in results[0]["error"] and "restarted" in results[0]["error"]
            assert [r["pulses"] for r in results[1:]] == [expected_pulses(r["sha256"]) for r in results[1:]]
            assert board.restarts == 1

    run(main())


def test_a_refused_bitstream_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            bitstreams = rig.bitstreams(3)
            rig.boards[0].firmware.refuse[bitstreams[1][0]] = "FPGA did not configure: CDONE stayed low"
            results = await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            by_sha = {r["sha256"]: r for r in results}
            assert by_sha[bitstreams[1][0]]["error"] == "FPGA did not configure: CDONE stayed low"
            assert "pulses" in by_sha[bitstreams[0][0]] and "pulses" in by_sha[bitstreams[2][0]]

    run(main())


def test_a_board_that_forgot_its_bitstreams_gets_them_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            bitstreams = rig.bitstreams(2)
            await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            rig.boards[0].firmware.forget_everything()  # e.g. reset behind the scheduler's back
            results = await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            assert all(r["pulses"] == expected_pulses(r["sha256"]) for r in results)

    run(main())


def test_wake_makes_serve_return_between_units_and_nothing_is_lost(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            board = rig.boards[0]
            returns = 0
            serve = rig.scheduler.serve

            async def counting_serve(target: Any) -> None:
                nonlocal returns
                await serve(target)
                returns += 1

            rig.scheduler.serve = counting_serve  # type: ignore[method-assign]

            def poke(firmware: FakeFirmware, sha: str) -> None:
                if len(firmware.evaluations) in (2, 4):
                    loop.call_soon_threadsafe(board.wake.set)

            loop = asyncio.get_running_loop()
            board.firmware.on_evaluate = poke
            bitstreams = rig.bitstreams(6)
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            results = await results_of(evaluation)
            assert sorted(r["sha256"] for r in results) == sorted(sha for sha, _ in bitstreams)
            assert len(board.firmware.evaluations) == 6
            assert returns >= 3  # it returned when woken, and was called again

    run(main())


def test_the_update_lock_is_held_while_a_board_evaluates(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            held: list[int] = []
            rig.boards[0].firmware.on_evaluate = lambda fw, sha: held.append(rig.manager.lock_holders)
            await results_of(rig.scheduler.submit("alice", rig.bitstreams(2), "each", args=ARGS))
            assert held == [1, 1]
            await asyncio.sleep(0.05)
            assert rig.manager.lock_holders == 0

    run(main())


def test_units_of_an_ended_reservation_fail_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            board = rig.boards[0]
            board.firmware.on_evaluate = lambda fw, sha: rig.manager.reservations.by_serial.clear()
            bitstreams = rig.bitstreams(3)
            results = await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            by_label = {r["label"]: r for r in results}
            assert "pulses" in by_label["b0"]  # the one counting finishes
            for label in ("b1", "b2"):
                assert "reservation of board SERIAL0 ended" in by_label[label]["error"]

    run(main())


def test_arguments_come_from_the_request_then_the_reservation_then_defaults(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            seen: list[tuple[int, int]] = []
            original = FakeClient.start_evaluate

            def spy(self: FakeClient, sha256: str, clock_hz: int, window_ms: int) -> int:
                seen.append((clock_hz, window_ms))
                return original(self, sha256, clock_hz, window_ms)

            FakeClient.start_evaluate = spy  # type: ignore[method-assign]
            try:
                rig.manager.reservations.by_serial["SERIAL0"].args = {"window_ms": 20}
                await results_of(rig.scheduler.submit("alice", rig.bitstreams(1), "each"))
                await results_of(
                    rig.scheduler.submit("alice", rig.bitstreams(1), "each", args={"window_ms": 30})
                )
                rig.manager.reservations.by_serial["SERIAL0"].args = {}
                DEFAULT_ARGS["window_ms"], saved = 40, DEFAULT_ARGS["window_ms"]
                try:
                    await results_of(rig.scheduler.submit("alice", rig.bitstreams(1), "each"))
                finally:
                    DEFAULT_ARGS["window_ms"] = saved
            finally:
                FakeClient.start_evaluate = original  # type: ignore[method-assign]
            assert seen == [(48_000_000, 20), (48_000_000, 30), (48_000_000, 40)]

    run(main())


def test_submit_refuses_what_cannot_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            bitstreams = rig.bitstreams(1)
            with pytest.raises(EvaluationRefused) as refused:
                rig.scheduler.submit("bob", bitstreams, "each")
            assert refused.value.status == 409 and "no reserved board" in refused.value.message
            with pytest.raises(EvaluationRefused) as refused:
                rig.scheduler.submit("alice", bitstreams, "each", serials=["ELSEWHERE"])
            assert refused.value.status == 404 and "ELSEWHERE" in refused.value.message

    run(main())


def test_results_are_published_as_events_and_a_late_answer_is_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            subscription = rig.manager.reservations.events.subscribe("alice")
            evaluation = rig.scheduler.submit("alice", rig.bitstreams(2), "each", args=ARGS)
            results = await results_of(evaluation)
            events = [await asyncio.wait_for(subscription.get(), 1) for _ in results]
            assert [e["event"] for e in events] == ["evaluation_result"] * 2
            assert [e["sha256"] for e in events] == [r["sha256"] for r in results]
            unit = evaluation.units[0]
            assert not rig.scheduler.queues.finish(unit, "SERIAL0", pulses=1)  # already done: dropped
            assert len(evaluation.results) == 2

    run(main())


def test_cancel_fails_queued_units_and_stop_fails_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, boards=1)
        for board in rig.boards:
            board.evaluation_ready = False  # nobody serves: everything stays queued
        evaluation = rig.scheduler.submit("alice", rig.bitstreams(2), "each", args=ARGS)
        rig.scheduler.cancel(evaluation, "cancelled: gone")
        assert [r["error"] for r in await results_of(evaluation)] == ["cancelled: gone"] * 2
        second = rig.scheduler.submit("alice", rig.bitstreams(1), "each", args=ARGS)
        await rig.scheduler.stop()
        assert [r["error"] for r in await results_of(second)] == ["the gateway stopped"]

    run(main())


def test_any_mode_runs_only_on_the_boards_asked_for(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            other, asked = rig.boards
            bitstreams = rig.bitstreams(6)
            by_resin_uuid = [asked.record["ResinUUID"]]  # a board may be named by either of its ids
            evaluation = rig.scheduler.submit("alice", bitstreams, "any", serials=by_resin_uuid, args=ARGS)
            results = await results_of(evaluation)
            assert sorted(r["sha256"] for r in results) == sorted(sha for sha, _ in bitstreams)
            assert {r["serial"] for r in results} == {asked.serial}
            assert all(r["pulses"] == expected_pulses(r["sha256"]) for r in results)

            asked.sightings.clear()  # unplugged: the evaluations fail rather than run elsewhere
            evaluation = rig.scheduler.submit("alice", rig.bitstreams(2), "any", serials=[asked.serial])
            results = await results_of(evaluation)
            assert len(results) == 2
            assert all(f"board {asked.serial} is offline" in r["error"] for r in results), results
            assert other.firmware.evaluations == []

    run(main())


def test_closing_the_stream_cancels_the_unit_claimed_to_run_next(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            loop = asyncio.get_running_loop()
            firmware = rig.boards[0].firmware
            bitstreams = rig.bitstreams(3)
            evaluations_: list[Evaluation] = []

            def cancel_while_the_next_is_sent(fw: FakeFirmware, sha: str) -> None:
                if sha == bitstreams[1][0]:  # b0 counts, b1 was claimed to run next
                    loop.call_soon_threadsafe(rig.scheduler.cancel, evaluations_[0], "cancelled: gone")

            firmware.on_load = cancel_while_the_next_is_sent
            evaluations_.append(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
            by_label = {r["label"]: r for r in await results_of(evaluations_[0])}
            assert by_label["b0"]["pulses"] == expected_pulses(bitstreams[0][0])  # counting: it finishes
            assert by_label["b1"]["error"] == by_label["b2"]["error"] == "cancelled: gone"
            assert [sha for sha, _ in firmware.evaluations] == [bitstreams[0][0]]

    run(main())


def test_a_board_that_does_not_take_the_next_bitstream_still_gives_the_count_it_made(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            board = rig.boards[0]
            bitstreams = rig.bitstreams(3)

            def no_answer_once(fw: FakeFirmware, sha: str) -> None:
                if sha == bitstreams[1][0] and board.restarts == 0:  # sent while b0 counts
                    raise NoAnswer("no answer to 'load' within 10.0 s")

            board.firmware.on_load = no_answer_once
            evaluation = rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            results = await results_of(evaluation)
            assert sorted(r["sha256"] for r in results) == sorted(sha for sha, _ in bitstreams)
            assert all(r.get("pulses") == expected_pulses(r["sha256"]) for r in results), results
            assert board.restarts == 1  # the board that did not answer was restarted after b0's count

    run(main())


def test_a_board_offline_again_later_gets_its_whole_grace(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path) as rig:
            away, worker = rig.boards
            scheduler = rig.scheduler.queues
            passes = 0
            check_queues = scheduler.check_queues

            def counted_check() -> None:
                nonlocal passes
                passes += 1
                check_queues()

            scheduler.check_queues = counted_check  # type: ignore[method-assign]
            # `away` is unplugged while the other board gets through 10 windows (the queues are checked)
            away.sightings.clear()
            results = await results_of(scheduler.submit("alice", rig.bitstreams(10), "any", args=ARGS))
            assert {r["serial"] for r in results} == {worker.serial} and passes >= 1
            await until(lambda: scheduler._watch is not None and scheduler._watch.done(), 5, "idle queues")
            away.sightings["application"] = object()  # plugged back
            await asyncio.sleep(2 * scheduler.lost_grace)  # time passes...
            away.sightings.clear()  # ...and it is unplugged again, briefly
            checked = passes
            evaluation = scheduler.submit(
                "alice", rig.bitstreams(2), "each", serials=[away.serial], args=ARGS
            )
            await until(lambda: passes > checked, 5, "the queues checked with the board away")
            away.sightings["application"] = object()  # back within the grace: its evaluations run
            away.wake.set()
            results = await results_of(evaluation)
            assert all(r.get("pulses") == expected_pulses(r["sha256"]) for r in results), results

    run(main())


def test_a_bitstream_evaluated_again_and_again_is_never_collected(tmp_path: Path) -> None:
    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            store = rig.scheduler.bitstreams
            bitstreams = rig.bitstreams(1)
            await results_of(
                rig.scheduler.submit("alice", bitstreams, "each", args=ARGS)
            )  # the board holds it
            uploaded = time.time() - 7200
            os.utime(store.cache.path_of(bitstreams[0][0]), (uploaded, uploaded))
            for _ in range(2):  # evaluated, then a collection (another upload), then evaluated again
                results = await results_of(rig.scheduler.submit("alice", bitstreams, "each", args=ARGS))
                assert [r["pulses"] for r in results] == [expected_pulses(bitstreams[0][0])]
                await store.collect()
            assert store.cache.has(bitstreams[0][0])

    run(main())


def test_an_evaluation_asked_for_during_a_collection_never_loses_its_bitstream(tmp_path: Path) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, boards=1)
        store = rig.scheduler.bitstreams
        [(sha, label)] = rig.bitstreams(1)
        unused = time.time() - 7200  # unused for two hours: the next collection deletes it
        os.utime(store.cache.path_of(sha), (unused, unused))
        submitted = threading.Event()
        submit, collect = rig.scheduler.submit, store.cache.collect

        def noted_submit(*args: Any, **kwargs: Any) -> Evaluation:
            submitted.set()
            return submit(*args, **kwargs)

        def slow_collect(keep: Any, now: float | None = None) -> Any:
            submitted.wait(2)  # the evaluation is asked for while the collection runs (or waits for it)
            return collect(keep, now)

        rig.scheduler.submit = noted_submit  # type: ignore[method-assign]
        store.cache.collect = slow_collect  # type: ignore[method-assign]
        clients = Clients()
        clients.remember("alice", token_digest(TOKEN))
        app = Starlette(
            routes=evaluation_routes.ROUTES,
            exception_handlers={ApiError: lambda _, error: error_response(error.status, error.message)},
        )
        app.state.gateway = GatewayApi(  # what the evaluation routes read: the scheduler and the clients
            rig.manager,
            rig.manager.reservations,
            rig.scheduler,
            clients,
            rig.manager.config.max_bitstream_bytes,
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            collecting = asyncio.create_task(store.collect())
            body = {"name": "alice", "bitstreams": [{"sha256": sha, "label": label}], "args": ARGS}
            posting = asyncio.create_task(
                client.post("/v1/evaluations", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            )
            await collecting
            async with rig:  # the board serves from now on
                response = await asyncio.wait_for(posting, 10)
        if response.status_code == 200:  # accepted: it is counted
            *results, _ = [json.loads(line) for line in response.text.splitlines()]
            assert [r.get("pulses") for r in results] == [expected_pulses(sha)], results
        else:  # or refused, so that the client uploads it again
            assert response.status_code == 422 and "upload it first" in response.json()["error"]

    run(main())


def test_finished_evaluations_are_kept_up_to_a_number_of_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queues, "KEEP_RESULTS", 5)

    async def main() -> None:
        async with Rig(tmp_path, boards=1) as rig:
            first = rig.scheduler.submit("alice", rig.bitstreams(3), "each", args=ARGS)
            await results_of(first)
            second = rig.scheduler.submit("alice", rig.bitstreams(3), "each", args=ARGS)
            await results_of(second)
            rig.scheduler.submit("alice", rig.bitstreams(1), "each", args=ARGS)
            assert first.id not in rig.scheduler.evaluations  # 6 results with the second: forgotten
            assert second.id in rig.scheduler.evaluations

    run(main())


def test_the_queue_check_judges_each_board_once_whatever_its_queue(tmp_path: Path) -> None:
    async def main() -> None:
        rig = Rig(tmp_path, boards=1)  # nobody serves: everything stays queued
        judged: list[str] = []
        unusable = rig.scheduler.queues._unusable

        def counted(board: Any, name: str) -> Any:
            judged.append(board.serial)
            return unusable(board, name)

        rig.scheduler.queues._unusable = counted  # type: ignore[method-assign]
        rig.scheduler.submit("alice", rig.bitstreams(300), "each", args=ARGS)
        rig.scheduler.queues.check_queues()
        assert judged == ["SERIAL0"]
        await rig.scheduler.stop()

    run(main())


# -- end to end: a real gateway with virtual boards ------------------------------------------------


def reserve(gateway: GatewayProcess, name: str, count: int, args: dict[str, int]) -> tuple[str, list[str]]:
    """Reserve ``count`` boards and wait until they run the evaluation firmware: token, serials."""
    body = {"name": name, "kind": "pulsecount", "count": count, "args": args}
    response = httpx.post(f"{gateway.url}/v1/reservations", json=body, timeout=30)
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    serials = [r["serial"] for r in response.json()["reservations"]]

    def ready() -> bool:
        listed = gateway.get("/v1/reservations", params={"name": name}).json()["reservations"]
        return len(listed) == count and all(r["state"] == "ready" for r in listed)

    wait_for(ready, 120, f"{count} board(s) ready for {name}", interval=0.1)
    return token, serials


def upload(gateway: GatewayProcess, data: bytes) -> str:
    response = httpx.put(f"{gateway.url}/v1/bitstreams", content=data, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["sha256"]


def stream_evaluation(
    gateway: GatewayProcess, token: str, body: dict[str, Any], on_line: Callable[[dict], None] | None = None
) -> list[dict[str, Any]]:
    """POST /v1/evaluations; every NDJSON line, as it arrived."""
    lines = []
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(30, read=120)
    with httpx.stream(
        "POST", f"{gateway.url}/v1/evaluations", json=body, headers=headers, timeout=timeout
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for text in r.iter_lines():
            if text.strip():
                lines.append(json.loads(text))
                if on_line is not None:
                    on_line(lines[-1])
    return lines


def variant(bitstream: bytes, index: int) -> bytes:
    """The same circuit under another sha256: a comment in the .bin's header (valid, as icepack's)."""
    assert bitstream[:4] == b"\xff\x00\x00\xff"  # icepack's empty header
    return b"\xff\x00" + f"variant {index}".encode() + b"\x00" + bitstream[2:]


@pytest.fixture(scope="module")
def netlist_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two virtual pico2-ice boards whose FPGA simulates the bitstream's netlist (3 s to settle)."""
    data = tmp_path_factory.mktemp("netlist") / "data"
    with running_gateway(data, 2, env={"PICOFLEET_SIM_FPGA_DEADLINE": "3"}) as process:
        yield process


@pytest.mark.timeout(300)
def test_real_circuits_count_exactly_on_every_board(
    netlist_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    by_16, by_4 = session_counter(tmp_path_factory, 16), session_counter(tmp_path_factory, 4)
    loop = session_loop(tmp_path_factory)
    token, serials = reserve(netlist_gateway, "alice", 2, {"clock_hz": 1_000_000, "window_ms": 10})
    a, b = upload(netlist_gateway, by_16.asc.read_bytes()), upload(netlist_gateway, by_4.bin.read_bytes())
    never = upload(netlist_gateway, loop.bin.read_bytes())
    labels = {a: "by16", never: "loop", b: "by4"}
    body = {"name": "alice", "bitstreams": [{"sha256": sha, "label": label} for sha, label in labels.items()]}
    lines = stream_evaluation(netlist_gateway, token, body)
    *results, summary = lines
    evaluation = summary["evaluation"]
    assert summary == {"evaluation": evaluation, "done": True, "results": 6, "failed": 2}
    # 10 ms at 1 MHz: 10,000 clocks, so 625 rising edges of clock/16 and 2,500 of clock/4
    counted = [r for r in results if "pulses" in r]
    assert sorted((r["serial"], r["label"], r["sha256"], r["pulses"]) for r in counted) == sorted(
        [(serial, "by16", a, 625) for serial in serials] + [(serial, "by4", b, 2500) for serial in serials]
    )
    # a circuit that never settles fails alone, with the board's reason; the boards go on
    failed = [r for r in results if "error" in r]
    assert sorted(r["serial"] for r in failed) == sorted(serials)
    assert all(r["label"] == "loop" and "did not settle" in r["error"] for r in failed), failed
    assert all(r["evaluation"] == evaluation for r in results)
    kept = netlist_gateway.get(f"/v1/evaluations/{evaluation}", headers={"Authorization": f"Bearer {token}"})
    assert kept.status_code == 200 and kept.json()["done"] and kept.json()["results"] == results
    assert netlist_gateway.get(f"/v1/evaluations/{evaluation}").status_code == 403


@pytest.fixture(scope="module")
def timing_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two virtual boards with the fast FPGA timing model (scheduling tests need no netlist)."""
    data = tmp_path_factory.mktemp("timing") / "data"
    with running_gateway(data, 2, env={"PICOFLEET_SIM_FPGA": "timing"}) as process:
        yield process


@pytest.mark.timeout(300)
def test_any_mode_finishes_every_bitstream_once_when_a_board_is_unplugged(
    timing_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    packed = session_counter(tmp_path_factory, 16).bin.read_bytes()
    token, serials = reserve(timing_gateway, "grace", 2, {"clock_hz": 1_000_000, "window_ms": 300})
    shas = [upload(timing_gateway, variant(packed, index)) for index in range(10)]
    body = {"name": "grace", "mode": "any", "bitstreams": [{"sha256": sha} for sha in shas]}
    unplugged: list[str] = []

    def unplug_after_the_first(line: dict) -> None:
        if not unplugged and "serial" in line:
            unplugged.append(line["serial"])
            rack(timing_gateway.data, "unplug", serial=line["serial"])  # mid-way through its next one

    try:
        lines = stream_evaluation(timing_gateway, token, body, unplug_after_the_first)
        *results, summary = lines
        assert summary["done"] and summary["results"] == 10 and summary["failed"] == 0, lines
        assert sorted(r["sha256"] for r in results) == sorted(shas)  # each once: none lost, none twice
        assert all(isinstance(r["pulses"], int) for r in results)
        lost = unplugged[0]
        survivor = next(serial for serial in serials if serial != lost)
        assert sum(r["serial"] == survivor for r in results) >= 8
        # the unplug hit a unit the lost board was counting: it went back to the queue, not lost
        requeued = [
            line
            for line in timing_gateway.output().splitlines()
            if f"({lost}): unit " in line and "goes back to the queue" in line
        ]
        assert requeued, timing_gateway.output()
    finally:
        for serial in unplugged:
            rack(timing_gateway.data, "plug", serial=serial)

    def recovered() -> bool:
        listed = timing_gateway.get("/v1/reservations", params={"name": "grace"}).json()["reservations"]
        return any(r["serial"] == lost and r["state"] == "ready" for r in listed)

    wait_for(recovered, 60, f"board {lost} ready for grace again once plugged back", interval=0.1)
