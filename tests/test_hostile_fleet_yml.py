"""Hostile fleet.yml pushed with the real git client to a real fleet service (issue #13, item 2).

An alias bomb, a value whose repr would flood the client and 10,000 levels of nesting are refused
quickly with one short ``remote:`` reason each, and the branch does not move. Aliases within the
bound keep working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess, git
from tests.test_fleet_git import MANIFEST, app_uf2, commit, remote_head, write

pytestmark = pytest.mark.timeout(120)

MAX_REMOTE_LINE = len("remote: ") + 200
"""Every line the hook sends is at most 200 characters (git prefixes ``remote: ``)."""


def environment(lines: str) -> str:
    """A fleet.yml for pico2-ice whose ``environment`` mapping is ``lines`` (indented 6)."""
    return "boards:\n  pico2-ice:\n    firmware: build/app.uf2\n    environment:\n" + lines


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """The billion laughs: ``levels`` anchors, each a list of ``width`` aliases of the one before."""
    rows = ["      L0: &l0 [" + ", ".join(["lol"] * width) + "]\n"]
    for level in range(1, levels):
        rows.append(f"      L{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]\n")
    return environment("".join(rows))


def deep_nesting(levels: int = 10_000) -> str:
    """``levels`` nested flow sequences, one opening bracket per line."""
    return environment("      DEEP: " + "[\n" * levels + "]" * levels + "\n")


@pytest.fixture(scope="module")
def fleet_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProcess]:
    service = FleetProcess(tmp_path_factory.mktemp("hostile") / "data").start()
    yield service
    assert service.stop() == 0, service.output()


@pytest.fixture
def pushed(fleet_service: FleetProcess, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    """A work tree whose valid first commit is the fleet's release; (work tree, push URL)."""
    fleet = request.node.name.split("[")[-1].rstrip("]").replace("_", "-")[:40].lower()
    fleet_service.create_fleet(fleet)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2()})
    commit(work, "good")
    url = fleet_service.push_url(fleet)
    git(work, "push", "-q", url, "main")
    return work, url


def push_refused(work: Path, url: str, manifest: str) -> tuple[list[str], float]:
    """Commit ``manifest`` as fleet.yml and push it; assert the push was refused and nothing moved.

    Returns the ``remote:`` lines and how long the push took.
    """
    good = git(work, "rev-parse", "HEAD").stdout.strip()
    write(work, {"fleet.yml": manifest})
    commit(work, "hostile")
    started = time.monotonic()
    refused = git(work, "push", url, "main", check=False)
    elapsed = time.monotonic() - started
    assert refused.returncode != 0, refused.stderr
    assert "pre-receive hook declined" in refused.stderr
    assert remote_head(work, url) == good
    assert len(refused.stderr) < 4000, f"{len(refused.stderr)} characters of error text"
    remote = [line for line in refused.stderr.splitlines() if line.startswith("remote: ")]
    too_long = [line[:80] + "..." for line in remote if len(line) > MAX_REMOTE_LINE]
    assert not too_long, too_long
    return remote, elapsed


HOSTILE: dict[str, tuple[Callable[[], str], str]] = {
    # 568 bytes that expand to 10^9 scalars: refused while composing, before anything is built
    "alias-bomb": (alias_bomb, "fleet.yml: aliases expand to more than 10000 YAML nodes at line 8"),
    # 14,520 scalars from two lines: the review's 10^6 elements sent 7 MB of error text
    "alias-flood": (
        lambda: alias_bomb(levels=2, width=120),
        "fleet.yml: aliases expand to more than 10000 YAML nodes at line 6",
    ),
    "deep-nesting": (deep_nesting, "fleet.yml: nested too deeply at line 33 (more than 32 levels)"),
    "recursive-alias": (
        lambda: environment("      LOOP: &loop [*loop]\n"),
        "fleet.yml: alias *loop at line 5 is inside the node it names (a recursive alias)",
    ),
    "huge-integer": (
        lambda: environment("      BIG: 1" + "0" * 5000 + "\n"),
        "fleet.yml: a number of 5001 digits at line 5 (at most 100; quote it to make it a string)",
    ),
    # hex digits count too: 0xfff... once passed the bound and failed later as an internal error
    "huge-hex-integer": (
        lambda: environment("      BIG: 0x" + "f" * 4000 + "\n"),
        "fleet.yml: a number of 4002 digits at line 5 (at most 100; quote it to make it a string)",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_fleet_yml_is_refused_quickly_with_a_short_reason(
    pushed: tuple[Path, str], case: str
) -> None:
    work, url = pushed
    make, reason = HOSTILE[case]
    remote, elapsed = push_refused(work, url, make())
    assert any(reason in line for line in remote), "\n".join(remote)
    assert not any("internal error" in line for line in remote), "\n".join(remote)
    assert elapsed < 20, f"the refusal took {elapsed:.1f} s"


def test_a_long_value_is_shown_shortened(pushed: tuple[Path, str]) -> None:
    """Within every bound (no alias, 3,000 nodes): the refused value's repr is cut, not sent whole."""
    work, url = pushed
    items = ", ".join(f"item-{i:05d}" for i in range(3000))
    remote, _ = push_refused(work, url, environment(f"      LIST: [{items}]\n"))
    line = next(line for line in remote if "environment.LIST: must be a string" in line)
    assert "got list ['item-00000', 'item-00001'" in line
    assert "item-02999" not in line


def test_anchors_and_aliases_within_the_bound_still_work(
    fleet_service: FleetProcess, pushed: tuple[Path, str]
) -> None:
    work, url = pushed
    fleet = url.rsplit("/", 1)[1].removesuffix(".git")
    write(
        work,
        {
            "fleet.yml": (
                "boards:\n"
                "  pico2-ice:\n"
                "    firmware: &app build/app.uf2\n"
                "    environment: &shared {MODE: lab, RATE: '5'}\n"
                "  rp2350:\n"
                "    firmware: *app\n"
                "    environment:\n"
                "      <<: *shared\n"
                "      MODE: bench\n"
            )
        },
    )
    head = commit(work, "anchors")
    git(work, "push", "-q", url, "main")
    assert remote_head(work, url) == head
    boards = fleet_service.releases(fleet)[-1]["boards"]
    assert boards["pico2-ice"]["environment"] == {"MODE": "lab", "RATE": "5"}
    assert boards["rp2350"]["environment"] == {"MODE": "bench", "RATE": "5"}
