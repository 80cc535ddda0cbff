"""The researcher's client: reserve boards on a picofleet gateway and count pulses of bitstreams.

    from picofleet.client import PulseCountClient, load_bitstreams

    bitstreams = load_bitstreams(["a.asc", "b.asc"])  # read and checked first: nothing reserved for a bad one
    with PulseCountClient("http://127.0.0.1:1337", "alice") as client:
        client.reserve(2, args={"clock_hz": 1_000_000, "window_ms": 10})   # returns once ready
        for result in client.evaluate(bitstreams):
            print(result.serial, result.label, result.pulses or result.error)

It speaks the gateway's HTTP API (docs/api.md, "Reservations" and "Evaluations"): reservations
are made under a client name and its secret token (minted by the first reservation of a name and
remembered in a token file under the gateway's id, see :class:`TokenStore`), bitstreams are
checked locally by :func:`load_bitstreams` (call it before :meth:`~PulseCountClient.reserve`: a bad
file then reserves nothing), uploaded once each (after
asking whether the gateway already has them), and results stream back as NDJSON lines while the
boards count. The client ends the reservations it made when the ``with`` block or the program
ends (atexit), and extends them in the background while an evaluation runs and they would expire
within :data:`EXTEND_MARGIN` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from picofleet.firmware.formats import bitstream as bitstream_format
from picofleet.gateway.evaluation.jobs import MODES, check_args

EXTEND_MARGIN = 600
"""While an evaluation runs, reservations expiring within this many seconds are extended."""
EXTEND_CHECK_INTERVAL = 30.0
"""How often (seconds) the background extender looks at the reservations."""
READY_POLL_INTERVAL = 0.2
DEFAULT_READY_TIMEOUT = 300.0
REQUEST_TIMEOUT = 30.0
KIND = "pulsecount"
TOKENS_ENV = "PICOFLEET_TOKENS"

Bitstream = str | os.PathLike | bytes | tuple[bytes, str]
"""A bitstream to evaluate: the path of a ``.asc`` / ``.bin`` file, its bytes, or ``(bytes, label)``."""


class ClientError(Exception):
    """Anything that stops a client call; the message is one line."""


class GatewayUnreachable(ClientError):
    """No answer from the gateway (connection refused, timed out, bad URL)."""


class GatewayRefused(ClientError):
    """The gateway answered an error: ``status`` and its ``reason`` (the JSON ``error``)."""

    def __init__(self, status: int, reason: str, what: str = ""):
        super().__init__(f"{what}: {reason} (HTTP {status})" if what else f"{reason} (HTTP {status})")
        self.status = status
        self.reason = reason


class NameTaken(GatewayRefused):
    """The gateway says the client name is another client's: the token sent (if any) is not the
    name's. The message says where tokens are remembered and how to go on."""


class ReservationTimeout(ClientError):
    """The reserved boards were not ready before the deadline."""


class BitstreamFileError(ClientError):
    """A bitstream file could not be read, or is not a valid iCE40 bitstream."""


@dataclass(frozen=True)
class Reservation:
    """One reserved board: ``state`` is ``"preparing"`` until it runs the evaluation firmware."""

    serial: str
    name: str
    kind: str
    state: str
    expires_at: float
    created_at: float
    args: dict[str, Any]

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Reservation:
        """A reservation from the gateway's JSON record."""
        return cls(
            serial=str(record["serial"]),
            name=str(record.get("name", "")),
            kind=str(record.get("kind", KIND)),
            state=str(record.get("state", "")),
            expires_at=float(record.get("expires_at") or 0),
            created_at=float(record.get("created_at") or 0),
            args=dict(record.get("args") or {}),
        )


@dataclass(frozen=True)
class EvaluationResult:
    """One bitstream counted on one board: ``pulses``, or ``error`` saying why not."""

    serial: str | None
    sha256: str
    label: str | None
    pulses: int | None
    error: str | None = None
    evaluation: str | None = None  # the id of the evaluation the result belongs to

    @property
    def ok(self) -> bool:
        """Whether the board counted (``pulses`` is set)."""
        return self.error is None and self.pulses is not None


class TokenStore:
    """Client tokens remembered per (gateway, name) in a JSON file readable by its owner only.

    A gateway is named by its id (``GET /v1/gateway``), so every URL of one gateway
    (``http://127.0.0.1:1337``, ``http://localhost:1337``, its host name) finds the same token; by
    its URL only for a gateway that does not say its id. The path: ``$PICOFLEET_TOKENS``, else
    ``$XDG_CONFIG_HOME/picofleet/tokens.json``, else ``~/.config/picofleet/tokens.json``.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else self.default_path()

    @staticmethod
    def default_path() -> Path:
        """Where tokens are kept unless a path is given."""
        if os.environ.get(TOKENS_ENV):
            return Path(os.environ[TOKENS_ENV])
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "picofleet" / "tokens.json"

    def _load(self) -> dict[str, str]:
        try:
            tokens = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return tokens if isinstance(tokens, dict) else {}

    @staticmethod
    def _key(gateway: str, name: str) -> str:
        return f"{gateway.rstrip('/')} {name}"

    def get(self, gateway: str, name: str) -> str | None:
        """The token remembered for ``name`` on ``gateway`` (its id, or its URL), if any."""
        token = self._load().get(self._key(gateway, name))
        return token if isinstance(token, str) else None

    def put(self, gateway: str, name: str, token: str) -> None:
        """Remember ``token`` for ``name`` on ``gateway`` (its id, or its URL): written
        atomically, mode 0600."""
        tokens = {**self._load(), self._key(gateway, name): token}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(tokens, out, indent=1)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def error_of(response: httpx.Response) -> str:
    """The ``error`` of a JSON error answer, else the status line and the start of the text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return " ".join(body["error"].split())
    text = " ".join(response.text.split())[:200]
    return response.reason_phrase + (f": {text}" if text else "")


def device_record(response: httpx.Response) -> dict[str, Any]:
    """The device record a gateway answered with; ``ValueError`` (a one-line reason) when the body
    is not a JSON object."""
    try:
        record = response.json()
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ValueError("the gateway answered something that is not a device record")
    return record


def _server_now(response: httpx.Response) -> float:
    """The gateway's clock from the ``Date`` header (expiry is in its time), else ours."""
    try:
        return email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def check_gateway_url(gateway: str) -> str:
    """``gateway`` without a trailing slash; :class:`ClientError` unless it is an http(s) URL."""
    try:
        url = httpx.URL(gateway)
    except (httpx.InvalidURL, TypeError) as error:
        raise ClientError(f"bad gateway URL {gateway!r}: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ClientError(f"bad gateway URL {gateway!r}: give http://HOST:PORT")
    return gateway.rstrip("/")


def load_bitstreams(bitstreams: Iterable[Bitstream]) -> list[tuple[bytes, str]]:
    """Read every bitstream and check it is a valid iCE40UP5K ``.asc`` or ``.bin``, asking no gateway.

    Returns ``(bytes, label)`` pairs, which :meth:`PulseCountClient.evaluate` takes as they are.
    Raises :class:`BitstreamFileError` naming the first file that is missing, unreadable or no
    valid bitstream: call it before :meth:`PulseCountClient.reserve`, and a bad file reserves
    nothing (what ``picofleet evaluate`` does).
    """
    loaded = []
    for index, item in enumerate(bitstreams):
        data, label = read_bitstream(item, index)
        if bitstream_format.detect_kind(data) == "uf2":
            raise BitstreamFileError(f"{label} is a UF2 firmware image, not an iCE40 bitstream")
        try:
            bitstream_format.validate(data)
        except bitstream_format.BitstreamError as error:
            raise BitstreamFileError(f"{label} is not a valid iCE40 bitstream: {error}") from None
        loaded.append((data, label))
    return loaded


def read_bitstream(bitstream: Bitstream, index: int = 0) -> tuple[bytes, str]:
    """The bytes of a bitstream and its label (the path as given, ``bytes #index``, or the one given)."""
    if isinstance(bitstream, tuple):
        data, label = bitstream
        return bytes(data), label
    if isinstance(bitstream, (bytes, bytearray, memoryview)):
        return bytes(bitstream), f"bytes #{index}"
    path = os.fspath(bitstream)
    try:
        with open(path, "rb") as handle:
            return handle.read(), str(path)
    except OSError as error:
        raise BitstreamFileError(f"{path}: {error.strerror or error}") from None


class PulseCountClient:
    """Reserves boards on a gateway under ``name`` and evaluates bitstreams on them.

    ``token``: the name's secret token when it is not remembered; ``token_store``: where tokens
    are remembered (a :class:`TokenStore`, ``True`` for the default one, ``None`` to remember
    nothing beyond this object), under the gateway's id (asked once, when a token is first
    needed); ``timeout``: of each request (a result may take longer);
    ``auto_extend``: extend expiring reservations while an evaluation runs; ``transport``: an
    httpx transport instead of the network (tests).
    """

    def __init__(
        self,
        gateway: str,
        name: str,
        token: str | None = None,
        *,
        token_store: TokenStore | bool | None = True,
        timeout: float = REQUEST_TIMEOUT,
        auto_extend: bool = True,
        transport: httpx.BaseTransport | None = None,
    ):
        if not name or not name.strip():
            raise ValueError("a client name must not be empty")
        self.gateway = check_gateway_url(gateway)
        self.name = name
        self.store = TokenStore() if token_store is True else (token_store or None)
        self._token = token or None
        self._token_given = bool(token)  # by the caller: not from the token file
        self._token_key: str | None = None  # the gateway's id (else its URL) in the token file
        self.gateway_id: str | None = None  # as the gateway said (GET /v1/gateway), once asked
        self.timeout = timeout
        self.auto_extend = auto_extend
        self.seconds: float | None = None  # of the last reserve(): what extensions ask for
        self.transport = transport
        self._http = self._new_http()
        self._uploaded: dict[str, str] = {}  # sha256 of a file we sent -> sha256 the gateway evaluates
        self._at_exit = False
        self._mine: set[str] = set()  # serials this object reserved and did not end yet
        self._unsure = False  # a reserve() was cut off before its answer: end all of the name
        self._extenders = 0
        self._extender_lock = threading.Lock()
        self._extender_stop = threading.Event()
        self.extender_error: ClientError | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def _new_http(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=self.timeout, transport=self.transport)

    @property
    def token(self) -> str | None:
        """The name's token: the one given, else the one remembered for this gateway (looked up at
        first use: the gateway is asked for its id), else ``None`` until a reservation mints one."""
        if self._token is None and self.store is not None and self._token_key is None:
            key = self.token_key()
            self._token = self.store.get(key, self.name)
            if self._token is None and key != self.gateway:  # remembered by URL (before ids)
                self._token = self.store.get(self.gateway, self.name)
        return self._token

    @token.setter
    def token(self, token: str | None) -> None:
        self._token = token

    def token_key(self) -> str:
        """What this gateway's tokens are remembered under: its id (``GET /v1/gateway``), or its
        URL for a gateway that does not say. A gateway that cannot be reached now is asked again
        next time: its URL is used meanwhile, not remembered as its key."""
        if self._token_key is None:
            try:
                answer = self._http.get("/v1/gateway")
            except httpx.HTTPError:
                return self.gateway
            try:
                identity = answer.json() if answer.status_code == 200 else None
            except ValueError:
                identity = None
            if isinstance(identity, dict) and isinstance(identity.get("id"), str) and identity["id"]:
                self.gateway_id = identity["id"]
            self._token_key = self.gateway_id or self.gateway
        return self._token_key

    def _headers(self) -> dict[str, str]:
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _name_taken(self, status: int, reason: str, what: str) -> NameTaken:
        """The 403 for a name that is another client's, saying how to go on."""
        if self._token_given:
            whose = "the token given is not the name's"
        elif self._token and self.store is not None:
            whose = f"the token remembered for it in {self.store.path} is not the name's"
        elif self._token:
            whose = "the token this client holds is not the name's"
        elif self.store is not None:
            whose = f"{self.store.path} holds no token for it on this gateway"
        else:
            whose = "no token was given"
        hint = (
            f"{whose}: give the name's token (picofleet evaluate --token or $PICOFLEET_TOKEN, "
            "PulseCountClient(token=...)), or use another name (--name, $PICOFLEET_NAME); "
            "a name's token is handed out once, by its first reservation on the gateway"
        )
        return NameTaken(status, f"{reason}; {hint}", what)

    def _request(
        self, method: str, path: str, what: str, http: httpx.Client | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; :class:`GatewayUnreachable` or :class:`GatewayRefused` (4xx/5xx) on failure."""
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            response = (http or self._http).request(method, path, headers=headers, **kwargs)
        except httpx.InvalidURL as error:
            raise GatewayUnreachable(f"bad gateway URL {self.gateway!r}: {error}") from None
        except httpx.HTTPError as error:
            reason = str(error) or type(error).__name__
            raise GatewayUnreachable(f"cannot reach the gateway at {self.gateway}: {reason}") from None
        if response.status_code >= 400:
            reason = error_of(response)
            if response.status_code == 403 and "belongs to another client" in reason:
                raise self._name_taken(response.status_code, reason, what)
            raise GatewayRefused(response.status_code, reason, what)
        return response

    # -- reservations --------------------------------------------------------------------------

    def reserve(
        self,
        count: int = 1,
        *,
        serials: Iterable[str] | None = None,
        args: Mapping[str, Any] | None = None,
        seconds: float | None = None,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> list[str]:
        """Reserve ``count`` boards (or exactly ``serials``) and wait until they are ready.

        Returns the serials reserved by this call. ``args`` become the boards' default evaluation
        arguments; ``seconds``: how long the reservations last (default: the gateway's, an hour
        unless configured otherwise). Raises :class:`GatewayRefused` (e.g. 409: not enough free boards),
        :class:`ReservationTimeout` after ``timeout`` seconds, :class:`GatewayUnreachable`.
        """
        body: dict[str, Any] = {"name": self.name, "kind": KIND, "args": check_args(args)}
        if seconds is not None:
            body["seconds"] = seconds
        if serials is not None:
            body["serials"] = list(serials)
        elif count < 1:
            raise ValueError("count must be at least 1")
        else:
            body["count"] = count
        if not self._at_exit:  # before asking: a reserve cut off (Ctrl-C) is ended at exit too
            atexit.register(self._end_at_exit)
            self._at_exit = True
        try:
            answer = self._request("POST", "/v1/reservations", "reserving boards", json=body).json()
        except (KeyboardInterrupt, GatewayUnreachable):  # cut off: boards may be reserved unbeknownst
            self._unsure = True
            raise
        if answer.get("token"):
            self.token = answer["token"]
            if self.store:
                self.store.put(self.token_key(), self.name, answer["token"])
        self.seconds = seconds
        reserved = [Reservation.from_json(record).serial for record in answer.get("reservations", [])]
        self._mine.update(reserved)
        self.wait_ready(reserved, timeout)
        return reserved

    def reservations(self) -> list[Reservation]:
        """This client's reservations, as the gateway has them now."""
        return self._reservations()[0]

    def _reservations(self, http: httpx.Client | None = None) -> tuple[list[Reservation], float]:
        response = self._request(
            "GET", "/v1/reservations", "listing reservations", http, params={"name": self.name}
        )
        records = response.json()
        if isinstance(records, dict):  # {"reservations": [...]}
            records = records.get("reservations", [])
        mine = [Reservation.from_json(r) for r in records if r.get("name", self.name) == self.name]
        return mine, _server_now(response)

    def serials(self) -> list[str]:
        """The serials of the boards this client holds."""
        return [reservation.serial for reservation in self.reservations()]

    def wait_ready(self, serials: Iterable[str], timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Wait until every board of ``serials`` is reserved by us and ``ready``."""
        wanted = set(serials)
        deadline = time.monotonic() + timeout
        while True:
            states = {r.serial: r.state for r in self.reservations()}
            lost = sorted(wanted - states.keys())
            if lost:
                raise ClientError(f"the reservation of {', '.join(lost)} ended before the board was ready")
            waiting = sorted(serial for serial in wanted if states[serial] != "ready")
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise ReservationTimeout(
                    f"{', '.join(waiting)} not ready after {timeout:g} s (state: "
                    + ", ".join(states[serial] for serial in waiting)
                    + ")"
                )
            time.sleep(READY_POLL_INTERVAL)

    def extend(self, seconds: float | None = None, serials: Iterable[str] | None = None) -> list[Reservation]:
        """Let the reservations (all of this client's by default) end ``seconds`` from now.

        Default: as long as the last :meth:`reserve` asked for, else the gateway's default.
        """
        return self._extend(seconds, serials)

    def _extend(
        self, seconds: float | None, serials: Iterable[str] | None, http: httpx.Client | None = None
    ) -> list[Reservation]:
        body: dict[str, Any] = {"name": self.name}
        if (seconds or self.seconds) is not None:
            body["seconds"] = seconds or self.seconds
        if serials is not None:
            body["serials"] = list(serials)
        answer = self._request("POST", "/v1/reservations/extend", "extending", http, json=body).json()
        records = answer.get("reservations", []) if isinstance(answer, dict) else answer
        return [Reservation.from_json(record) for record in records]

    def end(self, serials: Iterable[str] | None = None) -> None:
        """End reservations: ``serials``, or by default every reservation of this client's name.

        The boards return to their fleet.
        """
        body: dict[str, Any] = {"name": self.name}
        if serials is not None:
            body["serials"] = list(serials)
            if not body["serials"]:
                return
        elif not self.token:
            return  # never reserved anything: nothing to end, and no token to prove the name
        self._request("POST", "/v1/reservations/end", "ending reservations", json=body)
        self._mine.difference_update(body.get("serials", self._mine.copy()))

    def end_mine(self) -> None:
        """End the reservations this object made (those still held): what ``close`` and exit do.

        Other reservations of the same name (another program's, run under the same name) are left,
        unless a :meth:`reserve` was cut off before its answer: then all of the name's are ended.
        """
        if self._unsure and self.token:
            self.end()
            self._unsure = False
            return
        if not self._mine:
            return
        held = {reservation.serial for reservation in self.reservations()}
        self.end(sorted(self._mine & held))
        self._mine.clear()

    def _end_at_exit(self) -> None:
        with contextlib.suppress(ClientError):
            self.end_mine()

    def close(self) -> None:
        """End the reservations this object made and close the connection (``with`` does this)."""
        try:
            if self._at_exit:
                atexit.unregister(self._end_at_exit)
                self._at_exit = False
            self.end_mine()
        finally:
            self._http.close()

    def __enter__(self) -> PulseCountClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- background extension ------------------------------------------------------------------

    @contextlib.contextmanager
    def _extending(self) -> Iterator[None]:
        """Keep the reservations from expiring while the block runs (one thread per client)."""
        if not self.auto_extend:
            yield
            return
        with self._extender_lock:
            self._extenders += 1
            if self._extenders == 1:
                self._extender_stop.clear()
                threading.Thread(target=self._extend_loop, name="picofleet-extend", daemon=True).start()
        try:
            yield
        finally:
            with self._extender_lock:
                self._extenders -= 1
                if self._extenders == 0:
                    self._extender_stop.set()

    def extend_if_expiring(self, http: httpx.Client | None = None) -> list[str]:
        """Extend the reservations that expire within :data:`EXTEND_MARGIN` s; their serials."""
        reservations, now = self._reservations(http)
        expiring = [r.serial for r in reservations if r.expires_at - now < EXTEND_MARGIN]
        if expiring:  # for as long as reserved, at least twice the margin (default: the gateway's)
            seconds = None if self.seconds is None else max(self.seconds, 2 * EXTEND_MARGIN)
            self._extend(seconds, expiring, http)
        return expiring

    def _extend_loop(self) -> None:
        stop = self._extender_stop
        with self._new_http() as http:  # its own connections: the evaluation stream holds one
            while not stop.is_set():
                try:
                    self.extend_if_expiring(http)
                    self.extender_error = None
                except ClientError as error:  # keep trying: the next pass may reach the gateway again
                    self.extender_error = error
                stop.wait(EXTEND_CHECK_INTERVAL)

    # -- bitstreams and evaluations ------------------------------------------------------------

    def upload(self, bitstream: Bitstream) -> str:
        """Make the gateway hold ``bitstream`` (sent only if it has not got it); its sha256.

        The sha256 returned is the one evaluations name: that of the packed ``.bin`` (an ``.asc``
        is packed by the gateway). Raises :class:`GatewayRefused` (422) for an invalid bitstream.
        """
        data, label = read_bitstream(bitstream)
        return self._upload(data, label)

    def _upload(self, data: bytes, label: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        known = self._uploaded.get(digest)
        if known:
            return known
        try:  # the gateway knows a .bin by its sha256, an .asc by the upload's: it answers the .bin's
            known_answer = self._http.get(f"/v1/bitstreams/{digest}", headers=self._headers())
            if known_answer.status_code == 200:
                self._uploaded[digest] = str(known_answer.json()["sha256"])
                return self._uploaded[digest]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass  # the PUT below says what is wrong, if anything
        answer = self._request(
            "PUT",
            "/v1/bitstreams",
            f"uploading {label}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        ).json()
        self._uploaded[digest] = answer["sha256"]
        return answer["sha256"]

    def evaluate(
        self,
        bitstreams: Iterable[Bitstream],
        serials: Iterable[str] | None = None,
        mode: str = "each",
        args: Mapping[str, Any] | None = None,
    ) -> Iterator[EvaluationResult]:
        """Count the pulses of every bitstream; yields each result as soon as it arrives.

        ``mode="each"``: every bitstream on every board of ``serials`` (default: all this client
        holds); ``"any"``: every bitstream once, on whichever board is free. ``args``
        (``clock_hz``, ``window_ms``) override the reservation's. Each distinct bitstream is
        uploaded once. While results are awaited, reservations about to expire are extended.

        Checking the arguments, reading every file (before the first upload) and uploading happen
        in this call (errors are raised here: the gateway refuses an invalid bitstream with a 422);
        the evaluation starts when the first result is asked for. To find a bad file before
        reserving boards, pass what :func:`load_bitstreams` returned.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        checked = check_args(args)
        units = [read_bitstream(bitstream, index) for index, bitstream in enumerate(bitstreams)]
        if not units:
            return iter(())
        body: dict[str, Any] = {
            "name": self.name,
            "bitstreams": [{"sha256": self._upload(data, label), "label": label} for data, label in units],
            "mode": mode,
        }
        if serials is not None:
            body["serials"] = list(serials)
        if checked:
            body["args"] = checked
        return self._stream(body)

    def _stream(self, body: dict[str, Any]) -> Iterator[EvaluationResult]:
        timeout = httpx.Timeout(self.timeout, read=None)  # a result may take a long window to come
        with self._extending():
            try:
                with self._http.stream(
                    "POST", "/v1/evaluations", json=body, headers=self._headers(), timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise GatewayRefused(response.status_code, error_of(response), "evaluating")
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        record = json.loads(line)
                        if record.get("done"):
                            return
                        yield EvaluationResult(
                            serial=record.get("serial"),
                            sha256=str(record.get("sha256", "")),
                            label=record.get("label"),
                            pulses=record.get("pulses"),
                            error=record.get("error"),
                            evaluation=record.get("evaluation"),
                        )
            except httpx.HTTPError as error:
                reason = str(error) or type(error).__name__
                raise GatewayUnreachable(f"lost the gateway at {self.gateway}: {reason}") from None
            except ValueError as error:
                raise ClientError(f"the gateway sent a line that is not JSON: {error}") from None
        raise ClientError("the gateway ended the evaluation stream before its last line")
