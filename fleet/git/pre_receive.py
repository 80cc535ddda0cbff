"""The ``pre-receive`` hook of every fleet repository: validate pushed branches, stage their releases.

git runs it (``python -m picofleet.fleet.git.pre_receive``, installed by :mod:`.git_http`) after the
pack is received and before any ref moves, with one ``<old> <new> <ref>`` line per ref update on
stdin. For each pushed branch it validates the new commit with :func:`.manifest.validate_commit`.
Whatever it prints appears on the pushing client as ``remote: ...`` lines.

* Any branch refused: every reason is printed (naming the file and the key) and the hook exits 1;
  git then refuses the whole push and no ref moves. Nothing is written.
* All valid: the firmware bytes go into the content-addressed asset cache (``DATA/assets``) and a
  release file is written atomically (fsync-ed) to ``DATA/releases/<fleet>/<commit>.json``; then the
  hook exits 0 and git moves the refs. The fleet service, the only writer of ``DATA/fleet.db``,
  ingests these files when ``git http-backend`` has finished (before the push's HTTP response is
  complete) and at start-up (see :mod:`.git_http`).
* Branch deletions, tags and other refs are allowed without a release (a line says so).

Its environment comes from :mod:`.git_http`: ``PICOFLEET_FLEET_DATA`` (the service's data
directory), ``PICOFLEET_FLEET_NAME`` and ``PICOFLEET_MAX_ASSET_BYTES``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from picofleet.common.atomic import atomic_write_json
from picofleet.firmware.asset_cache import AssetCache
from picofleet.fleet.manifest import DEFAULT_MAX_ASSET_BYTES, ManifestError, Release, validate_commit
from picofleet.fleet.store import now_iso
from picofleet.gateway.plugin_manager import load_plugins

ZERO = "0" * 40
ENV_DATA, ENV_FLEET, ENV_MAX = "PICOFLEET_FLEET_DATA", "PICOFLEET_FLEET_NAME", "PICOFLEET_MAX_ASSET_BYTES"


def release_path(data: Path, fleet: str, commit: str) -> Path:
    """Where the hook stages the release of ``commit`` for ``fleet``."""
    return data / "releases" / fleet / f"{commit}.json"


def say(line: str) -> None:
    """One line for the pushing client (shown as ``remote: picofleet: ...``)."""
    print(f"picofleet: {line}", file=sys.stderr, flush=True)


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

    board_types = None
    accepted: list[tuple[str, Release]] = []
    refused = False
    for old, new, ref in updates:
        del old
        if new == ZERO:
            say(f"{ref}: deleted; no release")
            continue
        if not ref.startswith("refs/heads/"):
            say(f"{ref}: not a branch; accepted without a release")
            continue
        if board_types is None:
            board_types = load_plugins().board_types
        try:
            release = validate_commit(git_dir, new, board_types, max_bytes)
        except ManifestError as error:
            refused = True
            say(f"push refused: {ref} ({new[:12]}) is not a valid release:")
            for problem in error.problems:
                say(f"  {problem}")
            continue
        accepted.append((ref, release))
    if refused:
        say("nothing was changed; fix fleet.yml or the files it names and push again")
        return 1

    cache = AssetCache(data / "assets")
    for ref, release in accepted:
        for blob in release.assets.values():
            cache.put(blob)
        path = release_path(data, fleet, release.commit)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"fleet": fleet, "ref": ref, "created": now_iso(), **release.as_json()})
        say(f"{ref}: release {release.commit[:12]} accepted")
        for name, board in release.boards.items():
            say(f"  {name}: {board.firmware} ({board.kind}, {board.size} bytes, sha256 {board.sha256[:16]})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # never let a bug accept a push
        say(f"push refused: internal error in the release check: {type(error).__name__}: {error}")
        sys.exit(1)
