"""`picofleet demo`: a fleet service and a gateway with four virtual pico2-ice boards, ready for
`git push` and curl."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from picofleet.commands.fleet import with_credentials
from picofleet.commands.gateway import add_gateway_flags, config_from_args, serve
from picofleet.common.errors import ConfigError
from picofleet.common.http.server import bind_socket
from picofleet.firmware import circuits
from picofleet.firmware.formats import image, uf2

DEMO_DATA = "demo-data"
FLEET = "demo"
HOST = "127.0.0.1"
DEMO_FLAGS = ("host", "port", "data", "simulate", "log_level")
"""The gateway's flags the demo takes (it runs its own fleet service: no --fleet, no key)."""
DEMO_DEFAULTS = {"host": HOST, "data": DEMO_DATA, "simulate": "4"}
EXAMPLE_MANIFEST = """\
boards:
  pico2-ice:
    firmware: build/app.uf2
    environment: {GREETING: hello}
    config: {LED_BLINK_MS: "250"}
"""
EXAMPLE_FPGA = "    fpga: build/top.bin\n"
"""The manifest line of the FPGA image (the divide-by-16 counter), when the demo could build it."""


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
        HOST,
        "--port",
        str(port),
    ]
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    url = f"http://{HOST}:{port}"
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


def example_repo(path: Path, version: str = "2.0.0", fpga: Path | None = None) -> bool:
    """A firmware repository to push: fleet.yml, a picofleet-app UF2 for pico2-ice and, when
    ``fpga`` names an iCE40 ``.bin``, that image as the boards' FPGA image."""
    if (path / ".git").exists() or shutil.which("git") is None:
        return (path / ".git").exists()
    (path / "build").mkdir(parents=True, exist_ok=True)
    manifest = EXAMPLE_MANIFEST
    if fpga is not None:
        shutil.copyfile(fpga, path / "build" / "top.bin")
        manifest = manifest.replace("    environment:", EXAMPLE_FPGA + "    environment:")
    (path / "fleet.yml").write_text(manifest)
    app = image.make_app_image("picofleet-app", version, "pico2-ice")
    (path / "build" / "app.uf2").write_bytes(uf2.from_binary(app, image.FLASH_BASE, uf2.RP2350_ARM_S))
    identity = ["-c", "user.name=picofleet demo", "-c", "user.email=demo@picofleet.invalid"]
    for step in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"app {version}"]):
        subprocess.run(["git", *identity, *step], cwd=path, check=True, capture_output=True)
    return True


def example_circuits(path: Path) -> list[Path]:
    """Two pulse-count circuits to evaluate (divide-by-16 and divide-by-4 counters), built once:
    their ``.asc`` files (the ``.bin`` packed beside each, ``div16.bin``, is the release's FPGA image).

    Empty when yosys, nextpnr-ice40 or icepack is missing or a build fails (the demo says why).
    """
    missing = circuits.missing_tools()
    if missing:
        print(f"picofleet demo: no example circuits ({', '.join(missing)} not installed)", file=sys.stderr)
        return []
    built = []
    for divide_by in (16, 4):
        asc = path / f"div{divide_by}.asc"
        if not asc.exists() or not asc.with_suffix(".bin").exists():
            try:
                circuit = circuits.build(path / f"build-div{divide_by}", circuits.counter_verilog(divide_by))
            except circuits.CircuitError as error:
                print(f"picofleet demo: no example circuits: {str(error).splitlines()[0]}", file=sys.stderr)
                return []
            shutil.copyfile(circuit.bin, asc.with_suffix(".bin"))
            shutil.copyfile(circuit.asc, asc)
        built.append(asc)
    return built


def check_ports(ports: dict[str, tuple[str, int]]) -> None:
    """:class:`DemoError` unless every address of ``ports`` (what listens there → host, port) is free.

    Checked before anything starts or is printed: a second demo, or anything else on the ports,
    ends this one with one line.
    """
    numbers = [port for _, port in ports.values()]
    if len(set(numbers)) < len(numbers):
        raise DemoError(f"--port and --fleet-port must differ, not both {numbers[0]}")
    for what, (host, port) in ports.items():
        if port == 0:
            continue
        try:
            bind_socket(host, port).close()
        except ConfigError as error:
            raise DemoError(
                f"{what}: {error} (is another demo running? --port and --fleet-port choose others)"
            ) from None


def _runnable(path: str) -> str:
    """``path`` as the user can type it from here: relative inside the current folder, else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    if relative.startswith(".."):
        return shlex.quote(absolute)
    return shlex.quote(relative if os.sep in relative else f".{os.sep}{relative}")


def program() -> str:
    """How to run `picofleet` from the current folder, the way this demo was run.

    ``picofleet`` when that is the one on PATH, else its path (``.venv/bin/picofleet`` for
    ``./dev demo``); ``PYTHON -m picofleet.cli`` when run as a module.
    """
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "picofleet" and os.path.exists(script):
        on_path = shutil.which("picofleet")
        if on_path and os.path.samefile(on_path, script):
            return "picofleet"
        return _runnable(script)
    return f"{_runnable(sys.executable)} -m picofleet.cli"


def try_lines(
    *,
    gateway: str,
    fleet_url: str,
    token: str,
    repo: Path | None,
    git_url: str,
    circuit_files: list[Path],
    data: Path,
) -> list[str]:
    """The commands the demo suggests, in order: copy-pasteable from the folder the demo runs in.

    README.md's "Try it" shows the same lines (``TOKEN`` for the token); tests/test_demo.py
    replays them and compares them with the README.
    """
    me = program()
    lines = [f"curl -i {gateway}/v1/devices"]
    if repo is not None:
        lines += [
            f"git -C {shlex.quote(str(repo))} push {git_url} main",
            "# then edit fleet.yml or build/app.uf2 there, commit, and push again",
        ]
    status = f"{gateway}/v1/enm/status"
    json_header = '-H "Content-Type: application/json"'
    lines += [
        f"curl -s {gateway}/v1/devices    # every board: Commit == TargetCommit == the pushed commit,",
        "# Environment {GREETING: hello} and Config as the board reports them, FpgaImage == TargetFpgaImage",
        f'curl -i {json_header} -X PUT --data \'{{"targetStatus":"Paused"}}\' {status}',
        f"curl -i {status}    # currentStatus Paused: every serial port is free",
        f'curl -i {json_header} -X PUT --data \'{{"targetStatus":"Running"}}\' {status}',
    ]
    if circuit_files:
        lines += [
            f"{me} evaluate --gateway {gateway} --name you --boards 2 \\",
            "    --arg clock_hz=1000000 --arg window_ms=10 --json "
            + " ".join(shlex.quote(str(path)) for path in circuit_files),
            "# the demo's example circuits: 625 (div16) and 2500 (div4) pulses on each board",
        ]
    where = shlex.quote(str(data))
    lines += [
        f"{me} sim list --data {where}    # the virtual rack",
        f"{me} sim unplug SERIAL --data {where}    # the board turns Offline; `plug` brings it back",
        f"{me} sim image --board pico2-ice --version 2.1.0 {shlex.quote(str(data / 'app.uf2'))}"
        "    # a bootable image (--broken: one that stays in BOOTSEL)",
        f"{me} fleet boards {FLEET} --url {fleet_url} --token {token}",
    ]
    return lines


def page_lines(*, fleet_url: str, gateway: str, token_file: Path) -> list[str]:
    """The two pages to open in a browser, and how to sign in to each.

    The fleet dashboard (the fleet service's ``/``) asks for the admin token: ``PICOFLEET_ADMIN_TOKEN``
    when set, else the file the fleet service wrote. The gateway's control panel (its ``/``) is open
    unless ``PICOFLEET_API_KEY`` is set, then it asks for that key.
    """
    if os.environ.get("PICOFLEET_ADMIN_TOKEN"):
        token = "the admin token is $PICOFLEET_ADMIN_TOKEN"
    else:
        token = f"the admin token is in {token_file}"
    key = "sign in with $PICOFLEET_API_KEY" if os.environ.get("PICOFLEET_API_KEY") else "no sign-in"
    return [
        f"fleet dashboard:       {fleet_url}/    (sign in: {token})",
        f"gateway control panel: {gateway}/    ({key})",
    ]


def run(args: argparse.Namespace) -> int:
    """Run the demo: a fleet service on :8080 and a gateway on :1337 with 4 virtual pico2-ice boards.

    Everything lives in ./demo-data: the gateway's state, the fleet's (demo-data/fleet) and an
    example firmware repository to push (demo-data/example-repo). It prints what to try, commands
    to paste into another terminal in this folder.
    """
    fleet = None
    try:
        base_config = config_from_args(args, **DEMO_DEFAULTS, usb_discovery="off")
        check_ports(
            {
                "the gateway": (base_config.host, base_config.port),
                "the fleet service": (HOST, args.fleet_port),
            }
        )
        fleet, fleet_url, token = start_fleet(base_config.data / "fleet", args.fleet_port)
        git_url, key = ready_fleet(fleet_url, token)
        config = config_from_args(
            args, **DEMO_DEFAULTS, usb_discovery="off", fleet_url=fleet_url, provisioning_key=key
        )
        repo = base_config.data / "example-repo"
        examples = example_circuits(base_config.data / "circuits")
        fpga = examples[0].with_suffix(".bin") if examples else None
        has_repo = example_repo(repo, fpga=fpga if fpga is not None and fpga.exists() else None)
    except (ConfigError, DemoError, httpx.HTTPError, subprocess.CalledProcessError) as error:
        print(f"picofleet demo: {error}", file=sys.stderr)
        if fleet is not None:
            fleet.terminate()
        return 2
    host = HOST if config.host in ("0.0.0.0", "::", "") else config.host  # where curl reaches it
    host = f"[{host}]" if ":" in host else host
    lines = try_lines(
        gateway=f"http://{host}:{config.port}",
        fleet_url=fleet_url,
        token=token,
        repo=repo if has_repo else None,
        git_url=git_url,
        circuit_files=examples,
        data=config.data,
    )
    suggestions = "\n".join(f"  {line}" for line in lines)
    pages = "\n".join(
        f"  {line}"
        for line in page_lines(
            fleet_url=fleet_url,
            gateway=f"http://{host}:{config.port}",
            token_file=base_config.data / "fleet" / "admin-token",
        )
    )
    print(
        f"""
picofleet demo: a fleet service ({fleet_url}, log in {base_config.data / "fleet" / "fleet.log"}) and a
gateway with 4 virtual pico2-ice boards (data in {config.data}/). Ctrl-C stops both. Open in a browser:

{pages}

Try, in another terminal in this folder:

{suggestions}
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
    add_gateway_flags(parser, DEMO_FLAGS, DEMO_DEFAULTS)
    parser.add_argument(
        "--fleet-port", type=int, default=8080, help="port of the demo's fleet service (default 8080)"
    )
    parser.set_defaults(run=run)
