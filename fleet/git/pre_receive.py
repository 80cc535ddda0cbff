"""The ``pre-receive`` hook of every fleet repository: validate pushed branches, stage their releases.

git runs it (``python -m picofleet.fleet.git.pre_receive``, installed by :mod:`.http_backend`) after the
pack is received and before any ref moves, with one ``<old> <new> <ref>`` line per ref update on
stdin. For each pushed branch it validates the new commit with :func:`.manifest.validate_commit`.
Whatever it prints appears on the pushing client as ``remote: ...`` lines.

* Any branch refused: every reason is printed (naming the file and the key) and the hook exits 1;
  git then refuses the whole push and no ref moves. Nothing is written.
* All valid: the firmware bytes go into the content-addressed asset cache (``DATA/assets``) and a
  release file is written atomically (fsync-ed) to ``DATA/releases/<fleet>/<commit>.json``; then the
  hook exits 0 and git moves the refs. The fleet service, the only writer of ``DATA/fleet.db``,
  ingests these files when ``git http-backend`` has finished (before the push's HTTP response is
  complete) and at start-up (see :mod:`.http_backend`).
* **Only the deploy branch deploys.** The fleet's deploy branch is the repository's ``HEAD``
  (``main`` unless the fleet was created with another; see :mod:`.http_backend`). Every other
  branch, and every tag, is checked the same way and kept as a release that can be pinned, but
  does not change what gateways run; its ``remote:`` line says so. A tag is checked at the commit
  it points at (a tag of a tree or blob is refused). A force-push that moves the deploy branch
  back to an ancestor is accepted with a loud "rolls back from X to Y" line (the fleet's boards
  go back to Y); one to an unrelated commit says it replaces X.
* Deleting the deploy branch is refused with the reason; deleting another branch or a tag is
  allowed (its releases stay). Refs outside ``refs/heads`` and ``refs/tags`` are allowed without a
  release.
* Every line is at most :data:`MAX_LINE` characters (longer ones are cut), and at most
  :data:`MAX_PROBLEMS` reasons are printed per ref.

Its environment comes from :mod:`.http_backend`: ``PICOFLEET_FLEET_DATA`` (the service's data
directory), ``PICOFLEET_FLEET_NAME`` and ``PICOFLEET_MAX_ASSET_BYTES``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from picofleet.common.atomic import atomic_write_json
from picofleet.firmware.asset_cache import AssetCache
from picofleet.fleet.manifest import DEFAULT_MAX_ASSET_BYTES, ManifestError, Release, validate_commit
from picofleet.fleet.store import now_iso
from picofleet.gateway.plugin_manager import load_plugins

ZERO = "0" * 40
MAX_LINE = 200
"""Characters per line sent to the git client (without git's ``remote: `` prefix)."""
MAX_PROBLEMS = 20
"""Reasons printed per refused ref; the rest are counted."""
MAX_SUBJECT = 200
"""The longest release ``message`` kept (a commit's subject line, cut)."""
DEFAULT_DEPLOY_REF = "refs/heads/main"
ENV_DATA, ENV_FLEET, ENV_MAX = "PICOFLEET_FLEET_DATA", "PICOFLEET_FLEET_NAME", "PICOFLEET_MAX_ASSET_BYTES"


def release_path(data: Path, fleet: str, commit: str) -> Path:
    """Where the hook stages the release of ``commit`` for ``fleet``."""
    return data / "releases" / fleet / f"{commit}.json"


def say(line: str) -> None:
    """One line for the pushing client (shown as ``remote: picofleet: ...``), at most
    :data:`MAX_LINE` characters, control characters shown as ``?``."""
    text = f"picofleet: {line}"
    if len(text) > MAX_LINE:
        text = text[: MAX_LINE - 3] + "..."
    print("".join(c if c.isprintable() else "?" for c in text), file=sys.stderr, flush=True)


def _git(git_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def deploy_ref(git_dir: Path) -> str:
    """The fleet's deploy branch as a ref: what the repository's ``HEAD`` names."""
    return _git(git_dir, "symbolic-ref", "--quiet", "HEAD").stdout.strip() or DEFAULT_DEPLOY_REF


def commit_subject(git_dir: Path, commit: str) -> str:
    """The subject line of ``commit``'s message (at most :data:`MAX_SUBJECT` characters): the
    release's ``message`` the operator's views show."""
    subject = _git(git_dir, "log", "-1", "--format=%s", commit).stdout.strip()
    return subject[:MAX_SUBJECT]


def _is_ancestor(git_dir: Path, older: str, newer: str) -> bool:
    return _git(git_dir, "merge-base", "--is-ancestor", older, newer).returncode == 0


def _commit_of(git_dir: Path, ref: str, new: str) -> tuple[str | None, str | None]:
    """(commit, None) for what ``ref`` is to point at, or (None, why it cannot be a release)."""
    if ref.startswith("refs/heads/"):
        return new, None
    kind = _git(git_dir, "cat-file", "-t", new).stdout.strip()
    peeled = _git(git_dir, "rev-parse", "--verify", "--quiet", f"{new}^{{commit}}").stdout.strip()
    if not peeled:
        return None, f"push refused: {ref} points at a {kind or 'missing object'}, not a commit"
    return peeled, None


def _say_deploy_move(git_dir: Path, ref: str, old: str, new: str) -> None:
    """A loud line when the deploy branch goes back, or jumps to an unrelated commit."""
    if old in (ZERO, new) or _is_ancestor(git_dir, old, new):
        return
    if _is_ancestor(git_dir, new, old):
        say(
            f"WARNING: {ref} rolls back from {old[:12]} to {new[:12]}: "
            f"every board of the fleet goes back to {new[:12]} (unless pinned)"
        )
    else:
        say(f"WARNING: {ref} is forced from {old[:12]} to {new[:12]}, which does not contain it")


def main() -> int:
    """Run the hook; the exit status tells git whether to accept the push."""
    try:
        data = Path(os.environ[ENV_DATA])
        fleet = os.environ[ENV_FLEET]
    except KeyError as missing:
        say(f"push refused: the hook was run without {missing.args[0]} (push through the fleet service)")
        return 1
    max_bytes = int(os.environ.get(ENV_MAX) or DEFAULT_MAX_ASSET_BYTES)
    git_dir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]

    deploy = deploy_ref(git_dir)
    branch = deploy.removeprefix("refs/heads/")
    board_types = None
    accepted: list[tuple[str, str, Release]] = []
    checked: dict[str, Release] = {}  # commit -> its release, once validated
    refused = invalid = False
    for old, new, ref in updates:
        if new == ZERO:
            if ref == deploy:
                refused = True
                say(f"push refused: deleting {ref} is refused: it is the deploy branch, which the boards run")
            else:
                say(f"{ref}: deleted (releases made from it stay and can be pinned)")
            continue
        if not ref.startswith(("refs/heads/", "refs/tags/")):
            say(f"{ref}: not a branch or a tag; accepted without a release")
            continue
        commit, problem = _commit_of(git_dir, ref, new)
        if commit is None:
            refused = True
            say(problem or f"push refused: {ref} is not a commit")
            continue
        if board_types is None:
            board_types = load_plugins().board_types
        try:
            if commit not in checked:  # a branch and a tag of one commit: checked once
                checked[commit] = validate_commit(git_dir, commit, board_types, max_bytes)
            release = checked[commit]
        except ManifestError as error:
            refused = invalid = True
            say(f"push refused: {ref} ({commit[:12]}) is not a valid release:")
            for problem in error.problems[:MAX_PROBLEMS]:
                say(f"  {problem}")
            if len(error.problems) > MAX_PROBLEMS:
                say(f"  ... and {len(error.problems) - MAX_PROBLEMS} more")
            continue
        accepted.append((ref, old, release))
    if refused:
        fix = "; fix fleet.yml or the files it names and push again" if invalid else ""
        say(f"nothing was changed{fix}")
        return 1

    cache = AssetCache(data / "assets")
    # one staged file per commit: the deploy branch's, when it is among the refs pushed to it
    stored: set[str] = set()
    for ref, old, release in sorted(accepted, key=lambda item: item[0] == deploy):
        if release.commit not in stored:
            stored.add(release.commit)
            for blob in release.assets.values():
                cache.put(blob)
        path = release_path(data, fleet, release.commit)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = {"fleet": fleet, "ref": ref, "created": now_iso(), **release.as_json()}
        atomic_write_json(path, {**staged, "message": commit_subject(git_dir, release.commit)})
        short = release.commit[:12]
        if ref == deploy:
            say(f"{ref}: release {short} accepted and deployed ({branch} is the deploy branch)")
            _say_deploy_move(git_dir, ref, old, release.commit)
        else:
            say(f"{ref}: release {short} accepted; not deployed: the deploy branch is {branch}")
            say(f"  to run it: picofleet fleet pin {fleet} {short}")
        for name, board in release.boards.items():
            say(f"  {name}: {board.firmware} ({board.kind}, {board.size} bytes, sha256 {board.sha256[:16]})")
            if board.fpga is not None:
                image = board.fpga
                say(f"    fpga: {image.path} ({image.kind}, .bin of {image.size} bytes, {image.sha256[:16]})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # never let a bug accept a push
        say(f"push refused: internal error in the release check: {type(error).__name__}: {error}")
        sys.exit(1)
