"""A canvas kept in sync over the y-websocket protocol: ``async with connect(url, canvas_id) as canvas``.

One task owns the connection: connect, sync, serve, and on a transient loss reconnect after a capped,
fully jittered exponential backoff. Every frame is parsed by ``canvashub.crdt.codec`` (bounded,
canonical) before pycrdt sees its payload. The wire, as docs/protocol.md describes it:

* on connect the client sends its sync step 1 and its presence; the server sends its own step 1 first
  and the client answers with step 2, the diff the server lacks. That is how changes made while
  disconnected reach the server: nothing is queued while offline, the document *is* the queue;
* each local transaction (any origin but ``REMOTE``) is sent as one update once that step 2 is out;
  remote updates are applied in a transaction whose origin is ``REMOTE``;
* the socket opts in to events (``?events=1``): ``save`` events feed ``saved()``, ``access`` and
  ``denied`` say what the token allows, the rest (``generation``...) go to ``events()``.

A close the server means for good (4401, 4404, 4413, 1008, 1002/1003/1007/1009, a 4xx upgrade refusal)
ends the task with a typed ``ConnectionRefused``: ``synced()``/``saved()`` raise it, and so does leaving
the ``async with`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import websockets
from pycrdt import Doc, Subscription
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from canvashub.crdt import codec
from canvashub.crdt.errors import ProtocolError
from canvashub.crdt.room import apply_update_safely
from canvashub.crdt.update import check_state_vector, decode_state_vector

from .backoff import Backoff
from .durability import SaveTracker, Target
from .errors import ConnectionRefused, EditDenied, refusal_for_close, refusal_for_status
from .feed import Feed
from .presence import RENEW_SECONDS, Presence

log = logging.getLogger("canvashub.client")

# The origin of every transaction that applies the server's updates (compare ``txn.origin`` with it,
# e.g. to keep an UndoManager to local changes).
REMOTE = "canvashub.client:remote"

CANVAS_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: may travel as a subprotocol
EVENT_QUEUE_LIMIT = 1024

Token = str | Callable[[], str | Awaitable[str]] | None


def websocket_url(url: str, canvas_id: str) -> str:
    """``http(s)://host[:port][/prefix]`` or ``ws(s)://...`` -> ``ws(s)://host/prefix/ws/{canvas_id}?events=1``."""
    if not CANVAS_ID.fullmatch(canvas_id):
        raise ValueError("canvas id must be 1-64 characters from A-Z a-z 0-9 _ -")
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}/ws/{canvas_id}", "events=1", ""))


class Canvas:
    """One canvas document, kept in sync with the server while the context is open."""

    def __init__(
        self,
        url: str,
        canvas_id: str,
        *,
        token: Token = None,
        doc: Doc[Any] | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        max_frame_bytes: int = 72 * 1024 * 1024,
        max_queue_bytes: int = 16 * 1024 * 1024,
        max_presence_bytes: int = 8192,
    ) -> None:
        self.canvas_id = canvas_id
        self.url = websocket_url(url, canvas_id)
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.presence = Presence(self.doc.client_id, self._send_presence, max_state_bytes=max_presence_bytes)
        self.access: dict[str, Any] | None = None  # the last ``access`` event: role, user, can
        self.attempts = 0  # connection attempts so far
        self.connections = 0  # sockets opened so far (1 + reconnects)
        self._token = token
        self._backoff = backoff or Backoff()
        self._open_timeout = open_timeout
        self._max_frame_bytes = max_frame_bytes
        self._max_queue_bytes = max_queue_bytes
        self._tracker = SaveTracker()
        self._ws: ClientConnection | None = None
        self._live = False  # our sync step 2 went out on the open socket: local updates may follow it
        self._synced = False  # the server answered our sync step 1 on the open socket
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._applying_remote = False
        self._error: ConnectionRefused | None = None
        self._error_seen = False
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._event_feeds: set[Feed[dict[str, Any]]] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Canvas:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close()
        if exc_type is None and self._error is not None and not self._error_seen:
            raise self._error  # the connection ended for good while the block ran and nobody was told

    async def start(self, *, wait_synced: bool = True, timeout: float | None = 30.0) -> None:
        """Start the connection task; by default wait for the first sync (raises a ``ConnectionRefused``
        the server answers for good, ``TimeoutError`` if it does not sync within ``timeout``)."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._subscription = self.doc.observe(self._on_transaction)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"canvashub.client:{self.canvas_id}")
        if wait_synced:
            try:
                await self.synced(timeout)
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        """Leave: say our presence is gone, close the socket (1000), stop reconnecting. Changes not yet
        sent stay in ``doc`` (call ``saved()`` first to be sure they are durable)."""
        ws = self._ws
        if ws is not None and self._live and not self._closing.is_set():
            if self.presence.local is not None:
                self._enqueue(self.presence.leave_frame())
            # What is queued (the last local updates, our presence removal) goes out first.
            with contextlib.suppress(Exception):
                await self._wait(lambda: not self._outbox_bytes or self._ws is None, 5.0, "sent")
        self._closing.set()
        self._notify()
        if self._task is not None:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1000, "client closing"), 5.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def is_synced(self) -> bool:
        return self._synced

    @property
    def save_status(self) -> str:
        """offline | connecting | saving | retrying | failed | saved: this client's own changes."""
        return self._tracker.status

    @property
    def error(self) -> ConnectionRefused | None:
        """Why the connection ended for good, if it did."""
        return self._error

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection has ended for good; raises the ``ConnectionRefused`` that ended it
        (e.g. ``CanvasDeleted``), returns if ``close()`` ended it."""
        task = self._task
        if task is None:
            raise RuntimeError("not started")
        await asyncio.wait_for(asyncio.shield(task), timeout)
        if self._error is not None:
            self._error_seen = True
            raise self._error

    async def synced(self, timeout: float | None = None) -> None:
        """Wait until the current connection has received the server's state."""
        await self._wait(lambda: self._synced, timeout, "synced")

    async def saved(self, timeout: float | None = None) -> None:
        """Wait until every local change made so far is durable (committed to the server's database),
        as the server's ``save`` events say. Raises ``TimeoutError``, ``EditDenied`` (the token may not
        edit: they will never be saved) or the ``ConnectionRefused`` that ended the connection."""
        target: Target = self._tracker.target()

        def done() -> bool:
            if self._tracker.covers(target):
                return True
            if self._tracker.denied is not None:
                raise EditDenied(self._tracker.denied)
            return False

        await self._wait(done, timeout, "saved")

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if predicate():
                return
            if self._error is not None:
                self._error_seen = True
                raise self._error
            if self._closing.is_set():
                raise RuntimeError(f"canvas closed while waiting until {what}")
            changed = self._changed
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"not {what} within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- events -----------------------------------------------------------------------------------

    def on_event(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback`` with every canvashub event (``save``, ``generation``, ``access``...)."""
        self._event_listeners.append(callback)
        return lambda: self._event_listeners.remove(callback) if callback in self._event_listeners else None

    def events(self) -> Feed[dict[str, Any]]:
        """Every canvashub event from now on: ``with canvas.events() as feed: async for event in feed``
        (at most 1,024 buffered; the oldest are dropped first)."""
        return Feed(self._event_feeds, EVENT_QUEUE_LIMIT)

    def _dispatch_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        now = time.monotonic()
        if kind == "save":
            self._tracker.save_event(event, now)
        elif kind == "access":
            self.access = event
        elif kind == "denied":
            self._tracker.denied = str(event.get("reason") or "edit denied")
        for callback in list(self._event_listeners):
            try:
                callback(event)
            except Exception:
                log.exception("canvashub_client_event_callback_failed canvas=%s", self.canvas_id)
        for feed in list(self._event_feeds):
            feed.put(event)
        self._notify()

    # -- local changes ----------------------------------------------------------------------------

    def _on_transaction(self, event: Any) -> None:  # a pycrdt TransactionEvent (its stub lacks the states)
        """Called by pycrdt after each committed transaction (must not write to the doc, only enqueue)."""
        if self._applying_remote:
            return
        update = bytes(event.update)  # event fields are only valid inside the callback
        if update == codec.EMPTY_UPDATE:
            return
        clocks = _advanced(bytes(event.before_state), bytes(event.after_state))
        on_socket = self._live
        self._tracker.local_change(clocks, on_socket, time.monotonic())
        if on_socket:
            self._enqueue(codec.encode_update(update))
        self._notify()

    def _send_presence(self, frame: bytes) -> None:
        if self._live:
            self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> None:
        if self._outbox_bytes + len(frame) > self._max_queue_bytes:
            # The socket does not keep up: drop the queue and resync on a new socket (its step 2
            # carries every local change: the document is the real queue).
            log.warning("canvashub_client_queue_full canvas=%s bytes=%d", self.canvas_id, self._outbox_bytes)
            self._outbox.clear()
            self._outbox_bytes = 0
            self._live = False
            ws = self._ws
            if ws is not None:
                asyncio.get_running_loop().create_task(ws.close(1000, "client send queue full, resyncing"))
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        self._outbox_ready.set()

    # -- the connection task ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closing.is_set():
                try:
                    refusal = await self._attempt()
                except Exception:  # a bug here or in a callback must not end the peer silently: retry
                    log.exception("canvashub_client_connection_crashed canvas=%s", self.canvas_id)
                    refusal = None
                if refusal is not None:
                    self._error = refusal
                    log.warning("canvashub_client_refused canvas=%s error=%s", self.canvas_id, refusal)
                    return
                if self._closing.is_set():
                    return
                delay = self._backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._notify()

    async def _credentials(self) -> tuple[str, list[Subprotocol] | None]:
        """The URL and subprotocols for the next attempt (a callable token is asked each time)."""
        source = self._token
        token: str | Awaitable[str] | None = source() if callable(source) else source
        if inspect.isawaitable(token):
            token = await token
        if not token:
            return self.url, None
        if HEADER_TOKEN.fullmatch(token):
            return self.url, [
                Subprotocol("canvashub"),
                Subprotocol(token),
            ]  # keeps the token out of URLs and access logs
        return f"{self.url}&{urlencode({'token': token})}", None

    async def _attempt(self) -> ConnectionRefused | None:
        """One connection, from the upgrade to its close. Returns a refusal if the close is final."""
        self.attempts += 1
        url, subprotocols = await self._credentials()
        try:
            ws = await websockets.connect(
                url,
                subprotocols=subprotocols,
                open_timeout=self._open_timeout,
                max_size=self._max_frame_bytes,
                compression=None,  # deflate costs the server CPU on every frame (shared/NOTES.md)
                user_agent_header="canvashub-python-client",
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            error_type, message = _error_of(bytes(exc.response.body or b""))
            refusal = refusal_for_status(status, error_type, message)
            if refusal is None:
                log.info("canvashub_client_upgrade_refused canvas=%s status=%d", self.canvas_id, status)
            return refusal
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
            log.info("canvashub_client_connect_failed canvas=%s error=%r", self.canvas_id, exc)
            return None
        self.connections += 1
        self._ws = ws
        writer = asyncio.get_running_loop().create_task(self._write(ws))
        ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            await ws.send(codec.encode_sync_step1(self.doc.get_state()))
            async for frame in ws:
                if isinstance(frame, str):
                    await ws.close(1003, "text frames are not part of the protocol")
                    break
                await self._receive(ws, frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            writer.cancel()
            ticker.cancel()
            await asyncio.gather(writer, ticker, return_exceptions=True)
            self._ws = None
            self._live = self._synced = False
            self._outbox.clear()
            self._outbox_bytes = 0
            self._tracker.disconnected()
            self.presence.forget_others()
            self._notify()
        code, reason = ws.close_code or 1006, ws.close_reason or ""
        if self._closing.is_set():
            return None
        if code == 4401 and callable(self._token):
            return None  # expired: the next attempt asks for a fresh token
        return refusal_for_close(code, reason)

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                frame = self._outbox[0]
                await ws.send(frame)
                if self._outbox and self._outbox[0] is frame:  # not cleared meanwhile (queue full)
                    self._outbox.popleft()
                    self._outbox_bytes -= len(frame)
            self._notify()

    async def _tick(self) -> None:
        """Presence renewal and expiry, and deletions settled by a quiet period (see durability.py)."""
        while True:
            deadline = self._tracker.quiet_deadline()
            wait = RENEW_SECONDS / 3
            if deadline is not None:
                wait = min(wait, max(0.05, deadline - time.monotonic()))
            await asyncio.sleep(wait)  # a timer: the periodic work itself is the point
            self.presence.tick()
            if self._tracker.settle_quiet_deletes(time.monotonic()):
                self._notify()

    async def _receive(self, ws: ClientConnection, frame: bytes) -> None:
        try:
            message = codec.parse_frame(frame)
        except ProtocolError as exc:
            log.warning("canvashub_client_bad_frame canvas=%s reason=%s", self.canvas_id, exc.reason)
            await ws.close(int(exc.code), exc.reason[:100])
            return
        match message:
            case codec.SyncStep1(state_vector):
                self._answer_step1(state_vector)
            case codec.SyncStep2(update):
                self._apply_remote(update)
                self._synced = True
                self._backoff.reset()
                self._notify()
            case codec.SyncUpdate(update):
                self._apply_remote(update)
            case codec.AwarenessFrame(payload):
                self.presence.receive(payload)
            case codec.QueryAwareness():
                if self._live and self.presence.local is not None:
                    self._enqueue(self.presence.frame())
            case codec.AuthDenied(reason):
                self._tracker.denied = reason
                self._notify()
            case codec.EventRequest(payload):
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    return
                if isinstance(event, dict):
                    self._dispatch_event(event)

    def _answer_step1(self, state_vector: bytes) -> None:
        try:
            check_state_vector(state_vector)
            update = self.doc.get_update(state_vector)
        except (ProtocolError, ValueError) as exc:
            log.warning("canvashub_client_bad_state_vector canvas=%s error=%r", self.canvas_id, exc)
            return
        # Everything the server lacks, offline edits included, goes in this one frame; the local
        # transactions that follow go as updates behind it, in order.
        self._live = True
        self._tracker.connected(time.monotonic())
        self._enqueue(codec.encode_sync_step2(update))
        announce = self.presence.announce()
        if announce is not None:
            self._enqueue(announce)
        self._notify()

    def _apply_remote(self, update: bytes) -> None:
        if update == codec.EMPTY_UPDATE:
            return
        self._applying_remote = True
        try:
            with self.doc.transaction(origin=REMOTE):
                apply_update_safely(self.doc, update)
        except ProtocolError as exc:
            log.warning("canvashub_client_bad_update canvas=%s reason=%s", self.canvas_id, exc.reason)
        finally:
            self._applying_remote = False
        self._notify()


def _advanced(before: bytes, after: bytes) -> dict[int, int]:
    """The state-vector entries a transaction advanced: client id -> its new clock."""
    old = decode_state_vector(before) if before != b"\x00" else {}
    new = decode_state_vector(after) if after != b"\x00" else {}
    return {client: clock for client, clock in new.items() if clock > old.get(client, 0)}


def _error_of(body: bytes) -> tuple[str | None, str]:
    """The ``{"error": {"type", "message"}}`` of a refused upgrade, if its body is one."""
    try:
        error = orjson.loads(body).get("error", {})
        return str(error.get("type")), str(error.get("message"))
    except (orjson.JSONDecodeError, AttributeError):
        return None, body[:200].decode("utf-8", "replace")


def connect(url: str, canvas_id: str, *, token: Token = None, doc: Doc[Any] | None = None, **options: Any) -> Canvas:
    """``async with connect("http://127.0.0.1:8000", "demo", token=...) as canvas:`` — see ``Canvas``.

    ``token``: a string, or a function (sync or async) returning a fresh one for every connection
    attempt; with a function, an expiry close (4401) reconnects with a new token instead of failing.
    ``doc``: a pycrdt ``Doc`` to sync (a new one by default). ``options``: ``backoff``, ``open_timeout``,
    ``max_frame_bytes``, ``max_queue_bytes``, ``max_presence_bytes``.
    """
    return Canvas(url, canvas_id, token=token, doc=doc, **options)
