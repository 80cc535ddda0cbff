"""kill -9 during continuous state writes: the gateway restarts cleanly and loses no acknowledged write."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx

from tests.helpers.gateway import GatewayProcess, wait_for

ROUNDS = 12


class Writer(threading.Thread):
    """PUTs commit 1, 2, 3 ... to one device; ``acked`` is the last one answered 200."""

    def __init__(self, url: str, serial: str, acked: int):
        super().__init__()
        self.url, self.serial, self.acked = url, serial, acked
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            n = self.acked
            while not self.stopped.is_set():
                n += 1
                try:
                    response = client.put(f"/v1/devices/{self.serial}", json={"commit": str(n)})
                except httpx.HTTPError:
                    return  # killed mid-request: not acknowledged
                if response.status_code == 200:
                    self.acked = n


def stored_commit(gateway: GatewayProcess, serial: str) -> int:
    return int(gateway.get(f"/v1/devices/{serial}").json()["TargetCommit"] or 0)


def test_kill_9_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    chance = random.Random(seed)
    data = tmp_path / "data"
    acknowledged = 0
    serial = ""
    for round_number in range(ROUNDS):
        gateway = GatewayProcess(data, "--simulate", "1").start()
        try:
            serial = serial or gateway.wait_devices(lambda d: len(d) == 1, 15, "the board")[0]["LocalUUID"]
            stored = stored_commit(gateway, serial)
            assert acknowledged <= stored <= acknowledged + 1, (round_number, acknowledged, stored)
            writer = Writer(gateway.url, serial, stored)
            writer.start()
            wait_for(lambda w=writer, s=stored: w.acked > s + 3, 10, "some acknowledged writes")
            time.sleep(chance.uniform(0.0, 0.3))  # a random point in the stream of writes
            gateway.kill()
            writer.stopped.set()
            writer.join(10)
            acknowledged = writer.acked
        finally:
            if gateway.process and gateway.process.poll() is None:
                gateway.kill()
    final = GatewayProcess(data, "--simulate", "1").start()
    try:
        assert acknowledged <= stored_commit(final, serial) <= acknowledged + 1
        assert json.loads((data / "database" / "enm.db").read_text())  # readable after all the kills
        assert not [path for path in (data / "database").iterdir() if "corrupt" in path.name]
    finally:
        final.stop()


def test_torn_database_at_start_is_recovered_with_a_warning(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "2")
    before = {
        d["LocalUUID"]: d["ResinUUID"] for d in gateway.wait_devices(lambda d: len(d) == 2, 15, "2 boards")
    }
    uuid = next(iter(before))
    assert gateway.put(f"/v1/devices/{uuid}", json={"commit": "first"}).status_code == 200
    assert gateway.put(f"/v1/devices/{uuid}", json={"commit": "second"}).status_code == 200
    gateway.stop()

    database = tmp_path / "data" / "database" / "enm.db"
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])  # torn by a bad disk
    again = gateway_factory("--simulate", "2")
    devices = again.wait_devices(
        lambda d: len(d) == 2 and all(x["Status"] == "Idle" for x in d), 15, "2 boards"
    )
    assert {d["LocalUUID"]: d["ResinUUID"] for d in devices} == before  # identities kept
    assert "WARNING" in again.output() and "enm.db" in again.output()
    assert [p.name for p in database.parent.iterdir() if ".corrupt-" in p.name]  # the torn file is kept
    assert json.loads(database.read_text())  # rewritten whole
