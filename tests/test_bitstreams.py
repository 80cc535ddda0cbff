"""Bitstream uploads: the store (gateway/evaluation/bitstream_store.py) and ``/v1/bitstreams``.

The bitstreams are real: the divide-by-16 counter built with yosys + nextpnr-ice40 + icepack
(tests/helpers/fpga.py), as the ``.asc`` nextpnr writes and the ``.bin`` icepack packs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.formats import image, uf2
from picofleet.gateway.evaluation import bitstream_store
from picofleet.gateway.evaluation.bitstream_store import BitstreamRejected, BitstreamStore
from tests.helpers.fpga import FpgaBuild
from tests.helpers.gateway import GatewayProcess, running_gateway

MAX_BITSTREAM = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the store --------------------------------------------------------------------------------


def test_a_bin_is_stored_under_its_own_sha256(tmp_path: Path, counter: FpgaBuild) -> None:
    data = counter.bin.read_bytes()
    store = BitstreamStore(tmp_path, 1 << 30)

    async def main() -> None:
        stored = await store.add(data)
        assert stored.public() == {"sha256": sha256(data), "size": len(data), "source": "bin"}
        assert store.has(stored.sha256)
        assert await store.get(stored.sha256) == data
        assert (await store.lookup(stored.sha256)) == stored

    asyncio.run(main())
    assert BitstreamStore(tmp_path, 1 << 30).has(sha256(data))  # on disk, for the next start


def test_an_asc_is_packed_once_to_icepacks_bin(
    tmp_path: Path, counter: FpgaBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    asc = counter.asc.read_bytes()
    packed: list[int] = []
    real_pack = bitstream_store.pack

    def counting_pack(data: bytes) -> bytes:
        packed.append(len(data))
        return real_pack(data)

    monkeypatch.setattr(bitstream_store, "pack", counting_pack)
    store = BitstreamStore(tmp_path, 1 << 30)

    async def main() -> None:
        together = await asyncio.gather(*(store.add(asc) for _ in range(3)))
        again = await store.add(asc)
        assert {stored for stored in together} == {again}
        assert again.public() == {
            "sha256": sha256(counter.bin.read_bytes()),  # byte-identical to running icepack
            "size": counter.bin.stat().st_size,
            "source": "asc",
        }
        assert await store.lookup(sha256(asc)) == again  # the upload's sha256 names it too

    asyncio.run(main())
    assert packed == [len(asc)]


@pytest.mark.parametrize(
    ("mangle", "status", "words"),
    [
        (lambda b: b[:-300], 422, "truncated"),
        (lambda b: b[:5000] + bytes([b[5000] ^ 0xFF]) + b[5001:], 422, "offset"),
        (lambda b: b"", 400, "empty"),
        (lambda b: b"\x01" + os.urandom(1000), 400, "not an iCE40"),
        (lambda b: b"hello\n", 400, "not an iCE40"),
    ],
    ids=["truncated", "corrupted", "empty", "random", "text"],
)
def test_invalid_bins_are_refused_with_the_reason(
    tmp_path: Path, counter: FpgaBuild, mangle, status: int, words: str
) -> None:
    data = mangle(counter.bin.read_bytes())
    store = BitstreamStore(tmp_path, 1 << 30)
    with pytest.raises(BitstreamRejected) as refused:
        asyncio.run(store.add(data))
    assert refused.value.status == status and words in refused.value.message, refused.value.message
    assert not store.has(sha256(data))


def test_an_invalid_asc_and_a_uf2_are_refused(tmp_path: Path, counter: FpgaBuild) -> None:
    store = BitstreamStore(tmp_path, 1 << 30)
    asc = counter.asc.read_text()
    broken = asc.replace(".device 5k", ".device 1k", 1).encode()
    with pytest.raises(BitstreamRejected) as refused:
        asyncio.run(store.add(broken))
    assert refused.value.status == 422 and refused.value.message.startswith("invalid .asc bitstream: line")
    firmware = uf2.from_binary(
        image.make_app_image("x", "1", "pico2-ice", 512), image.FLASH_BASE, uf2.RP2350_ARM_S
    )
    with pytest.raises(BitstreamRejected) as refused:
        asyncio.run(store.add(firmware))
    assert refused.value.status == 400 and "UF2" in refused.value.message


def test_collection_keeps_referenced_bitstreams_and_drops_the_rest_beyond_the_bound(
    tmp_path: Path, counter: FpgaBuild
) -> None:
    data = counter.bin.read_bytes()
    variants = [b"\xff\x00" + f"variant {i}".encode() + b"\x00" + data[2:] for i in range(3)]
    referenced: set[str] = set()
    store = BitstreamStore(tmp_path, max_bytes=len(data) + 100, referenced=lambda: referenced)

    async def main() -> list[str]:
        shas = [(await store.add(variant)).sha256 for variant in variants]
        referenced.add(shas[0])
        old = time.time() - 60
        for index, sha in enumerate(shas):  # the oldest first; shas[2] used last
            os.utime(store.cache.path_of(sha), (old + index, old + index))
        await store.collect()
        return shas

    first, second, third = asyncio.run(main())
    fresh = BitstreamStore(tmp_path, 1 << 30)
    assert fresh.has(first)  # referenced: kept though the store is over its bound
    assert not fresh.has(second)  # least recently used unreferenced one
    assert not fresh.has(third)  # still over the bound with the referenced one alone


def test_a_bitstream_uploaded_or_looked_up_again_is_kept_an_hour_from_then(
    tmp_path: Path, counter: FpgaBuild
) -> None:
    packed, asc = counter.bin.read_bytes(), counter.asc.read_bytes()
    store = BitstreamStore(tmp_path, 1 << 30)
    sha = sha256(packed)

    async def main() -> None:
        await store.add(asc)  # stored as the .bin, and known by the .asc's sha256 too
        for again in (
            lambda: store.add(packed),  # the client uploads it again
            lambda: store.add(asc),
            lambda: store.lookup(sha),  # or asks whether the gateway has it, then uses it
            lambda: store.lookup(sha256(asc)),
        ):
            uploaded = time.time() - 7200
            os.utime(store.cache.path_of(sha), (uploaded, uploaded))
            assert await again()
            await store.collect()
            assert BitstreamStore(tmp_path, 1 << 30).has(sha)

    asyncio.run(main())


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with one virtual board (and a small bitstream limit) for the whole module."""
    env = {"PICOFLEET_MAX_BITSTREAM_BYTES": str(MAX_BITSTREAM)}
    with running_gateway(tmp_path_factory.mktemp("bitstreams") / "data", 1, env=env) as process:
        yield process


def put(gateway: GatewayProcess, body: bytes) -> httpx.Response:
    return httpx.put(f"{gateway.url}/v1/bitstreams", content=body, timeout=30)


def test_an_uploaded_asc_is_found_by_both_sha256s(gateway: GatewayProcess, counter: FpgaBuild) -> None:
    asc, packed = counter.asc.read_bytes(), counter.bin.read_bytes()
    response = put(gateway, asc)
    assert response.status_code == 201, response.text
    assert response.json() == {"sha256": sha256(packed), "size": len(packed), "source": "asc"}
    for name in (sha256(packed), sha256(asc)):
        head = httpx.head(f"{gateway.url}/v1/bitstreams/{name}", timeout=10)
        assert head.status_code == 200, name
    assert gateway.get(f"/v1/bitstreams/{sha256(asc)}").json()["sha256"] == sha256(packed)
    assert put(gateway, packed).json()["source"] == "bin"


def test_unknown_and_malformed_names_are_404_and_400(gateway: GatewayProcess) -> None:
    assert httpx.head(f"{gateway.url}/v1/bitstreams/{'0' * 64}", timeout=10).status_code == 404
    response = gateway.get(f"/v1/bitstreams/{'0' * 64}")
    assert response.status_code == 404 and "no bitstream" in response.json()["error"]
    assert gateway.get("/v1/bitstreams/not-a-sha").status_code == 400


def test_bad_uploads_are_refused_before_reaching_a_board(gateway: GatewayProcess, counter: FpgaBuild) -> None:
    truncated = counter.bin.read_bytes()[:-1000]
    response = put(gateway, truncated)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid .bin bitstream: offset ")
    assert "truncated" in response.json()["error"]
    response = put(gateway, b"GIF89a not a bitstream")
    assert response.status_code == 400 and "not an iCE40 bitstream" in response.json()["error"]
    response = put(gateway, b"." + b"x" * MAX_BITSTREAM)
    assert response.status_code == 413 and str(MAX_BITSTREAM) in response.json()["error"]
    assert gateway.get(f"/v1/bitstreams/{sha256(truncated)}").status_code == 404


def reserve(gateway: GatewayProcess, name: str) -> str:
    """Reserve one board for ``name``; its token."""
    response = httpx.post(
        f"{gateway.url}/v1/reservations", json={"name": name, "kind": "pulsecount", "count": 1}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def evaluate(gateway: GatewayProcess, body: dict, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{gateway.url}/v1/evaluations", json=body, headers=headers, timeout=30)


def test_evaluation_requests_are_checked_before_anything_is_queued(
    gateway: GatewayProcess, counter: FpgaBuild
) -> None:
    sha = put(gateway, counter.bin.read_bytes()).json()["sha256"]
    token = reserve(gateway, "frank")
    try:
        body = {"name": "frank", "bitstreams": [{"sha256": sha}]}
        no_token = evaluate(gateway, body, None)
        assert no_token.status_code == 403 and "token" in no_token.json()["error"]
        assert evaluate(gateway, body, "rt_not-franks").status_code == 403
        unknown = evaluate(gateway, {**body, "bitstreams": [{"sha256": "1" * 64}]}, token)
        assert unknown.status_code == 422 and "upload it first" in unknown.json()["error"]
        for bad, words in (
            ({**body, "mode": "all"}, "mode"),
            ({**body, "bitstreams": []}, "bitstreams"),
            ({**body, "bitstreams": [{"sha256": "XY"}]}, "sha256"),
            ({**body, "args": {"clock_hz": 0}}, "clock_hz"),
            ({**body, "args": {"volts": 3}}, "volts"),
        ):
            response = evaluate(gateway, bad, token)
            assert response.status_code == 400 and words in response.json()["error"], bad
        elsewhere = evaluate(gateway, {**body, "serials": ["NOT-FRANKS"]}, token)
        assert elsewhere.status_code == 404 and "NOT-FRANKS" in elsewhere.json()["error"]
    finally:
        httpx.post(
            f"{gateway.url}/v1/reservations/end",
            json={"name": "frank"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
