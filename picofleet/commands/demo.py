"""`picofleet demo`: a fleet service and a gateway with four virtual pico2-ice boards, ready for
`git push` and curl."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from picofleet.commands.fleet import with_credentials
from picofleet.commands.gateway import add_gateway_flags, config_from_args, serve
from picofleet.common.errors import ConfigError
from picofleet.firmware import circuits
from picofleet.firmware.formats import image, uf2

DEMO_DATA = "demo-data"
FLEET = "demo"
EXAMPLE_MANIFEST = """\
boards:
  pico2-ice:
    firmware: build/app.uf2
    environment: {GREETING: hello}
"""


class DemoError(Exception):
    """The demo could not be set up; the message is the one line to show."""


def start_fleet(data: Path, port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start the fleet service (its output in DATA/fleet.log); return it, its URL and admin token."""
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "fleet.log", "ab")  # noqa: SIM115 (the child owns it)
    command = [
        sys.executable,
        "-m",
        "picofleet.fleet.service",
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = (data / "fleet.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise DemoError(
                f"the fleet service did not start: {' '.join(tail) or 'see ' + str(data / 'fleet.log')}"
            )
        token = os.environ.get("PICOFLEET_ADMIN_TOKEN") or _read(data / "admin-token")
        if token:
            try:
                if httpx.get(
                    f"{url}/v1/fleets", headers={"Authorization": f"Bearer {token}"}, timeout=2
                ).is_success:
                    return child, url, token
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    child.terminate()
    raise DemoError(f"the fleet service did not answer on {url} within 30 s")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def ready_fleet(url: str, token: str) -> tuple[str, str]:
    """Create the demo fleet (or give it a new provisioning key); return its git URL and the key."""
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(f"{url}/v1/fleets", json={"name": FLEET}, headers=headers, timeout=10)
    if response.status_code == 409:
        response = httpx.post(f"{url}/v1/fleets/{FLEET}/provisioning-key", headers=headers, timeout=10)
    if not response.is_success:
        raise DemoError(f"cannot create the demo fleet: HTTP {response.status_code} {response.text[:200]}")
    key = response.json()["provisioning_key"]
    return with_credentials(f"{url}/git/{FLEET}.git", token), key


def example_repo(path: Path, version: str = "2.0.0") -> bool:
    """A firmware repository to push: fleet.yml and a picofleet-app UF2 for pico2-ice."""
    if (path / ".git").exists() or shutil.which("git") is None:
        return (path / ".git").exists()
    (path / "build").mkdir(parents=True, exist_ok=True)
    (path / "fleet.yml").write_text(EXAMPLE_MANIFEST)
    app = image.make_app_image("picofleet-app", version, "pico2-ice")
    (path / "build" / "app.uf2").write_bytes(uf2.from_binary(app, image.FLASH_BASE, uf2.RP2350_ARM_S))
    identity = ["-c", "user.name=picofleet demo", "-c", "user.email=demo@picofleet.invalid"]
    for step in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"app {version}"]):
        subprocess.run(["git", *identity, *step], cwd=path, check=True, capture_output=True)
    return True


def example_circuits(path: Path) -> list[Path]:
    """Two pulse-count circuits to evaluate (divide-by-16 and divide-by-4 counters), built once.

    Empty when yosys, nextpnr-ice40 or icepack is missing or a build fails (the demo says why).
    """
    missing = circuits.missing_tools()
    if missing:
        print(f"picofleet demo: no example circuits ({', '.join(missing)} not installed)", file=sys.stderr)
        return []
    built = []
    for divide_by in (16, 4):
        asc = path / f"div{divide_by}.asc"
        if not asc.exists():
            try:
                circuit = circuits.build(path / f"build-div{divide_by}", circuits.counter_verilog(divide_by))
            except circuits.CircuitError as error:
                print(f"picofleet demo: no example circuits: {str(error).splitlines()[0]}", file=sys.stderr)
                return []
            shutil.copyfile(circuit.asc, asc)
        built.append(asc)
    return built


def run(args: argparse.Namespace) -> int:
    """Run the demo: a fleet service on :8080 and a gateway on :1337 with 4 virtual pico2-ice boards.

    Everything lives in ./demo-data: the gateway's state, the fleet's (demo-data/fleet) and an
    example firmware repository to push (demo-data/example-repo).
    """
    fleet = None
    try:
        base_config = config_from_args(
            args, data=DEMO_DATA, simulate="4", host="127.0.0.1", usb_discovery="off"
        )
        fleet, fleet_url, token = start_fleet(base_config.data / "fleet", args.fleet_port)
        git_url, key = ready_fleet(fleet_url, token)
        config = config_from_args(
            args,
            data=DEMO_DATA,
            simulate="4",
            host="127.0.0.1",
            usb_discovery="off",
            fleet_url=fleet_url,
            provisioning_key=key,
        )
        repo = base_config.data / "example-repo"
        has_repo = example_repo(repo)
        examples = example_circuits(base_config.data / "circuits")
    except (ConfigError, DemoError, httpx.HTTPError, subprocess.CalledProcessError) as error:
        print(f"picofleet demo: {error}", file=sys.stderr)
        if fleet is not None:
            fleet.terminate()
        return 2
    base = f"localhost:{config.port}"
    push = (
        (
            f"  cd {repo} && git push {git_url} main\n"
            f"  # then edit fleet.yml or build/app.uf2, commit, and push again\n"
        )
        if has_repo
        else ""
    )
    evaluate = (
        (
            f"  picofleet evaluate --gateway http://{base} --name you --boards 2 \\\n"
            f"      --arg clock_hz=1000000 --arg window_ms=10 --json {' '.join(map(str, examples))}\n"
            f"  # 625 pulses for div16, 2500 for div4, on each board\n"
        )
        if examples
        else ""
    )
    print(
        f"""
picofleet demo: a fleet service ({fleet_url}, log in {base_config.data / "fleet" / "fleet.log"}) and a
gateway with 4 virtual pico2-ice boards (data in {config.data}/). Ctrl-C stops both. Try:

  curl -i {base}/v1/devices
{push}  curl -s {base}/v1/devices      # every board: Commit == TargetCommit == the pushed commit
  curl -i -H "Content-Type: application/json" -X PUT --data '{{"targetStatus":"Paused"}}' {base}/v1/enm/status
  curl -i {base}/v1/enm/status
  curl -i -H "Content-Type: application/json" -X PUT --data '{{"targetStatus":"Running"}}' \\
       {base}/v1/enm/status
{evaluate}  picofleet sim list --data {config.data}          # the virtual rack; also: unplug/plug SERIAL
  picofleet fleet boards {FLEET} --url {fleet_url} --token {token}
""",
        flush=True,
    )
    try:
        return serve(config)
    finally:
        fleet.terminate()
        try:
            fleet.wait(10)
        except subprocess.TimeoutExpired:
            fleet.kill()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet demo`."""
    parser = subparsers.add_parser(
        "demo", help="run the demo (fleet service + gateway with 4 virtual boards)", description=run.__doc__
    )
    add_gateway_flags(parser)
    parser.add_argument(
        "--fleet-port", type=int, default=8080, help="port of the demo's fleet service (8080)"
    )
    parser.set_defaults(run=run)
