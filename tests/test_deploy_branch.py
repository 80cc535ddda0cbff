"""Only the fleet's deploy branch changes what the boards run (issue #13, items 3 and 5).

Real git pushes to a real fleet service: another branch or a tag is checked and kept as a release
that can be pinned, and the ``remote:`` lines say it is not deployed; a tag of an invalid commit is
refused; a force-push that takes the deploy branch back says so loudly; deleting the deploy branch
is refused with the reason. The deploy branch is ``main`` unless the fleet is created with another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fleet import FleetProcess, fleet_cli, git
from tests.helpers.fleet_repo import fleet_with_a_release, next_release, work_tree
from tests.test_fleet_git import MANIFEST, commit, write

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fleet_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProcess]:
    service = FleetProcess(tmp_path_factory.mktemp("deploy") / "data").start()
    yield service
    assert service.stop() == 0, service.output()


def remote_ref(work: Path, url: str, ref: str) -> str | None:
    out = git(work, "ls-remote", url, ref).stdout.split()
    return out[0] if out else None


def remote_lines(stderr: str) -> list[str]:
    return [line.rstrip() for line in stderr.splitlines() if line.startswith("remote: ")]


def test_another_branch_makes_a_release_to_pin_not_a_deploy(
    fleet_service: FleetProcess, tmp_path: Path
) -> None:
    url, work, first = fleet_with_a_release(fleet_service, "branches", tmp_path / "work")
    assert fleet_service.fleet("branches")["target"] == first

    dev = next_release(work, "2.1.0")
    pushed = git(work, "push", url, "HEAD:refs/heads/dev")
    assert (
        f"remote: picofleet: refs/heads/dev: release {dev[:12]} accepted; not deployed: "
        "the deploy branch is main"
    ) in pushed.stderr
    assert f"picofleet fleet pin branches {dev[:12]}" in pushed.stderr
    fleet = fleet_service.fleet("branches")
    assert fleet["target"] == first and fleet["latest"] == first  # the boards run what they ran
    assert fleet["deploy_branch"] == "main"
    releases = {r["commit"]: r["ref"] for r in fleet_service.releases("branches")}
    assert releases == {first: "refs/heads/main", dev: "refs/heads/dev"}

    # kept as a release that can be pinned, and unpinning goes back to the deploy branch's
    assert fleet_service.request("PUT", "/v1/fleets/branches/pin", json={"commit": dev[:12]}).is_success
    assert fleet_service.fleet("branches")["target"] == dev
    assert fleet_service.request("DELETE", "/v1/fleets/branches/pin").is_success
    assert fleet_service.fleet("branches")["target"] == first

    # the same commit pushed to main later deploys it
    merged = git(work, "push", url, "HEAD:main")
    assert f"refs/heads/main: release {dev[:12]} accepted and deployed" in merged.stderr
    assert fleet_service.fleet("branches")["target"] == dev
    assert {r["commit"]: r["ref"] for r in fleet_service.releases("branches")}[dev] == "refs/heads/main"


def test_tags_are_checked_like_branches(fleet_service: FleetProcess, tmp_path: Path) -> None:
    url, work, first = fleet_with_a_release(fleet_service, "tags", tmp_path / "work")

    tagged = next_release(work, "3.0.0")
    git(work, "tag", "-a", "-m", "three", "v3")  # an annotated tag: checked at its commit
    pushed = git(work, "push", url, "v3")
    assert f"refs/tags/v3: release {tagged[:12]} accepted; not deployed" in pushed.stderr
    assert fleet_service.fleet("tags")["target"] == first
    assert tagged in [r["commit"] for r in fleet_service.releases("tags")]

    write(work, {"fleet.yml": MANIFEST.replace("build/app.uf2", "build/missing.uf2")})
    bad = commit(work, "broken")
    git(work, "tag", "broken")
    refused = git(work, "push", url, "broken", check=False)
    assert refused.returncode != 0
    assert "pre-receive hook declined" in refused.stderr
    lines = remote_lines(refused.stderr)
    assert f"remote: picofleet: push refused: refs/tags/broken ({bad[:12]}) is not a valid release:" in lines
    assert any("build/missing.uf2 does not exist in the commit" in line for line in lines), lines
    assert remote_ref(work, url, "refs/tags/broken") is None
    assert bad not in [r["commit"] for r in fleet_service.releases("tags")]

    tree = git(work, "rev-parse", "HEAD^{tree}").stdout.strip()
    git(work, "tag", "a-tree", tree)
    refused = git(work, "push", url, "refs/tags/a-tree", check=False)
    assert refused.returncode != 0
    assert "push refused: refs/tags/a-tree points at a tree, not a commit" in refused.stderr
    assert remote_ref(work, url, "refs/tags/a-tree") is None


def test_force_push_of_the_deploy_branch_to_an_older_commit_says_it_rolls_back(
    fleet_service: FleetProcess, tmp_path: Path
) -> None:
    url, work, first = fleet_with_a_release(fleet_service, "rollback", tmp_path / "work")
    second = next_release(work, "2.1.0")
    forward = git(work, "push", url, "main")
    assert "WARNING" not in forward.stderr
    assert fleet_service.fleet("rollback")["target"] == second

    back = git(work, "push", "--force", url, f"{first}:refs/heads/main")
    assert (
        f"remote: picofleet: WARNING: refs/heads/main rolls back from {second[:12]} to {first[:12]}: "
        f"every board of the fleet goes back to {first[:12]}"
    ) in back.stderr
    assert fleet_service.fleet("rollback")["target"] == first


def test_deleting_the_deploy_branch_is_refused_with_the_reason(
    fleet_service: FleetProcess, tmp_path: Path
) -> None:
    fleet_service.create_fleet("delete")
    url = fleet_service.push_url("delete")
    work, first = work_tree(tmp_path / "work")
    git(work, "push", "-q", url, "main", "main:dev")

    refused = git(work, "push", url, ":main", check=False)
    assert refused.returncode != 0
    lines = remote_lines(refused.stderr)
    assert (
        "remote: picofleet: push refused: deleting refs/heads/main is refused: "
        "it is the deploy branch, which the boards run"
    ) in lines, lines
    assert lines[-1] == "remote: picofleet: nothing was changed", lines
    assert not any("deleted" in line and "refused" not in line for line in lines), lines
    assert remote_ref(work, url, "refs/heads/main") == first
    assert fleet_service.fleet("delete")["target"] == first

    deleted = git(work, "push", url, ":dev")
    assert "refs/heads/dev: deleted (releases made from it stay and can be pinned)" in deleted.stderr
    assert remote_ref(work, url, "refs/heads/dev") is None


def test_a_fleet_created_with_another_deploy_branch(fleet_service: FleetProcess, tmp_path: Path) -> None:
    created = fleet_cli(fleet_service, "create", "prod", "--deploy-branch", "release/stable", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["deploy_branch"] == "release/stable"
    listed = fleet_cli(fleet_service, "list")
    assert any(line.split()[:2] == ["prod", "release/stable"] for line in listed.stdout.splitlines()), (
        listed.stdout
    )

    url = fleet_service.push_url("prod")
    work, first = work_tree(tmp_path / "work")
    on_main = git(work, "push", url, "main")
    assert "not deployed: the deploy branch is release/stable" in on_main.stderr
    assert fleet_service.fleet("prod")["target"] is None
    git(work, "push", "-q", url, "main:release/stable")
    assert fleet_service.fleet("prod")["target"] == first
    refused = git(work, "push", url, ":release/stable", check=False)
    assert refused.returncode != 0 and "deleting refs/heads/release/stable is refused" in refused.stderr
    assert git(work, "push", url, ":main").returncode == 0  # main is an ordinary branch here

    bad = fleet_cli(fleet_service, "create", "bad", "--deploy-branch=-x..y")
    assert bad.returncode == 1
    assert bad.stderr.startswith("picofleet fleet: invalid deploy branch:") and "(HTTP 400)" in bad.stderr
    assert fleet_service.request("GET", "/v1/fleets/bad").status_code == 404
    # a name git itself refuses (a part ending in .lock) is refused before any fleet exists
    locked = fleet_cli(fleet_service, "create", "bad", "--deploy-branch=a.lock/b")
    assert locked.returncode == 1 and "(HTTP 400)" in locked.stderr, locked.stderr
    assert fleet_service.request("GET", "/v1/fleets/bad").status_code == 404
