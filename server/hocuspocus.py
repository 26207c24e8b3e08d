"""``ws://HOST/hocuspocus``: the Hocuspocus protocol (``@hocuspocus/provider`` 4.x) on the same rooms.

One socket carries many documents (document name = canvas id). Each (socket, document) pair is a
``DocumentSession``: a ``Peer`` in that canvas's room like any ``/ws`` connection, so updates and
presence cross between the two protocols, and the room's rules (roles, size cap, backlog cap,
presence ownership) apply unchanged. What a session sends goes through the socket's one bounded
outbound queue, prefixed with the document's address (crdt/hocuspocus.py).

Per document, in order: the provider sends a token (Auth), then its sync step 1 and presence
without waiting; messages that arrive before the token is checked wait in a bounded per-socket
buffer. The token is checked (extensions' ``authenticate`` hook, then the built-in token rules:
docs/security.md), the canvas loaded, then the socket is told ``authenticated`` with scope
``read-write`` or ``readonly`` (viewers) and the session joins the room (our sync step 1 and
everyone's presence) before the buffered messages are applied. A refused token gets
``permission denied`` with the reason and leaves the socket's other documents alone.

Errors: a frame whose framing is broken (address not UTF-8, unknown type, bad varints, trailing
bytes) or over the size cap, a rate limit, a slow reader and a storage outage close the socket
(the provider reconnects every document); a bad payload inside a well-formed frame (an update
yrs refuses, malformed presence), the canvas size cap, a deletion or an expired token close only
that document with a Hocuspocus CLOSE message (docs/protocol.md, "Hocuspocus").

SyncStatus (type 8) acknowledgements are durable: each update a session writes is acknowledged
only once the persister committed it (``SaveStatus.succeeded``), so the provider's
``unsyncedChanges`` reaches 0 only when the change is in the database, and stays above 0 while the
database is down. Hocuspocus itself acknowledges when an update is applied in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, NamedTuple

from canvashub.crdt.codec import SyncStep2, SyncUpdate
from canvashub.crdt.errors import ProtocolError
from canvashub.crdt.hocuspocus import (
    SCOPE_READ_WRITE,
    SCOPE_READONLY,
    Addressed,
    CloseDocument,
    HocuspocusMessage,
    Pong,
    Stateless,
    Token,
    address_prefix,
    encode_authenticated,
    encode_close,
    encode_permission_denied,
    encode_stateless,
    encode_sync_status,
    is_relayable,
    parse_hocuspocus,
    update_has_structs,
)

from .auth import Authenticator, Principal
from .canvas_ids import CANVAS_ID_RULE, is_valid_canvas_id
from .connection import AsgiOutbox, BaseConnection, Receive, Send, WebSocketEndpoint, refuse, reject
from .errors import (
    AccessDenied,
    CanvasTooLarge,
    CloseCode,
    Forbidden,
    InvalidRequest,
    Overloaded,
    ServerError,
    ShuttingDown,
    StoreUnavailable,
    answer,
)
from .extensions import AuthRequest, Extensions, StatelessEvent
from .limits import client_ip, header, limit_exceeded, offences
from .logs import log
from .metrics import Metrics
from .rooms import Room
from .savestatus import SaveStatus

PROTOCOL = "hocuspocus"
# Close codes that end the whole socket rather than one document: the server stops, or the socket is
# a slow reader / must retry later (the provider only retries by reconnecting its socket).
SOCKET_CODES = frozenset({CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER})
MAX_DOCUMENTS_PER_SOCKET = 64  # documents open or authenticating on one socket
MAX_EARLY_MESSAGES = 256  # messages waiting for their document's token, per socket
MAX_EARLY_BYTES = 4 * 1024 * 1024  # and their bytes (or max_frame_bytes, if larger)
CANVAS_SAVED = 0  # an owed acknowledgement that waits for the whole canvas to be in storage


_last_prefixed: list[bytes] = [b"", b"", b""]  # (frame, prefix, prefix + frame): see DocumentSession.enqueue


class DocumentSession(BaseConnection):
    """One document on one Hocuspocus socket: the room's ``Peer``. Its frames go out through the
    socket's queue with the document's address in front; its writes are acknowledged with SyncStatus
    once durable."""

    __slots__ = ("socket", "address", "prefix", "acks", "canvas_saved")
    protocol = PROTOCOL  # what hooks, webhooks and the admin API's session listing report

    def __init__(self, socket: HocuspocusSocket, address: str, room: Room, principal: Principal) -> None:
        endpoint = socket.endpoint
        super().__init__(
            room,
            max_bytes=0,  # the socket's queue is the bounded one
            stall_seconds=0.0,
            metrics=endpoint.metrics,
            principal=principal,
            ip=socket.ip,
            rates=None,  # the socket's buckets are taken before a frame reaches a document
            events=False,
            announce=endpoint.settings.viewer_awareness,
        )
        self.socket = socket
        self.address = address
        self.prefix = address_prefix(address)
        self.writer = socket.out.writer
        self.save = SaveStatus(self._save_changed)  # its saves become SyncStatus acknowledgements
        # SyncStatus owed, in the order the writes arrived: the save number of a stored write, or
        # CANVAS_SAVED for a write that changed nothing (see ``_acknowledge``).
        self.acks: deque[int] = deque()
        self.canvas_saved = False  # the room last reported the canvas's storage state as "saved"

    @property
    def scope(self) -> str:
        return SCOPE_READ_WRITE if self.may_write else SCOPE_READONLY

    # -- Peer -----------------------------------------------------------------------------------
    def enqueue(self, frame: bytes) -> None:
        if self.closing or not is_relayable(frame):  # y-protocols auth/events mean something else here
            return
        self.idle = False
        # A room relays one frame to each of its peers in turn: the sessions of one document share its
        # address, so the prefixed frame is built once per fan-out, not once per recipient.
        last = _last_prefixed
        if last[0] is frame and last[1] == self.prefix:
            out = last[2]
        else:
            out = self.prefix + frame
            _last_prefixed[:] = (frame, self.prefix, out)
        self.socket.out.enqueue(out)

    def write_denied(self, update: bytes) -> None:
        if not self.denied_told:
            self.denied_told = True
            log(logging.INFO, "write_denied", canvas=self.canvas_id, conn=self.id, role=self.principal.role)

    def check_stall(self, now: float) -> None:
        self.socket.out.check_stall(now)

    @property
    def queued(self) -> tuple[int, int]:
        first = next(iter(self.socket.sessions.values()), None)  # the socket's queue, counted once
        return self.socket.out.queued if first is self else (0, 0)

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """``SOCKET_CODES`` close the socket (and so every document on it); any other code closes this
        document only, with a Hocuspocus CLOSE message carrying ``reason``."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if code in SOCKET_CODES:
            self.socket.close(code, reason, flush=flush)
        else:
            self.metrics.closes_by_code[int(code)] += 1
            self.socket.out.enqueue(encode_close(self.prefix, reason))
            self.socket.end_session(self)

    # -- messages -------------------------------------------------------------------------------
    def receive(self, message: HocuspocusMessage, size: int) -> None:
        """One message for this document (raises ``ProtocolError`` / ``ServerError`` to close it)."""
        if isinstance(message, (SyncUpdate, SyncStep2)):
            if not self.may_write:  # never applied; acknowledged as saved only if it brings nothing
                self.write_denied(message.update)
                saved = isinstance(message, SyncStep2) and not update_has_structs(message.update)
                self.socket.out.enqueue(encode_sync_status(self.prefix, saved))
                return
            before = self.save.submitted
            self.room.receive(self, message, size)
            if self.save.submitted != before:
                self.acks.append(self.save.submitted)
            else:  # nothing new: what it carries is in the document already, maybe not in storage yet
                self.acks.append(CANVAS_SAVED)
                self.canvas_saved = False
                self.room.report_storage(self)  # tells us now, and after each commit until "saved"
            self._acknowledge()
        elif isinstance(message, Stateless):
            self.socket.endpoint.stateless(self, message.payload)
        elif isinstance(message, CloseDocument):
            self.closing = True  # the provider detached: nothing more to tell it
            self.socket.end_session(self, told=False)
        elif isinstance(message, Token):
            pass  # a token again on an open document: its scope was decided when it opened
        else:
            self.room.receive(self, message, size)  # sync step 1, awareness, query awareness

    def send_stateless(self, payload: str) -> None:
        if not self.closing:
            self.socket.out.enqueue(encode_stateless(self.prefix, payload))

    def _save_changed(self, event: dict[str, Any]) -> None:
        """What the persister (this session's writes) or the room (the canvas's storage state) reports."""
        if event.get("scope") == "canvas":
            self.canvas_saved = event["status"] == "saved"
            self._acknowledge()
        elif event["status"] == "saved":
            self._acknowledge()

    def _acknowledge(self) -> None:
        """Send the SyncStatus acknowledgements that are due, in order: a write once its save number is
        durable; a write that changed nothing once the canvas's whole document is in storage (after a
        reconnect during an outage the provider's step 2 brings nothing new, yet its changes are not
        durable)."""
        acks, durable = self.acks, self.save.durable
        while acks:
            head = acks[0]
            if head == CANVAS_SAVED:
                if not self.canvas_saved:
                    return
            elif head > durable:
                return
            acks.popleft()
            if not self.closing:
                self.socket.out.enqueue(encode_sync_status(self.prefix, True))


class Early(NamedTuple):
    message: HocuspocusMessage
    size: int


class Opening:
    """A document between its first message and its session: its early messages and the token check."""

    __slots__ = ("messages", "bytes", "task")

    def __init__(self) -> None:
        self.messages: list[Early] = []
        self.bytes = 0
        self.task: asyncio.Task[None] | None = None


class HocuspocusSocket:
    """One Hocuspocus socket: its documents (open and opening), rate buckets and outbound queue."""

    def __init__(self, endpoint: HocuspocusEndpoint, out: AsgiOutbox, ip: str, headers: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.out = out
        self.ip = ip
        self.headers = headers
        self.sessions: dict[str, DocumentSession] = {}
        self.opening: dict[str, Opening] = {}
        # Addresses refused (permission denied) or closed by the server: the provider stays attached and
        # keeps sending (presence renewals, edits) until it sends a new token, on this socket or the next.
        # Those messages are dropped rather than buffered as "before the token".
        self.refused: set[str] = set()
        self.early_messages = 0
        self.early_bytes = 0
        self.tasks: set[asyncio.Task[None]] = set()  # token checks in flight
        self.message_bucket, self.byte_bucket = endpoint.sockets.rates()
        out.on_overflow = self._overflow

    # -- inbound --------------------------------------------------------------------------------
    def receive(self, data: bytes | None, size: int) -> None:
        """One whole WebSocket message: rate limits (1008), text (1003), the frame cap (1009), framing
        (1002/1007) close the socket; then the message goes to its document."""
        if self.out.closing:
            return
        endpoint = self.endpoint
        metrics = endpoint.metrics
        now = time.monotonic()
        limit = None
        if not self.message_bucket.take(1, now):
            limit = "messages_per_second"
        elif not self.byte_bucket.take(size, now):
            limit = "bytes_per_second"
        if limit is not None:
            limit_exceeded(limit, ip=self.ip, canvas=None, protocol=PROTOCOL)
            return self.refuse(CloseCode.POLICY_VIOLATION, f"rate limit exceeded ({limit.replace('_', ' ')})")
        if data is None:
            return self.refuse(CloseCode.UNSUPPORTED_DATA, "text frames are not supported")
        max_frame = endpoint.settings.max_frame_bytes
        if size > max_frame:
            return self.refuse(CloseCode.MESSAGE_TOO_BIG, f"frame exceeds {max_frame} bytes")
        started = perf_counter()
        try:
            parsed = parse_hocuspocus(data)
        except ProtocolError as exc:
            return self.refuse(answer(exc).close_code, exc.reason)
        if type(parsed) is not Pong:
            assert isinstance(parsed, Addressed)
            self._route(parsed, size)
        metrics.frames_received += 1
        metrics.bytes_received += size
        metrics.frame_handled(perf_counter() - started)

    def _route(self, parsed: Addressed, size: int) -> None:
        address, message = parsed.address, parsed.message
        session = self.sessions.get(address)
        if session is not None:
            deliver(session, message, size)
            return
        if address in self.refused:
            if type(message) is not Token:
                return
            self.refused.discard(address)  # a new token: try again
        opening = self.opening.get(address)
        if type(message) is CloseDocument:
            if opening is not None:  # detached while authenticating
                self._forget_opening(address)
            return
        if opening is None:
            if len(self.sessions) + len(self.opening) >= MAX_DOCUMENTS_PER_SOCKET:
                if type(message) is Token:
                    reason = f"too many documents on one connection (limit {MAX_DOCUMENTS_PER_SOCKET})"
                    self.out.enqueue(encode_permission_denied(address_prefix(address), reason))
                return
            opening = self.opening[address] = Opening()
        if isinstance(message, Token):
            if opening.task is None:
                task = asyncio.get_running_loop().create_task(
                    self._open(address, parsed.document, message.token, opening)
                )
                opening.task = task
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            return
        # Before its token: kept, bounded per socket (the provider sends step 1 right after the token).
        max_bytes = max(MAX_EARLY_BYTES, self.endpoint.settings.max_frame_bytes)
        if self.early_messages + 1 > MAX_EARLY_MESSAGES or self.early_bytes + size > max_bytes:
            self.refuse(CloseCode.POLICY_VIOLATION, "too much sent before authentication")
            return
        opening.messages.append(Early(message, size))
        opening.bytes += size
        self.early_messages += 1
        self.early_bytes += size

    def _forget_opening(self, address: str) -> Opening | None:
        """Drop a document that is opening (its early messages go). Its token check is not cancelled:
        it may be loading the canvas for other joiners too; it sees it was dropped and stops."""
        opening = self.opening.pop(address, None)
        if opening is not None:
            self.early_messages -= len(opening.messages)
            self.early_bytes -= opening.bytes
        return opening

    async def _open(self, address: str, document: str, token: str, opening: Opening) -> None:
        try:
            await self._open_document(address, document, token, opening)
        except Exception:
            log(logging.ERROR, "hocuspocus_open_failed", canvas=document[:64], exc_info=True)
            self.refuse(CloseCode.INTERNAL_ERROR, "internal error")

    async def _open_document(self, address: str, document: str, token: str, opening: Opening) -> None:
        """Check the token, load the canvas, then open the session and apply what waited for it. After
        each await: if the document was detached or the socket closed meanwhile, stop (and give back the
        room)."""
        endpoint = self.endpoint
        prefix = address_prefix(address)
        try:
            principal = await endpoint.authenticate(token or None, document, self)
        except ServerError as exc:
            if self.opening.get(address) is opening:
                self._forget_opening(address)
                self._refuse_address(address)
                self.out.enqueue(encode_permission_denied(prefix, exc.message))
            return
        if self.opening.get(address) is not opening:
            return
        try:
            room = await endpoint.rooms.acquire(document)
        except StoreUnavailable:
            if self.opening.get(address) is opening:
                self._forget_opening(address)
                self.refuse(CloseCode.TRY_AGAIN_LATER, "canvas storage is unavailable, retry later")
            return
        if self.opening.get(address) is not opening or self.out.closing:
            endpoint.rooms.release(room)
            return
        self._forget_opening(address)
        session = DocumentSession(self, address, room, principal)
        self.sessions[address] = session
        self.out.enqueue(encode_authenticated(prefix, session.scope))
        if not endpoint.sockets.start(session, room):  # full or deleted: the session closed itself
            return  # (start tells the extensions' connect hook, finish their disconnect hook)
        for early in opening.messages:
            if session.closing:
                break
            deliver(session, early.message, early.size)

    # -- outbound / lifecycle -------------------------------------------------------------------
    def refuse(self, code: int, reason: str) -> None:
        """The socket itself is at fault: close it (and every document on it)."""
        offences.record(logging.WARNING, "ws_protocol_error", self.ip, int(code), code=int(code), reason=reason)
        self.close(code, reason[:120], flush=False)

    def _overflow(self, reason: str) -> None:
        self.endpoint.metrics.slow_client_disconnects += 1
        queued_frames, queued_bytes = self.out.queued
        log(
            logging.WARNING,
            "slow_client_disconnected",
            protocol=PROTOCOL,
            reason=reason,
            queued_frames=queued_frames,
            queued_bytes=queued_bytes,
        )
        message = "client stopped reading" if reason == "stalled" else "send queue full: client is not reading"
        self.close(CloseCode.TRY_AGAIN_LATER, message, flush=False)

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """Close the socket: every document leaves its room (on the next loop turn: we may be inside a
        room's fan-out), the openings are cancelled."""
        if self.out.closing:
            return
        self.endpoint.metrics.closes_by_code[int(code)] += 1
        self.out.close(code, reason, flush=flush)
        for session in list(self.sessions.values()):
            session.closing = True
            session.close_code = code
            self.end_session(session)
        for address in list(self.opening):
            self._forget_opening(address)

    def end_session(self, session: DocumentSession, *, told: bool = True) -> None:
        """The document is closed: it stops receiving now and leaves its room on the next loop turn.
        ``told``: the server closed it (its later messages are dropped until a new token)."""
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]
            if told:
                self._refuse_address(session.address)
            asyncio.get_running_loop().call_soon(self.endpoint.finish, session)

    def _refuse_address(self, address: str) -> None:
        if len(self.refused) < MAX_DOCUMENTS_PER_SOCKET:
            self.refused.add(address)

    def gone(self) -> None:
        """The socket is closed (either side): end everything now."""
        self.out.closing = True
        for address in list(self.opening):
            self._forget_opening(address)
        for session in list(self.sessions.values()):
            session.closing = True
            del self.sessions[session.address]
            self.endpoint.finish(session)


def deliver(session: DocumentSession, message: HocuspocusMessage, size: int) -> None:
    """A message for an open document; a bad payload or a refused write closes that document only."""
    try:
        session.receive(message, size)
    except ServerError as exc:  # a write refused by policy (backlog full: the socket; canvas too large)
        if isinstance(exc, CanvasTooLarge):
            limit_exceeded("canvas_size", ip=session.ip, canvas=session.canvas_id, conn=session.id)
        session.save.failed(exc.message)
        refuse(session, answer(exc).close_code, exc.message, flush=True)
    except ProtocolError as exc:
        refuse(session, answer(exc).close_code, exc.reason)


class HocuspocusEndpoint:
    """The ASGI app for ``/hocuspocus`` (under ``canvashub serve`` too: its native transport hands
    every path but ``/ws/{id}`` to the ASGI app). Admission per socket: pacing per address, Origin,
    shutdown, connections per address; per document: the token, the canvas id, the room."""

    def __init__(
        self,
        sockets: WebSocketEndpoint,
        auth: Authenticator,
        hooks: Extensions | None = None,
        publish_stateless: Callable[[str, str], None] | None = None,
    ) -> None:
        self.publish_stateless = publish_stateless  # the other processes' clients get broadcasts too
        self.sockets = sockets  # admission parts, room registry, settings, start/finish of a peer
        self.rooms = sockets.rooms
        self.settings = sockets.settings
        self.metrics: Metrics = sockets.metrics
        self.auth = auth
        self.hooks = hooks

    # -- per document ---------------------------------------------------------------------------
    async def authenticate(self, token: str | None, document: str, socket: HocuspocusSocket) -> Principal:
        """Who may open ``document`` with ``token``: extensions first, then the built-in rules; raises
        the refusal (its message is the ``permission denied`` reason)."""
        try:
            if not is_valid_canvas_id(document):
                raise InvalidRequest(f"document name must be a canvas id: {CANVAS_ID_RULE}")
            principal = None
            hooks = self.hooks
            if hooks is not None and hooks.has("authenticate"):
                request = AuthRequest(PROTOCOL, document, token, socket.headers, {}, socket.ip)
                principal = await hooks.authenticate(request)
            if principal is None:
                principal = self.auth.authenticate(token)
            self.auth.authorize(principal, document, "read")
            if self.sockets.canvases.shutting_down:
                raise ShuttingDown("server is shutting down")
            return principal
        except AccessDenied as exc:
            status = answer(exc).status
            offences.record(
                logging.WARNING,
                "ws_auth_refused",
                socket.ip,
                status,
                canvas=document[:64],
                status=status,
                reason=exc.message,
                protocol=PROTOCOL,
            )
            raise

    def finish(self, session: DocumentSession) -> None:
        self.sockets.finish(session)

    def stateless(self, session: DocumentSession, payload: str) -> None:
        """A stateless message from a client goes to the ``stateless`` hook (nothing else reads it)."""
        hooks = self.hooks
        if hooks is not None and hooks.has("stateless"):
            hooks.notify(
                "stateless", StatelessEvent(session.canvas_id, str(session.id), session.principal.user_id, payload)
            )

    def broadcast_stateless(self, canvas_id: str, payload: str) -> int:
        """Send a stateless message to every Hocuspocus client of ``canvas_id``, on this process and (through
        the cluster's pub/sub) on the others (the server helper of docs/protocol.md); returns how many
        documents it went to on this process. y-websocket clients have no such message and get nothing."""
        if self.publish_stateless is not None:
            self.publish_stateless(canvas_id, payload)
        return self.deliver_stateless(canvas_id, payload)

    def deliver_stateless(self, canvas_id: str, payload: str) -> int:
        """A stateless broadcast (made here or relayed by another process) to this process's clients."""
        room = self.rooms.rooms.get(canvas_id)
        if room is None:
            return 0
        sent = 0
        for peer in room.connections:
            if isinstance(peer, DocumentSession) and not peer.closing:
                peer.send_stateless(payload)
                sent += 1
        return sent

    # -- the ASGI app ---------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        ip = client_ip(scope)
        try:
            await self._admit(scope, ip)
        except ServerError as exc:
            await reject(scope, send, exc)
            return
        try:
            await self._serve(scope, receive, send, ip)
        finally:
            self.sockets.ip_connections.release(ip)

    async def _admit(self, scope: dict[str, Any], ip: str) -> None:
        """The upgrade's checks (the per-document ones come with each token); holds an address slot."""
        sockets = self.sockets
        if not await sockets.upgrades.admit(ip):
            limit_exceeded("upgrade_rate_per_ip", ip=ip, canvas=None, rate=sockets.upgrades.rate)
            raise Overloaded("too many new connections from this address, retry later")
        origin = header(scope, b"origin")
        if not sockets.origins.allows(origin, header(scope, b"host")):
            limit_exceeded("origin", ip=ip, canvas=None, origin=origin[:200] if origin else None)
            raise Forbidden("this Origin may not open WebSockets here")
        if sockets.canvases.shutting_down:
            raise ShuttingDown("server is shutting down")
        if not sockets.ip_connections.acquire(ip):
            limit = sockets.ip_connections.limit
            limit_exceeded("connections_per_ip", ip=ip, canvas=None, maximum=limit)
            raise Forbidden(f"too many connections from this address (limit {limit})")

    async def _serve(self, scope: dict[str, Any], receive: Receive, send: Send, ip: str) -> None:
        settings = self.settings
        out = AsgiOutbox(
            send,
            max_bytes=settings.send_queue_bytes,
            max_messages=settings.send_queue_messages,
            stall_seconds=settings.send_stall_seconds,
        )
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in (b"origin", b"user-agent", b"host")
        }
        socket = HocuspocusSocket(self, out, ip, headers)
        await send({"type": "websocket.accept"})
        out.writer = asyncio.get_running_loop().create_task(out.run_writer())
        try:
            await out.read(receive, socket.receive)
        finally:
            socket.gone()
            await out.finish(settings.shutdown_timeout)
