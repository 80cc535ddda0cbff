"""The stored login of the `picofleet` CLI: the fleet service's URL and admin token.

`picofleet login URL` checks the token against the service and stores both in
``$XDG_CONFIG_HOME/picofleet/login.json`` (``~/.config/picofleet/login.json`` when the variable is
unset or not an absolute path), so that `picofleet fleet ...` needs neither ``--url`` nor
``--token``; `picofleet logout` removes the file.

The file holds a secret, so it is written atomically with mode 0600 (owner only, from the moment
it exists; :mod:`picofleet.common.atomic`) in a directory of mode 0700. A login file that others
could read (group or other permission bits set), or that another user owns, is refused, as ssh
refuses such a private key: the error names the file and the ``chmod`` that fixes it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import NamedTuple

from picofleet.common.atomic import SECRET_MODE, atomic_write_json

__all__ = ["CredentialsError", "Login", "load", "login_path", "remove", "save"]

DIR_MODE = 0o700


class CredentialsError(Exception):
    """The stored login cannot be used; the message is one line saying why and what to do."""


class Login(NamedTuple):
    """A stored login: the fleet service's URL (no trailing slash) and its admin token."""

    url: str
    token: str


def config_home() -> Path:
    """``$XDG_CONFIG_HOME`` if it is an absolute path, else ``~/.config`` (the XDG base dir spec)."""
    configured = os.environ.get("XDG_CONFIG_HOME", "")
    if configured and os.path.isabs(configured):
        return Path(configured)
    return Path.home() / ".config"


def login_path() -> Path:
    """Where the login is stored: ``<config home>/picofleet/login.json``."""
    return config_home() / "picofleet" / "login.json"


def save(url: str, token: str) -> Path:
    """Store ``url`` and ``token`` (replacing any stored login); the file's path.

    The directory is created (or set) to mode 0700 and the file is written atomically with mode
    0600, so the token is never readable by others, not even for a moment.
    """
    path = login_path()
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path.parent, DIR_MODE)
    atomic_write_json(path, {"url": url.rstrip("/"), "token": token}, mode=SECRET_MODE)
    return path


def load() -> Login | None:
    """The stored login, or ``None`` when there is none.

    Raises :class:`CredentialsError` when the file is readable by group or others, owned by
    another user, or not a login file.
    """
    path = login_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CredentialsError(f"cannot read the stored login {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid():
            raise CredentialsError(
                f"the stored login {path} belongs to another user: remove it and run `picofleet login URL`"
            )
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise CredentialsError(
                f"the stored login {path} is readable by others (mode {mode:04o}), refused: "
                f"fix it with `chmod 600 {path}`"
            )
        raw = handle.read()
    try:
        stored = json.loads(raw)
        login = Login(str(stored["url"]), str(stored["token"]))
    except (ValueError, TypeError, KeyError):
        raise CredentialsError(
            f"the stored login {path} is not a picofleet login: run `picofleet login URL` again"
        ) from None
    if not login.url or not login.token:
        raise CredentialsError(f"the stored login {path} is empty: run `picofleet login URL` again")
    return login


def remove() -> Path | None:
    """Remove the stored login; its path, or ``None`` when there was none."""
    path = login_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
