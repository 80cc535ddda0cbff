"""git over smart HTTP at ``/git/<fleet>.git/...``, served by the real ``git http-backend`` (CGI).

**Streaming.** The request body is pumped into the CGI's stdin as it arrives (chunked bodies from
``git push`` included; Hypercorn de-chunks them and, with no ``Content-Length``, http-backend reads
to EOF), concurrently with its stdout being parsed (``Status:``, ``Content-Type`` ... up to the
blank line) and streamed back as the response. No pack is ever held in memory.

**Auth.** HTTP basic auth whose password is the admin token (any user name); otherwise 401 with
``WWW-Authenticate: Basic realm="picofleet"`` so that git sends the credentials of the URL.
A wrong password counts in the service's throttle of wrong admin tokens (the ``login_throttle``,
per client address, as the API's bearer tokens do); past its limit the address gets 429 with
``Retry-After``, the right password included. No credentials count nothing. Unknown fleet: 404.

**Repositories.** ``DATA/git/<fleet>.git``, bare, ``http.receivepack true``, with a ``pre-receive``
hook running ``<sys.executable> -m picofleet.fleet.git.pre_receive`` (re-installed at every start, so a
moved virtualenv is picked up).

**Hook ↔ service (how a valid push becomes a release).** The hook is another process, and
``DATA/fleet.db`` has exactly one writer, the service. So the hook never touches the database: it
validates, puts the firmware bytes in the content-addressed asset cache (``DATA/assets``, atomic
per file, safe from any process) and writes the release atomically (fsync) to
``DATA/releases/<fleet>/<commit>.json``; only then does it exit 0 and git move the ref. When
``git http-backend`` exits after a ``git-receive-pack`` POST, the service *ingests* the fleet's
staged files: for each, it checks the commit against the repository (the ref it was pushed to
points at it → release recorded, and the fleet's target moves if that ref is the deploy branch,
unless pinned), records it in ``fleet.db`` (durable when the call returns) and deletes the file. A
file whose ref does not point at its commit is another push still in flight (its hook staged it,
its ref has not moved yet: true even when another ref already reaches the commit, as when a
commit of ``dev`` is promoted to the deploy branch) or one that failed or was overtaken: it is kept
for :data:`STAGED_GRACE` seconds, looked at again every :data:`SETTLE_INTERVAL` seconds, and once
older it is recorded without the target if some ref reaches its commit (overtaken), else dropped.
The last chunk of http-backend's output (which ends git's report-status) is held back until then,
so ``git push`` only returns once the release is in the database.

**A crash mid-push.** Every ``git http-backend`` runs in its own process group, which the service's
reaper (:mod:`.reaper`) kills with ``SIGKILL`` the moment the service dies, however it dies: the
hook and ``receive-pack`` die with it, the ref does not move and the client's ``git push`` fails.
Should git have been moving the ref in that very instant, the staged release (durable on disk
before the ref moved) is ingested by the next service at its start, or within a second of the ref
moving if it moves after that start; the receive-pack advertisement (the start of every push,
"Everything up-to-date" included) ingests what is staged first, so a push after a crash finds the
release recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import re
import secrets
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from picofleet.common.web.pages import client_address
from picofleet.common.web.sessions import LoginThrottle
from picofleet.fleet.git.pre_receive import ENV_DATA, ENV_FLEET, ENV_MAX, MAX_SUBJECT
from picofleet.fleet.git.reaper import GitGroups
from picofleet.fleet.manifest import DEFAULT_MAX_ASSET_BYTES
from picofleet.fleet.store import FleetStore

__all__ = ["FLEET_NAME", "FleetRepos", "GitHttpBackend", "push_outcome"]

log = logging.getLogger("picofleet.fleet.git")

FLEET_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")
"""Fleet names: lowercase letters, digits and '-', starting with a letter or digit, at most 63."""
READ_CHUNK = 64 * 1024
PUSH_TAIL = 4096
"""Bytes kept of the end of a push's answer: its report-status (``unpack ok``, ``ok``/``ng <ref> ...``)."""
REFUSED_REF = re.compile(rb"[0-9a-f]{4}ng refs/")
"""A report-status pkt-line refusing a ref."""
STAGED_GRACE = 60.0
"""Seconds a staged release whose commit no ref reaches is kept (its push may still be moving it)."""
SETTLE_INTERVAL = 1.0
"""Seconds between two looks at the staged releases kept for their grace."""
HOOK = """#!/bin/sh
# installed by the picofleet fleet service: validates fleet.yml before any ref moves
exec {python} -m picofleet.fleet.git.pre_receive
"""
# Environment variables the CGI (and the hook) may inherit from the service; the rest is dropped.
_INHERITED = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PICOFLEET_DISABLE_PLUGINS",
)


async def _git(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        log.debug("git %s: %s", " ".join(args), err.decode(errors="replace").strip())
    return process.returncode or 0, out.decode(errors="replace").strip()


class FleetRepos:
    """The bare repositories of the fleets, and the ingestion of the releases their hook stages."""

    def __init__(self, data: Path, store: FleetStore, max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES) -> None:
        self.data = Path(data)
        self.root = self.data / "git"
        self.store = store
        self.max_asset_bytes = max_asset_bytes
        self._ingest_lock = asyncio.Lock()
        self.groups = GitGroups()
        """The process groups of the ``git http-backend`` children, killed if the service dies."""
        self._unsettled: set[str] = set()
        self._settling: asyncio.Task[None] | None = None
        self.on_release: Callable[[str], None] | None = None
        self.on_push: Callable[[str, str], None] | None = None
        """Called with the fleet and the outcome of every push: accepted, refused or failed."""
        """Called with the fleet's name after a release of it was recorded (the service wakes waiters)."""

    def path_of(self, fleet: str) -> Path:
        """The bare repository of ``fleet``."""
        return self.root / f"{fleet}.git"

    def install_hook(self, fleet: str) -> None:
        """(Re)write the repository's pre-receive hook for this Python."""
        hook = self.path_of(fleet) / "hooks" / "pre-receive"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(HOOK.format(python=sys.executable))
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    async def create(self, fleet: str, branch: str = "main") -> None:
        """Create the bare repository of a new fleet (``http.receivepack true``, the hook), whose
        ``HEAD`` is the fleet's deploy branch ``branch`` (the hook reads it there; git refuses to
        delete it; clones check it out)."""
        path = self.path_of(fleet)
        self.root.mkdir(parents=True, exist_ok=True)
        for args in (
            ("init", "--bare", "--quiet", f"--initial-branch={branch}", str(path)),
            (f"--git-dir={path}", "config", "http.receivepack", "true"),
        ):
            code, out = await _git(*args)
            if code != 0:
                raise RuntimeError(f"git {args[0]} failed for fleet {fleet}: {out}")
        await asyncio.to_thread(self.install_hook, fleet)

    async def start(self) -> None:
        """At service start: start the reaper, refresh every hook and ingest what a previous run
        left staged."""
        await asyncio.to_thread(self.groups.start)
        for fleet in await self.store.fleets():
            if self.path_of(fleet["name"]).is_dir():
                await asyncio.to_thread(self.install_hook, fleet["name"])
                await self.ingest(fleet["name"])

    async def close(self) -> None:
        """At service stop: stop looking at staged releases, stop the reaper (which kills any git
        child left)."""
        if self._settling is not None:
            self._settling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settling
        await asyncio.to_thread(self.groups.close)

    def has_staged(self, fleet: str) -> bool:
        """Whether the hook staged releases of ``fleet`` that were not ingested yet."""
        return any((self.data / "releases" / fleet).glob("*.json"))

    async def _settle(self) -> None:
        while self._unsettled:
            await asyncio.sleep(SETTLE_INTERVAL)
            for fleet in sorted(self._unsettled):
                try:
                    await self.ingest(fleet)
                except Exception:
                    log.exception("fleet %s: ingesting staged releases failed", fleet)
                    self._unsettled.discard(fleet)

    async def ingest(self, fleet: str) -> list[str]:
        """Record the releases the hook staged for ``fleet``; return their commits. One whose commit
        no ref reaches is kept for :data:`STAGED_GRACE` seconds (and looked at again), then dropped."""
        async with self._ingest_lock:
            staged = self.data / "releases" / fleet
            files = await asyncio.to_thread(
                lambda: (
                    sorted(staged.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
                    if staged.is_dir()
                    else []
                )
            )
            recorded: list[str] = []
            kept = False
            git_dir = f"--git-dir={self.path_of(fleet)}"
            for path in files:
                try:
                    release: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
                    commit, ref = release["commit"], release["ref"]
                except (OSError, ValueError, KeyError) as error:
                    log.error(
                        "fleet %s: unreadable staged release %s (%s); left in place", fleet, path, error
                    )
                    continue
                _, tip = await _git(git_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
                if tip != commit:
                    # Not (yet) where its push puts it. While young, its push may still be moving the
                    # ref, even when another ref already reaches the commit (promoting a commit of
                    # `dev` to the deploy branch, a rollback): recording it now would record it
                    # without the target its push is about to give it.
                    try:
                        age = time.time() - (await asyncio.to_thread(path.stat)).st_mtime
                    except FileNotFoundError:
                        continue
                    if age < STAGED_GRACE:
                        kept = True
                        continue
                    _, containing = await _git(
                        git_dir, "for-each-ref", "--contains", commit, "--format=%(refname)"
                    )
                    if not containing:
                        log.warning(
                            "fleet %s: staged release %s is on no ref (push failed); discarded", fleet, commit
                        )
                        await asyncio.to_thread(path.unlink, missing_ok=True)
                        continue
                if not isinstance(release.get("message"), str):  # staged by a hook before messages
                    _, subject = await _git(git_dir, "log", "-1", "--format=%s", commit)
                    release["message"] = subject[:MAX_SUBJECT]
                await self.store.record_release(fleet, release, make_target=tip == commit)
                recorded.append(commit)
                if self.on_release is not None:
                    self.on_release(fleet)
                log.info("fleet %s: release %s (%s) recorded", fleet, commit, ref)
                await asyncio.to_thread(path.unlink, missing_ok=True)
            if kept:
                self._unsettled.add(fleet)
                if self._settling is None or self._settling.done():
                    self._settling = asyncio.create_task(self._settle())
            else:
                self._unsettled.discard(fleet)
            return recorded


def push_outcome(tail: bytes) -> str:
    """A push's outcome from the end of git's answer: refused when the pre-receive hook declined it,
    accepted when the pack was unpacked and no ref refused, failed otherwise."""
    if b"pre-receive hook declined" in tail:
        return "refused"
    if b"unpack ok" in tail and not REFUSED_REF.search(tail):
        return "accepted"
    return "failed"


def _basic_password(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class GitHttpBackend:
    """ASGI endpoint for ``/git/{fleet}.git/{path}``: auth, then ``git http-backend`` streamed both ways."""

    def __init__(self, repos: FleetRepos, admin_token: str, throttle: LoginThrottle | None = None) -> None:
        self.repos = repos
        self.admin_token = admin_token
        self.throttle = throttle
        """Wrong passwords per client address (the service's ``login_throttle``); ``None``: none."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request of the git smart HTTP protocol."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        credentials = _basic_password(headers.get("authorization", ""))
        client = client_address(HTTPConnection(scope))
        wait = self.throttle.check(client) if self.throttle and credentials is not None else None
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            response = PlainTextResponse(
                f"too many wrong admin tokens, try again in {seconds} s\n",
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
            await response(scope, receive, send)
            return
        right = credentials is not None and secrets.compare_digest(
            credentials[1].encode(), self.admin_token.encode()
        )
        if self.throttle and credentials is not None and right:
            self.throttle.succeeded(client)
        elif self.throttle and credentials is not None:
            self.throttle.failed(client)
        if credentials is None or not right:
            response = PlainTextResponse(
                "authentication required: use the admin token as the password\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="picofleet"'},
            )
            await response(scope, receive, send)
            return
        fleet = scope["path_params"]["fleet"]
        if not FLEET_NAME.fullmatch(fleet) or await self.repos.store.fleet(fleet) is None:
            await PlainTextResponse(f"no fleet {fleet!r}\n", status_code=404)(scope, receive, send)
            return
        if not self.repos.path_of(fleet).is_dir():
            await PlainTextResponse(f"fleet {fleet!r} has no repository\n", status_code=404)(
                scope, receive, send
            )
            return
        query = scope.get("query_string", b"").decode("latin-1")
        pushing = scope["path_params"]["path"] == "info/refs" and "service=git-receive-pack" in query
        if pushing and await asyncio.to_thread(self.repos.has_staged, fleet):
            # a push begins: what a crash left staged is recorded first, so that "Everything
            # up-to-date" finds it there
            await self.repos.ingest(fleet)
        await self._run_cgi(scope, receive, send, fleet, credentials[0] or "admin", headers)

    def _environment(self, scope: Scope, fleet: str, user: str, headers: dict[str, str]) -> dict[str, str]:
        env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
        client = scope.get("client") or ("", 0)
        server = scope.get("server") or ("127.0.0.1", 0)
        env.update(
            {
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
                "SERVER_SOFTWARE": "picofleet",
                "SERVER_NAME": str(server[0]),
                "SERVER_PORT": str(server[1]),
                "REQUEST_METHOD": scope["method"],
                "SCRIPT_NAME": "/git",
                "PATH_INFO": f"/{fleet}.git/{scope['path_params']['path']}",
                "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
                "CONTENT_TYPE": headers.get("content-type", ""),
                "REMOTE_ADDR": str(client[0]),
                "REMOTE_USER": user,
                "AUTH_TYPE": "Basic",
                "GIT_PROJECT_ROOT": str(self.repos.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                ENV_DATA: str(self.repos.data.resolve()),
                ENV_FLEET: fleet,
                ENV_MAX: str(self.repos.max_asset_bytes),
            }
        )
        if "content-length" in headers:
            env["CONTENT_LENGTH"] = headers["content-length"]
        if "git-protocol" in headers:
            env["GIT_PROTOCOL"] = headers["git-protocol"]
        for name, value in headers.items():
            if name not in ("authorization", "content-type", "content-length", "proxy"):
                env["HTTP_" + name.upper().replace("-", "_")] = value
        return env

    async def _run_cgi(
        self, scope: Scope, receive: Receive, send: Send, fleet: str, user: str, headers: dict[str, str]
    ) -> None:
        is_push = scope["method"] == "POST" and scope["path_params"]["path"] == "git-receive-pack"
        process = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._environment(scope, fleet, user, headers),
            limit=READ_CHUNK * 4,
            start_new_session=True,  # its group holds receive-pack and the hook: see .reaper
        )
        self.repos.groups.track(process.pid)
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        def kill_group() -> None:
            if process.returncode is None:  # not waited for: the group is still announced as ours
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)

        async def pump_body() -> None:
            try:
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        kill_group()
                        return
                    body = message.get("body", b"")
                    if body:
                        stdin.write(body)
                        await stdin.drain()
                    if not message.get("more_body", False):
                        return
            except (BrokenPipeError, ConnectionResetError):
                return  # the CGI stopped reading (it answers without the body)
            finally:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    stdin.close()

        pump = asyncio.create_task(pump_body())
        try:
            status, response_headers = await self._read_cgi_headers(stdout)
            if status is None:
                await process.wait()
                self.repos.groups.forget(process.pid)
                await PlainTextResponse("git http-backend failed\n", status_code=500)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            held: bytes | None = None
            tail = b""  # the end of a push's answer: its report-status says whether the hook declined
            while chunk := await stdout.read(READ_CHUNK):
                if not is_push:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                if held is not None:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                held = chunk
                tail = (tail + chunk)[-PUSH_TAIL:]
            await process.wait()
            self.repos.groups.forget(process.pid)  # at once: once reaped, its number can be reused
            await pump
            if is_push:
                if self.repos.on_push is not None:
                    self.repos.on_push(fleet, push_outcome(tail))
                try:
                    await self.repos.ingest(fleet)
                except Exception:
                    log.exception(
                        "fleet %s: ingesting the pushed release failed (retried at next start)", fleet
                    )
            await send({"type": "http.response.body", "body": held or b"", "more_body": False})
        finally:
            if process.returncode is None:
                kill_group()
                await process.wait()
            self.repos.groups.forget(process.pid)  # (again, if done above: the reaper discards it)
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    @staticmethod
    async def _read_cgi_headers(stdout: asyncio.StreamReader) -> tuple[int | None, list[tuple[bytes, bytes]]]:
        status: int | None = 200
        result: list[tuple[bytes, bytes]] = []
        seen_any = False
        while True:
            line = await stdout.readline()
            if not line:
                return (status if seen_any else None), result  # EOF before the blank line
            line = line.rstrip(b"\r\n")
            if not line:
                return status, result
            seen_any = True
            name, _, value = line.partition(b":")
            value = value.strip()
            if name.strip().lower() == b"status":
                try:
                    status = int(value.split()[0])
                except (ValueError, IndexError):
                    status = 500
            else:
                result.append((name.strip().lower(), value))
