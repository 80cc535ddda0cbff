"""``fleet.yml``: what a pushed commit deploys to each board type, validated against the git tree.

The file sits at the repository root::

    boards:
      pico2-ice:                     # a board type known to the loaded plugins
        firmware: build/app.uf2      # path in the repo: a UF2 the board type's bootloader accepts
        fpga: build/top.bin          # optional, board types with an iCE40 only: a .bin or .asc
        environment: {KEY: value}    # optional, string values
        config: {KEY: value}         # optional, string values

docs/fleet-api.md ("fleet.yml") documents every key, limit and refusal.

:func:`validate_commit` reads everything from a bare repository with ``git ls-tree`` /
``git cat-file`` (no checkout; it also works in a ``pre-receive`` hook, whose quarantined objects
git exposes through the environment) and returns a :class:`Release`, or raises
:class:`ManifestError` listing every problem, each naming the file (and key) and the reason.

Refused: YAML that does not parse (with its line), a document that is not a mapping, unknown keys,
unknown board types (the known ones are listed), a missing firmware file, a path that is absolute
or contains ``..``, a symlink or a submodule anywhere on the path (tree entry modes 120000 and
160000), a file over the size limit, a UF2 with a block family the board type's bootloader does not
accept, and any UF2 or bitstream its reader rejects (the reader's message). ``firmware:`` takes a
UF2 only (an iCE40 bitstream there is refused: "put iCE40 images under fpga:"); ``fpga:`` takes an
iCE40 ``.bin`` or ``.asc``, only for board types with an iCE40 (``BoardType.fpga``). An ``.asc`` is
packed into its ``.bin`` at push (:func:`~picofleet.firmware.formats.bitstream.pack_asc`): the
release's FPGA asset is always the ``.bin`` the board is sent, and its sha256 is the one the board
reports once it holds it; ``kind`` keeps what was pushed.

Bounded YAML (hostile input is refused while it is read, before anything is built): anchors and
aliases are allowed, but the document may have at most :data:`MAX_YAML_NODES` nodes *with every
alias expanded* (an alias bomb is refused at the line where it passes the bound), nest at most
:data:`MAX_YAML_DEPTH` levels, not use an alias inside the node it names, and not hold integers of
more than :data:`MAX_INT_DIGITS` digits. A value or key shown in a reason is shortened.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from picofleet.firmware.formats import uf2
from picofleet.firmware.formats.bitstream import BitstreamError, detect_kind, pack_asc
from picofleet.firmware.formats.bitstream import validate as validate_bitstream
from picofleet.gateway.models import BoardType

__all__ = [
    "DEFAULT_MAX_ASSET_BYTES",
    "MANIFEST",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "BoardRelease",
    "FpgaRelease",
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
MAX_YAML_NODES = 10_000
"""At most this many YAML nodes (scalars, lists, mappings), every alias counted expanded."""
MAX_YAML_DEPTH = 32
"""At most this many levels of nested lists and mappings (fleet.yml needs five)."""
MAX_INT_DIGITS = 100
"""Integers of more digits are refused (Python would refuse past 4300 with an unhelpful hint)."""

_TOP_KEYS = frozenset({"boards"})
_BOARD_KEYS = frozenset({"firmware", "fpga", "environment", "config"})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODE_SYMLINK, _MODE_SUBMODULE, _MODE_TREE = "120000", "160000", "040000"


class ManifestError(Exception):
    """A pushed commit cannot become a release; ``problems`` are one-line reasons naming the file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class FpgaRelease:
    """The iCE40 image of a board type in a release: ``sha256``/``size`` of the ``.bin`` the board is
    sent (an ``.asc`` is packed at push), ``kind`` what was pushed (``ice40-bin`` or ``ice40-asc``)."""

    path: str
    sha256: str
    size: int
    kind: str

    def as_json(self) -> dict[str, Any]:
        """``{"path", "sha256", "size", "kind"}``."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "kind": self.kind}


@dataclass(frozen=True)
class BoardRelease:
    """What one board type runs in a release."""

    firmware: str
    sha256: str
    size: int
    kind: str  # "uf2" (releases pushed before fpga: existed may hold "ice40-bin" or "ice40-asc")
    environment: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    fpga: FpgaRelease | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON form stored in releases and shown by the API (``fpga`` null when there is none)."""
        return {
            "firmware": self.firmware,
            "sha256": self.sha256,
            "size": self.size,
            "kind": self.kind,
            "environment": dict(self.environment),
            "config": dict(self.config),
            "fpga": self.fpga.as_json() if self.fpga is not None else None,
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
        return None, f"{where}: {_shown(value)} is not a valid path"
    path = PurePosixPath(value)
    if path.is_absolute():
        problem = f"{where}: {_shown(value)} is an absolute path"
        return None, f"{problem}; paths are relative to the repository root"
    if ".." in path.parts:
        return None, f"{where}: {_shown(value)} escapes the repository ('..' is not allowed)"
    parts = [part for part in path.parts if part != "."]
    if not parts:
        return None, f"{where}: {_shown(value)} is not a file"
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
        outside = uf2.outside_flash(image)
        if outside is not None:
            return None, f"{path}: {outside}: a {board_type.name} would not keep it across a reset"
        return kind, None
    if kind in ("ice40-bin", "ice40-asc"):
        if not _runs_bitstreams(board_type):
            return None, f"{path}: an iCE40 bitstream, but board type {board_type.name} has no iCE40 FPGA"
        return (
            None,
            f"{path}: an iCE40 bitstream under firmware:, which takes a UF2; put iCE40 images under fpga:",
        )
    return None, f"{path}: not a UF2 file"


def _check_fpga(path: str, data: bytes) -> tuple[str | None, bytes | None, str | None]:
    """(pushed kind, the .bin the board is sent, None) or (None, None, problem) for an ``fpga:`` file."""
    kind = _kind_of(path, data)
    if kind == "uf2":
        return (
            None,
            None,
            f"{path}: a UF2 under fpga:, which takes an iCE40 .bin or .asc (UF2s go under firmware:)",
        )
    try:
        kind = validate_bitstream(data)
        if kind == "ice40-asc":
            return kind, pack_asc(data.decode("utf-8")), None
    except BitstreamError as error:
        return None, None, f"{path}: invalid bitstream: {error}"
    except UnicodeDecodeError:
        return None, None, f"{path}: invalid bitstream: an .asc must be UTF-8 text"
    return kind, data, None


def _read_file(
    repo: _Repo, value: object, where: str, max_asset_bytes: int, problems: list[str]
) -> tuple[str, bytes] | None:
    """(normalised path, bytes) of a file fleet.yml names, or None with the problem appended."""
    path, problem = _check_path(value, where)
    if problem is not None:
        problems.append(problem)
        return None
    assert path is not None
    entry, problem = _lookup(repo, path, where)
    if problem is not None:
        problems.append(problem)
        return None
    assert entry is not None
    size = entry.size if entry.size is not None else len(repo.blob(entry.sha))
    if size > max_asset_bytes:
        problems.append(f"{path}: {size} bytes, over the size limit of {max_asset_bytes} bytes")
        return None
    return path, repo.blob(entry.sha)


def _variables(value: object, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: must be a mapping of NAME: value")
        return {}
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _VARIABLE_NAME.fullmatch(key):
            problems.append(f"{where}: {_shown(key)} is not a valid variable name (letters, digits, '_')")
        elif not isinstance(item, str):
            problems.append(
                f"{where}.{_key(key)}: must be a string"
                f" (got {type(item).__name__} {_shown(item)}; quote it in YAML)"
            )
        else:
            result[key] = item
    return result


class _Refused(yaml.YAMLError):
    """Valid YAML that fleet.yml does not take (too big once expanded, too deep ...), at a line."""

    def __init__(self, problem: str, mark: Any, rest: str) -> None:
        super().__init__(f"{problem} at line {mark.line + 1 if mark else '?'} {rest}")


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts, while it composes, the nodes of the document with every alias
    expanded and the nesting depth, and refuses past :data:`MAX_YAML_NODES` / :data:`MAX_YAML_DEPTH`.

    Composing is the only step that recurses, and it sees each alias once: an alias adds the
    expanded size of the node it names (known once that node is composed), so a bomb is refused
    after a few hundred events, long before anything is built or shown.
    """

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its size with aliases expanded

    def _count(self, nodes: int, mark: Any, alias: bool) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            what = "aliases expand to more than" if alias else "more than"
            raise _Refused(f"{what} {MAX_YAML_NODES} YAML nodes", mark, "(fleet.yml names a few board types)")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node as PyYAML does, counting it (an alias: the nodes it expands to)."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            named = self.anchors.get(event.anchor)
            if named is not None:
                size = self._sizes.get(id(named))
                if size is None:  # still being composed: the alias is inside it
                    raise _Refused(
                        f"alias *{_key(event.anchor)}",
                        event.start_mark,
                        "is inside the node it names (a recursive alias)",
                    )
                self._count(size, event.start_mark, alias=True)
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused("nested too deeply", event.start_mark, f"(more than {MAX_YAML_DEPTH} levels)")
        before = self._nodes
        self._count(1, event.start_mark, alias=False)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """Integers as PyYAML reads them, but not past :data:`MAX_INT_DIGITS` digits (in any base: hex
    and octal digits count, and so does every character of a sexagesimal ``1:30``)."""
    digits = sum(char.isalnum() for char in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise _Refused(
            f"a number of {digits} digits",
            node.start_mark,
            f"(at most {MAX_INT_DIGITS}; quote it to make it a string)",
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 48
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 2
_REPR.maxlevel = 3


def _shown(value: object) -> str:
    """``repr(value)`` cut short: a refused value is named, never sent whole to the git client."""
    return _REPR.repr(value)


def _key(value: object) -> str:
    """A mapping key as a reason names it: short printable strings as they are, the rest shortened."""
    if isinstance(value, str) and len(value) <= 64 and value.isprintable():
        return value
    return _shown(value)


def _parse_manifest(text: bytes) -> tuple[Any, str | None]:
    try:
        return yaml.load(text, Loader=_BoundedLoader), None  # a SafeLoader subclass
    except _Refused as error:
        return None, f"{MANIFEST}: {error}"
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
    unknown = sorted(_key(key) for key in document if key not in _TOP_KEYS)
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
        where = f"{MANIFEST}: boards.{_key(name)}"
        board_type = board_types.get(name) if isinstance(name, str) else None
        if board_type is None:
            problems.append(f"{where}: unknown board type {_shown(name)} (known: {known})")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: must be a mapping with a 'firmware' key")
            continue
        extra = sorted(_key(key) for key in spec if key not in _BOARD_KEYS)
        if extra:
            problems.append(
                f"{where}: unknown key(s) {', '.join(extra)} (allowed: config, environment, firmware, fpga)"
            )
        environment = _variables(spec.get("environment"), f"{where}.environment", problems)
        config = _variables(spec.get("config"), f"{where}.config", problems)
        fpga: FpgaRelease | None = None
        if spec.get("fpga") is not None:
            if board_type.fpga is None:
                problems.append(
                    f"{where}.fpga: board type {board_type.name} has no FPGA"
                    " (fpga: is only for board types with an iCE40, such as pico2-ice)"
                )
            else:
                found = _read_file(repo, spec["fpga"], f"{where}.fpga", max_asset_bytes, problems)
                if found is not None:
                    fpga_path, fpga_data = found
                    fpga_kind, packed, problem = _check_fpga(fpga_path, fpga_data)
                    if problem is not None:
                        problems.append(problem)
                    else:
                        assert fpga_kind is not None and packed is not None
                        fpga_sha256 = hashlib.sha256(packed).hexdigest()
                        assets[fpga_sha256] = packed
                        fpga = FpgaRelease(fpga_path, fpga_sha256, len(packed), fpga_kind)
        if "firmware" not in spec:
            problems.append(f"{where}: missing key 'firmware' (the path of the firmware file)")
            continue
        found = _read_file(repo, spec["firmware"], f"{where}.firmware", max_asset_bytes, problems)
        if found is None:
            continue
        path, data = found
        kind, problem = _check_firmware(path, data, board_type)
        if problem is not None:
            problems.append(problem)
            continue
        assert kind is not None
        sha256 = hashlib.sha256(data).hexdigest()
        assets[sha256] = data
        releases[name] = BoardRelease(path, sha256, len(data), kind, environment, config, fpga)
    if problems:
        raise ManifestError(problems)
    return Release(commit, releases, assets)
