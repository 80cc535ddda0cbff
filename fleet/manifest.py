"""``fleet.yml``: what a pushed commit deploys to each board type, validated against the git tree.

The file sits at the repository root::

    boards:
      pico2-ice:                     # a board type known to the loaded plugins
        firmware: build/app.uf2      # path in the repo: a UF2, or an iCE40 .bin/.asc bitstream
        environment: {KEY: value}    # optional, string values
        config: {KEY: value}         # optional, string values

:func:`validate_commit` reads everything from a bare repository with ``git ls-tree`` /
``git cat-file`` (no checkout; it also works in a ``pre-receive`` hook, whose quarantined objects
git exposes through the environment) and returns a :class:`Release`, or raises
:class:`ManifestError` listing every problem, each naming the file (and key) and the reason.

Refused: YAML that does not parse (with its line), a document that is not a mapping, unknown keys,
unknown board types (the known ones are listed), a missing firmware file, a path that is absolute
or contains ``..``, a symlink or a submodule anywhere on the path (tree entry modes 120000 and
160000), a file over the size limit, a UF2 with a block family the board type's bootloader does not
accept, and any UF2 or bitstream its reader rejects (the reader's message). Bitstreams are taken
only for board types with an iCE40 (the word ``iCE40`` in the board type's chip or description).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.bitstream import BitstreamError, detect_kind
from picofleet.firmware.formats.bitstream import validate as validate_bitstream
from picofleet.gateway.models import BoardType

__all__ = [
    "DEFAULT_MAX_ASSET_BYTES",
    "MANIFEST",
    "BoardRelease",
    "ManifestError",
    "Release",
    "validate_commit",
]

MANIFEST = "fleet.yml"
"""The manifest's path at the repository root."""
DEFAULT_MAX_ASSET_BYTES = 32 << 20
"""Default size limit of one firmware file (32 MiB)."""
MAX_MANIFEST_BYTES = 1 << 20
"""``fleet.yml`` itself may not be larger than this."""

_TOP_KEYS = frozenset({"boards"})
_BOARD_KEYS = frozenset({"firmware", "environment", "config"})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODE_SYMLINK, _MODE_SUBMODULE, _MODE_TREE = "120000", "160000", "040000"


class ManifestError(Exception):
    """A pushed commit cannot become a release; ``problems`` are one-line reasons naming the file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class BoardRelease:
    """What one board type runs in a release."""

    firmware: str
    sha256: str
    size: int
    kind: str  # "uf2", "ice40-bin" or "ice40-asc"
    environment: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The JSON form stored in releases and shown by the API."""
        return {
            "firmware": self.firmware,
            "sha256": self.sha256,
            "size": self.size,
            "kind": self.kind,
            "environment": dict(self.environment),
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class Release:
    """A validated commit: per board type what to run, plus the asset bytes (by sha256) to store."""

    commit: str
    boards: dict[str, BoardRelease]
    assets: dict[str, bytes] = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        """``{"commit", "boards": {board type: BoardRelease.as_json()}}`` (without the bytes)."""
        return {"commit": self.commit, "boards": {name: b.as_json() for name, b in self.boards.items()}}


@dataclass(frozen=True)
class _Entry:
    mode: str
    kind: str
    sha: str
    size: int | None


class _Repo:
    """Read-only access to one commit of a (bare) repository through git plumbing commands."""

    def __init__(self, git_dir: Path, commit: str) -> None:
        self.git_dir = Path(git_dir)
        self.commit = commit

    def _git(self, *args: str) -> bytes:
        result = subprocess.run(
            ["git", "--literal-pathspecs", f"--git-dir={self.git_dir}", *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
            raise RuntimeError(f"git {args[0]} failed: {message}")
        return result.stdout

    def entry(self, path: str) -> _Entry | None:
        """The tree entry of ``path`` in the commit (no recursion), or ``None`` if there is none."""
        out = self._git("ls-tree", "-l", "-z", "--full-tree", self.commit, "--", path)
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, name = record.partition(b"\t")
            if name.decode(errors="surrogateescape") != path:
                continue
            mode, kind, sha, size = meta.decode().split()
            return _Entry(mode, kind, sha, None if size == "-" else int(size))
        return None

    def blob(self, sha: str) -> bytes:
        """The bytes of blob ``sha``."""
        return self._git("cat-file", "blob", sha)


def _check_path(value: object, where: str) -> tuple[str | None, str | None]:
    """(normalised path, None) or (None, problem) for a firmware path from fleet.yml."""
    if not isinstance(value, str) or not value.strip():
        return None, f"{where}: must be a path in the repository (a non-empty string)"
    if "\0" in value or "\\" in value:
        return None, f"{where}: {value!r} is not a valid path"
    path = PurePosixPath(value)
    if path.is_absolute():
        return None, f"{where}: {value!r} is an absolute path; paths are relative to the repository root"
    if ".." in path.parts:
        return None, f"{where}: {value!r} escapes the repository ('..' is not allowed)"
    parts = [part for part in path.parts if part != "."]
    if not parts:
        return None, f"{where}: {value!r} is not a file"
    return "/".join(parts), None


def _lookup(repo: _Repo, path: str, where: str) -> tuple[_Entry | None, str | None]:
    """Walk ``path`` component by component; refuse symlinks and submodules on the way."""
    parts = path.split("/")
    entry: _Entry | None = None
    for index in range(len(parts)):
        prefix = "/".join(parts[: index + 1])
        entry = repo.entry(prefix)
        last = index == len(parts) - 1
        if entry is None:
            return None, f"{where}: {path} does not exist in the commit"
        if entry.mode == _MODE_SYMLINK:
            what = path if last else f"{prefix} (a directory on the path {path})"
            return None, f"{where}: {what} is a symlink; firmware files must be regular files"
        if entry.mode == _MODE_SUBMODULE:
            return (
                None,
                f"{where}: {prefix} is a git submodule; firmware files must be in the repository itself",
            )
        if not last and entry.mode != _MODE_TREE:
            return None, f"{where}: {path} does not exist in the commit ({prefix} is a file)"
    assert entry is not None
    if entry.kind != "blob":
        return None, f"{where}: {path} is a directory, not a file"
    return entry, None


def _runs_bitstreams(board_type: BoardType) -> bool:
    return (board_type.fpga or "").lower().startswith("ice40")


def _kind_of(path: str, data: bytes) -> str | None:
    suffix = PurePosixPath(path).suffix.lower()
    return {".uf2": "uf2", ".bin": "ice40-bin", ".asc": "ice40-asc"}.get(suffix) or detect_kind(data)


def _check_firmware(path: str, data: bytes, board_type: BoardType) -> tuple[str | None, str | None]:
    """(kind, None) or (None, problem) for the firmware bytes of ``path`` on ``board_type``."""
    kind = _kind_of(path, data)
    if kind == "uf2":
        try:
            image = uf2.read_uf2(data)
        except uf2.UF2Error as error:
            return None, f"{path}: invalid UF2: {error}"
        if not uf2.accepted_by(image, board_type.uf2_families):
            flashed = sorted({b.family_id for b in image.blocks if not b.skipped}, key=lambda f: f or 0)
            families = ", ".join(uf2.family_name(f) for f in flashed) or "none"
            accepted = ", ".join(uf2.family_name(f) for f in board_type.uf2_families) or "none"
            return None, (
                f"{path}: UF2 family {families} cannot run on board type {board_type.name} "
                f"(it accepts {accepted})"
            )
        return kind, None
    if kind in ("ice40-bin", "ice40-asc"):
        if not _runs_bitstreams(board_type):
            return None, f"{path}: an iCE40 bitstream, but board type {board_type.name} has no iCE40 FPGA"
        try:
            validate_bitstream(data)
        except BitstreamError as error:
            return None, f"{path}: invalid bitstream: {error}"
        return kind, None
    return None, f"{path}: not a UF2 file or an iCE40 .bin/.asc bitstream"


def _variables(value: object, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: must be a mapping of NAME: value")
        return {}
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _VARIABLE_NAME.fullmatch(key):
            problems.append(f"{where}: {key!r} is not a valid variable name (letters, digits, '_')")
        elif not isinstance(item, str):
            problems.append(
                f"{where}.{key}: must be a string (got {type(item).__name__} {item!r}; quote it in YAML)"
            )
        else:
            result[key] = item
    return result


def _parse_manifest(text: bytes) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(text), None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(error.problem or error.context or "syntax error").split())
        return None, f"{MANIFEST}: invalid YAML{line}: {what}"
    except yaml.YAMLError as error:
        return None, f"{MANIFEST}: invalid YAML: {' '.join(str(error).split())}"


def validate_commit(
    git_dir: Path,
    commit: str,
    board_types: Mapping[str, BoardType],
    max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES,
) -> Release:
    """Validate ``commit``'s ``fleet.yml`` and firmware files in the repository ``git_dir``.

    Returns the :class:`Release`; raises :class:`ManifestError` with every problem found.
    """
    repo = _Repo(git_dir, commit)
    entry, problem = _lookup(repo, MANIFEST, MANIFEST)
    if problem is not None:
        if entry is None and "does not exist" in problem:
            problem = f"{MANIFEST}: not found at the repository root (it says what to deploy)"
        raise ManifestError([problem])
    assert entry is not None
    if entry.size is not None and entry.size > MAX_MANIFEST_BYTES:
        raise ManifestError([f"{MANIFEST}: {entry.size} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes"])
    document, problem = _parse_manifest(repo.blob(entry.sha))
    if problem is not None:
        raise ManifestError([problem])
    if not isinstance(document, Mapping):
        shown = "empty" if document is None else f"a {type(document).__name__}"
        raise ManifestError([f"{MANIFEST}: must be a mapping with a 'boards' key (it is {shown})"])
    problems: list[str] = []
    unknown = sorted(str(key) for key in document if key not in _TOP_KEYS)
    if unknown:
        problems.append(f"{MANIFEST}: unknown key(s) {', '.join(unknown)} (allowed: boards)")
    boards = document.get("boards")
    if not isinstance(boards, Mapping) or not boards:
        problems.append(f"{MANIFEST}: 'boards' must be a non-empty mapping of board type to its firmware")
        raise ManifestError(problems)

    known = ", ".join(sorted(board_types)) or "none"
    releases: dict[str, BoardRelease] = {}
    assets: dict[str, bytes] = {}
    for name, spec in boards.items():
        where = f"{MANIFEST}: boards.{name}"
        board_type = board_types.get(name) if isinstance(name, str) else None
        if board_type is None:
            problems.append(f"{where}: unknown board type {name!r} (known: {known})")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: must be a mapping with a 'firmware' key")
            continue
        extra = sorted(str(key) for key in spec if key not in _BOARD_KEYS)
        if extra:
            problems.append(
                f"{where}: unknown key(s) {', '.join(extra)} (allowed: config, environment, firmware)"
            )
        environment = _variables(spec.get("environment"), f"{where}.environment", problems)
        config = _variables(spec.get("config"), f"{where}.config", problems)
        if "firmware" not in spec:
            problems.append(f"{where}: missing key 'firmware' (the path of the firmware file)")
            continue
        path, problem = _check_path(spec["firmware"], f"{where}.firmware")
        if problem is not None:
            problems.append(problem)
            continue
        assert path is not None
        entry, problem = _lookup(repo, path, f"{where}.firmware")
        if problem is not None:
            problems.append(problem)
            continue
        assert entry is not None
        size = entry.size if entry.size is not None else len(repo.blob(entry.sha))
        if size > max_asset_bytes:
            problems.append(f"{path}: {size} bytes, over the size limit of {max_asset_bytes} bytes")
            continue
        data = repo.blob(entry.sha)
        kind, problem = _check_firmware(path, data, board_type)
        if problem is not None:
            problems.append(problem)
            continue
        assert kind is not None
        sha256 = hashlib.sha256(data).hexdigest()
        assets[sha256] = data
        releases[name] = BoardRelease(path, sha256, len(data), kind, environment, config)
    if problems:
        raise ManifestError(problems)
    return Release(commit, releases, assets)
