"""git push over smart HTTP to a real fleet service process: validated by fleet.yml, making releases.

Everything goes through the real ``git`` client and the real ``git http-backend``; the service
runs as its own process on an ephemeral loopback port.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from picofleet.firmware.asset_cache import AssetCache
from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.image import FLASH_BASE, make_app_image
from tests.helpers.fleet import FleetProcess, git

pytestmark = pytest.mark.timeout(120)

MANIFEST = """\
boards:
  pico2-ice:
    firmware: build/app.uf2
    environment: {MODE: lab}
    config: {RATE: '5'}
"""


def app_uf2(version: str = "2.0.0", family: int = uf2.RP2350_ARM_S) -> bytes:
    """A picofleet app image for pico2-ice as a UF2 file."""
    return uf2.from_binary(make_app_image("picofleet-app", version, "pico2-ice"), FLASH_BASE, family)


@pytest.fixture(scope="module")
def fleet_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProcess]:
    service = FleetProcess(tmp_path_factory.mktemp("fleet") / "data").start()
    yield service
    assert service.stop() == 0, service.output()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A fresh work tree with fleet.yml and build/app.uf2 committed (``files`` overrides/extends)."""

    def make(files: dict[str, bytes | str] | None = None, name: str = "work") -> Path:
        work = tmp_path / name
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        write(work, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2(), **(files or {})})
        commit(work, "first")
        return work

    return make


def write(work: Path, files: dict[str, bytes | str]) -> None:
    for path, content in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)


def commit(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD").stdout.strip()


def remote_head(work: Path, url: str) -> str | None:
    out = git(work, "ls-remote", url, "refs/heads/main").stdout.split()
    return out[0] if out else None


def test_push_makes_a_release_and_a_second_push_moves_the_target(
    fleet_service: FleetProcess, make_repo: Callable[..., Path]
) -> None:
    created = fleet_service.create_fleet("lab")
    assert created["git_url"] == f"{fleet_service.url}/git/lab.git"
    assert fleet_service.fleet("lab")["target"] is None
    work = make_repo()
    first = git(work, "rev-parse", "HEAD").stdout.strip()
    url = fleet_service.push_url("lab")

    pushed = git(work, "push", url, "main")
    assert f"release {first[:12]} accepted" in pushed.stderr
    assert "remote: picofleet:" in pushed.stderr

    data = app_uf2()
    sha = hashlib.sha256(data).hexdigest()
    releases = fleet_service.releases("lab")
    assert [r["commit"] for r in releases] == [first]
    board = releases[0]["boards"]["pico2-ice"]
    assert board == {
        "firmware": "build/app.uf2",
        "sha256": sha,
        "size": len(data),
        "kind": "uf2",
        "environment": {"MODE": "lab"},
        "config": {"RATE": "5"},
        "fpga": None,
    }
    assert AssetCache(fleet_service.data / "assets").get(sha) == data
    assert fleet_service.fleet("lab")["target"] == first
    assert remote_head(work, url) == first
    assert not list((fleet_service.data / "releases" / "lab").glob("*.json"))  # ingested

    write(work, {"build/app.uf2": app_uf2("2.1.0")})
    second = commit(work, "second")
    git(work, "push", url, "main")
    assert [r["commit"] for r in fleet_service.releases("lab")] == [first, second]
    assert fleet_service.fleet("lab")["target"] == second
    new_sha = fleet_service.releases("lab")[1]["boards"]["pico2-ice"]["sha256"]
    assert AssetCache(fleet_service.data / "assets").get(new_sha) == app_uf2("2.1.0")

    # protocol v2 (the Git-Protocol header reaches upload-pack): the server answers "version 2"
    clone = work.parent / "clone"
    traced = git(
        work.parent, "-c", "protocol.version=2", "clone", "-q", url, str(clone), env={"GIT_TRACE_PACKET": "1"}
    )
    assert "version 2" in traced.stderr
    assert git(clone, "rev-parse", "HEAD").stdout.strip() == second

    # a tag and another branch at a release: checked, kept, not deployed; deleting another branch
    git(work, "tag", "v1")
    tagged = git(work, "push", url, "v1")
    assert f"refs/tags/v1: release {second[:12]} accepted; not deployed" in tagged.stderr
    git(work, "push", url, "main:other")
    deleted = git(work, "push", url, ":other")
    assert "refs/heads/other: deleted" in deleted.stderr
    assert fleet_service.fleet("lab")["target"] == second
    assert len(fleet_service.releases("lab")) == 2


def _symlinked(work: Path) -> None:
    (work / "build" / "app.uf2").unlink()
    (work / "real.uf2").write_bytes(app_uf2("3.0.0"))
    os.symlink("../real.uf2", work / "build" / "app.uf2")


def _submodule(work: Path) -> None:
    write(work, {"fleet.yml": MANIFEST.replace("build/app.uf2", "vendor/app.uf2")})
    vendor = work / "vendor"  # an embedded repository: `git add` records it as a gitlink (160000)
    vendor.mkdir()
    git(vendor, "init", "-q")
    write(vendor, {"app.uf2": app_uf2()})
    commit(vendor, "vendored")


REFUSALS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "bad-yaml": (
        lambda w: write(w, {"fleet.yml": "boards:\n  pico2-ice:\n    firmware: [unclosed\n"}),
        ["fleet.yml: invalid YAML at line 4"],
    ),
    "unknown-board": (
        lambda w: write(w, {"fleet.yml": "boards:\n  pico9:\n    firmware: build/app.uf2\n"}),
        ["fleet.yml: boards.pico9: unknown board type 'pico9' (known: pico2-ice, rp2040, rp2350)"],
    ),
    "unknown-key": (
        lambda w: write(w, {"fleet.yml": MANIFEST.replace("    config:", "    flavour: x\n    config:")}),
        ["fleet.yml: boards.pico2-ice: unknown key(s) flavour"],
    ),
    "missing-file": (
        lambda w: write(w, {"fleet.yml": MANIFEST.replace("build/app.uf2", "build/none.uf2")}),
        ["fleet.yml: boards.pico2-ice.firmware: build/none.uf2 does not exist in the commit"],
    ),
    "wrong-family": (
        lambda w: write(w, {"build/app.uf2": uf2.from_binary(b"\x01" * 600, FLASH_BASE, uf2.RP2040)}),
        ["build/app.uf2: UF2 family rp2040 cannot run on board type pico2-ice (it accepts absolute, data"],
    ),
    "invalid-uf2": (
        lambda w: write(w, {"build/app.uf2": app_uf2()[:700]}),
        ["build/app.uf2: invalid UF2: file size 700 is not a multiple of 512"],
    ),
    "escaping-path": (
        lambda w: write(w, {"fleet.yml": MANIFEST.replace("build/app.uf2", "../outside/app.uf2")}),
        ["fleet.yml: boards.pico2-ice.firmware: '../outside/app.uf2' escapes the repository"],
    ),
    "absolute-path": (
        lambda w: write(w, {"fleet.yml": MANIFEST.replace("build/app.uf2", "/etc/passwd")}),
        ["'/etc/passwd' is an absolute path"],
    ),
    "symlink": (_symlinked, ["fleet.yml: boards.pico2-ice.firmware: build/app.uf2 is a symlink"]),
    "submodule": (_submodule, ["fleet.yml: boards.pico2-ice.firmware: vendor is a git submodule"]),
    "bitstream-without-fpga": (
        lambda w: write(
            w,
            {
                "fleet.yml": "boards:\n  rp2040:\n    firmware: fpga/top.bin\n",
                "fpga/top.bin": b"\xff\x00" * 64,
            },
        ),
        ["fpga/top.bin: an iCE40 bitstream, but board type rp2040 has no iCE40 FPGA"],
    ),
    "truncated-bitstream": (
        lambda w: write(
            w,
            {
                "fleet.yml": MANIFEST.replace("    environment:", "    fpga: fpga/top.bin\n    environment:"),
                "fpga/top.bin": b"\xff\x00" * 64,
            },
        ),
        ["fpga/top.bin: invalid bitstream:"],
    ),
    "not-a-mapping": (
        lambda w: write(w, {"fleet.yml": "- just\n- a list\n"}),
        ["fleet.yml: must be a mapping"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_invalid_push_is_refused_and_nothing_moves(
    fleet_service: FleetProcess, make_repo: Callable[..., Path], case: str
) -> None:
    fleet = f"refuse-{case}"
    fleet_service.create_fleet(fleet)
    work = make_repo()
    url = fleet_service.push_url(fleet)
    good = git(work, "rev-parse", "HEAD").stdout.strip()
    git(work, "push", url, "main")
    change, reasons = REFUSALS[case]
    change(work)
    bad = commit(work, f"bad: {case}")

    refused = git(work, "push", url, "main", check=False)
    assert refused.returncode != 0
    assert "pre-receive hook declined" in refused.stderr
    for reason in reasons:
        assert any(line.startswith("remote: ") and reason in line for line in refused.stderr.splitlines()), (
            f"{reason!r} not in:\n{refused.stderr}"
        )
    assert remote_head(work, url) == good != bad
    assert fleet_service.fleet(fleet)["target"] == good
    assert [r["commit"] for r in fleet_service.releases(fleet)] == [good]


def test_oversize_file_is_refused_with_the_configured_limit(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    service = FleetProcess(tmp_path / "small", "--max-asset-bytes", "4096").start()
    try:
        service.create_fleet("small")
        work = make_repo()  # the app UF2 is 16 blocks: 8192 bytes
        url = service.push_url("small")
        refused = git(work, "push", url, "main", check=False)
        assert refused.returncode != 0
        size = len(app_uf2())
        assert (
            f"remote: picofleet:   build/app.uf2: {size} bytes, over the size limit of 4096 bytes"
            in refused.stderr
        )
        assert remote_head(work, url) is None
        assert service.fleet("small")["target"] is None
        assert service.releases("small") == []
    finally:
        assert service.stop() == 0, service.output()


def test_wrong_token_fails_authentication(
    fleet_service: FleetProcess, make_repo: Callable[..., Path]
) -> None:
    fleet_service.create_fleet("auth")
    work = make_repo()
    result = git(work, "push", fleet_service.push_url("auth", token="wrong"), "main", check=False)
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr
    refs = f"{fleet_service.url}/git/auth.git/info/refs?service=git-receive-pack"
    for auth in (None, ("x", "wrong")):
        plain = httpx.get(refs, auth=auth, timeout=10)
        assert plain.status_code == 401
        assert plain.headers["www-authenticate"] == 'Basic realm="picofleet"'
    assert httpx.get(refs, auth=("anyone", fleet_service.token), timeout=10).status_code == 200
    assert fleet_service.releases("auth") == []
    unknown = git(work, "ls-remote", fleet_service.push_url("nope"), check=False)
    assert unknown.returncode != 0
    assert "remote: no fleet 'nope'" in unknown.stderr and "not found" in unknown.stderr


def test_fleet_api_refuses_bad_requests(fleet_service: FleetProcess) -> None:
    assert fleet_service.request("POST", "/v1/fleets", json={"name": "Bad_Name"}).status_code == 400
    assert fleet_service.request("POST", "/v1/fleets", json={}).status_code == 400
    fleet_service.create_fleet("twice")
    assert fleet_service.request("POST", "/v1/fleets", json={"name": "twice"}).status_code == 409
    unauthenticated = httpx.post(f"{fleet_service.url}/v1/fleets", json={"name": "x"}, timeout=10)
    assert unauthenticated.status_code == 401
    assert fleet_service.request("GET", "/v1/fleets/missing").status_code == 404
    assert fleet_service.request("GET", "/v1/fleets/missing/releases").status_code == 404


def test_large_push_is_streamed(fleet_service: FleetProcess, make_repo: Callable[..., Path]) -> None:
    fleet_service.create_fleet("large")
    work = make_repo({f"blobs/{i}.bin": os.urandom(1 << 20) for i in range(6)})
    head = git(work, "rev-parse", "HEAD").stdout.strip()
    url = fleet_service.push_url("large")
    pushed = git(
        work,
        "-c",
        "http.postBuffer=65536",
        "push",
        url,
        "main",
        env={"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
    )
    assert "Transfer-Encoding: chunked" in pushed.stderr  # the pack went as a chunked request body
    assert remote_head(work, url) == head
    assert fleet_service.fleet("large")["target"] == head
