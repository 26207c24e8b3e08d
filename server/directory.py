"""The cluster's directory, for the admin API: which canvases are live on which process, who is on them,
and disconnecting them, across every process that shares the pub/sub.

Each process knows only its own rooms. Rather than publishing summaries that go stale, the admin API
asks: a query goes to every process over the pub/sub, each answers from its own rooms at that moment,
and the asking process merges the answers. An answer is therefore live (as of the query), and a process
that holds nothing costs nothing between queries.

Channels (under the pub/sub's prefix):

- ``admin``, which every process subscribes to at start:
  ``h`` + JSON ``{"started"}``: a heartbeat, every HEARTBEAT_SECONDS, and at once when a process hears
  one from a process it did not know (so a newcomer is known to everyone within one round trip) and
  after every pub/sub reconnect; ``g``: the process is stopping; ``q`` + JSON ``{"id", "what", ...}``:
  a query (``rooms``, ``sessions`` or ``disconnect``).
- ``admin:{node id}``, each process's own: ``r`` + JSON ``{"id", ...}``: one process's answer.

The asker waits for an answer from every process it heard from in the last NODE_TIMEOUT seconds, for at
most ``query_timeout``; processes that did not answer in time are named in the result (``missing``).
Bounded: a process answers at most ``limit + 1`` rooms (or sessions) after the page's cursor, in cursor
order, so merging the answers gives exactly the cluster's page; at most MAX_USERS users per room.

Locks are not queries: they are stored, then announced on the canvas's own channel (server/cluster.py,
``l``). After a pub/sub outage (when such a message may have been lost) ``refresh_locks`` re-reads the
locks of the canvases loaded here from the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from canvashub.storage.base import CanvasStore

from .errors import CloseCode
from .isotime import iso
from .logs import FailureLog, log
from .peer import Peer
from .pubsub import PubSub

ADMIN_CHANNEL = "admin"
HEARTBEAT, GONE, QUERY, REPLY = b"h", b"g", b"q", b"r"
HEARTBEAT_SECONDS = 5.0
NODE_TIMEOUT = 3 * HEARTBEAT_SECONDS  # a process silent this long is no longer waited for
QUERY_TIMEOUT = 1.0  # how long a query waits for the other processes' answers
MAX_PAGE = 100
MAX_USERS = 20  # users listed per room (``users_truncated`` says when there were more)
MAX_USER_ID = 200  # the longest ``sub`` a token may carry (server/auth.py)
MAX_CANVAS_ID = 64
DISCONNECT_REASON = "disconnected by an administrator"
LOCK_RETRY_SECONDS = 1.0


class DirectoryRoom(Protocol):
    """What the directory reads of a loaded canvas (server/rooms.py's ``Room``)."""

    canvas_id: str
    locked: bool

    @property
    def connections(self) -> Mapping[Peer, None]: ...

    @property
    def unconfirmed(self) -> Mapping[tuple[str, int], tuple[bytes, float]]: ...

    def leave(self, conn: Peer) -> None: ...

    def set_locked(self, locked: bool) -> None: ...


class Backlog(Protocol):
    def pending_updates(self, canvas_id: str) -> int: ...


@dataclasses.dataclass
class Gathered:
    """The answers to one query: by node id (this process's own included), and who did not answer."""

    answers: dict[str, dict[str, Any]]
    missing: list[str]


@dataclasses.dataclass
class _Pending:
    expected: set[str]
    answers: dict[str, dict[str, Any]]
    done: asyncio.Event


class QueryError(ValueError):
    """A query from another process that this one cannot read (logged, not answered)."""


def session_id(node: str, conn_id: int) -> str:
    return f"{node}-{conn_id}"


def parse_session_cursor(cursor: str) -> tuple[str, int] | None:
    """``{node}-{number}`` → (node, number), or None if it is not one."""
    node, _, number = cursor.rpartition("-")
    if not node or not number.isdigit() or len(number) > 18:
        return None
    return node, int(number)


class Directory:
    """Asks every process about its rooms and merges the answers; answers the others' questions."""

    def __init__(
        self,
        pubsub: PubSub,
        rooms: Mapping[str, DirectoryRoom],
        backlog: Backlog,
        store: CanvasStore,
        *,
        query_timeout: float = QUERY_TIMEOUT,
        store_timeout: float = 5.0,
    ) -> None:
        self.pubsub = pubsub
        self.node_id = pubsub.node_id
        self.rooms = rooms
        self.backlog = backlog
        self.store = store
        self.query_timeout = query_timeout
        self.store_timeout = store_timeout
        self.started_at = time.time()
        self.nodes: dict[str, float] = {}  # other processes, by node id: when last heard (monotonic)
        self._pending: dict[str, _Pending] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock_failures = FailureLog("lock_refresh")
        self.rejected = 0
        pubsub.on_reconnect(self._reconnected)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.pubsub.subscribe(ADMIN_CHANNEL, self._on_admin)
        await self.pubsub.subscribe(self.reply_channel(self.node_id), self._on_reply)
        self._beat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pubsub.publish(ADMIN_CHANNEL, GONE)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self._beat()

    def _beat(self) -> None:
        self.pubsub.publish(ADMIN_CHANNEL, HEARTBEAT + orjson.dumps({"started": self.started_at}))

    def _reconnected(self) -> None:
        """After a pub/sub outage: be known again at once, and re-read locks a lost message may have changed."""
        self._beat()
        task = asyncio.get_running_loop().create_task(self.refresh_locks())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def reply_channel(node: str) -> str:
        return f"{ADMIN_CHANNEL}:{node}"

    def live_nodes(self) -> set[str]:
        """The other processes heard from in the last NODE_TIMEOUT seconds."""
        horizon = time.monotonic() - NODE_TIMEOUT
        for node in [n for n, seen in self.nodes.items() if seen < horizon]:
            del self.nodes[node]
        return set(self.nodes)

    # -- asking ------------------------------------------------------------------------------
    async def ask(self, what: str, **args: Any) -> Gathered:
        """Run query ``what`` here and on every live process; wait (at most ``query_timeout``) for them."""
        local = self.answer(what, args)
        query_id = secrets.token_hex(8)
        expected = self.live_nodes()
        pending = _Pending(expected, {}, asyncio.Event())
        self._pending[query_id] = pending
        try:
            sent = self.pubsub.publish(ADMIN_CHANNEL, QUERY + orjson.dumps({"id": query_id, "what": what, **args}))
            if sent and expected:
                try:
                    async with asyncio.timeout(self.query_timeout):
                        await pending.done.wait()
                except TimeoutError:
                    pass
        finally:
            del self._pending[query_id]
        missing = sorted(expected - pending.answers.keys())
        if missing:
            log(logging.WARNING, "admin_query_partial", what=what, missing=missing)
        return Gathered({self.node_id: local, **pending.answers}, missing)

    async def rooms_page(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool, Gathered]:
        """The cluster's live canvases after ``after`` (by id), at most ``limit``, merged across processes;
        and whether more follow."""
        gathered = await self.ask("rooms", after=after, limit=limit)
        merged: dict[str, dict[str, Any]] = {}
        for node, answer in sorted(gathered.answers.items()):
            for summary in answer.get("rooms", ()):
                room = merged.setdefault(
                    summary["id"],
                    {
                        "id": summary["id"],
                        "connections": 0,
                        "users": [],
                        "users_truncated": False,
                        "backlog": 0,
                        "locked": False,
                        "nodes": [],
                    },
                )
                room["connections"] += summary["connections"]
                room["backlog"] += summary["backlog"]
                room["locked"] = room["locked"] or summary["locked"]
                room["nodes"].append(
                    {"node": node, "connections": summary["connections"], "backlog": summary["backlog"]}
                )
                known = {user["id"] for user in room["users"]}
                for user in summary["users"]:
                    if user["id"] not in known:
                        if len(room["users"]) >= MAX_USERS:
                            room["users_truncated"] = True
                            break
                        room["users"].append(user)
                        known.add(user["id"])
                room["users_truncated"] = room["users_truncated"] or summary["users_truncated"]
        ordered = [merged[canvas_id] for canvas_id in sorted(merged)]
        return ordered[:limit], len(ordered) > limit, gathered

    async def sessions_page(
        self, canvas_id: str, after: tuple[str, int] | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool, Gathered]:
        """Who is on ``canvas_id`` on every process, ordered by session id, at most ``limit`` after ``after``."""
        gathered = await self.ask("sessions", canvas=canvas_id, after=after, limit=limit)
        sessions = [session for answer in gathered.answers.values() for session in answer.get("sessions", ())]
        sessions.sort(key=lambda s: (s["node"], s["number"]))
        for session in sessions:
            del session["number"]
        return sessions[:limit], len(sessions) > limit, gathered

    async def disconnect(self, canvas_id: str, user_id: str | None) -> tuple[int, Gathered]:
        """Close the canvas's sockets (``user_id``'s only, if given) on every process with 4403."""
        gathered = await self.ask("disconnect", canvas=canvas_id, user=user_id)
        return sum(int(answer.get("disconnected", 0)) for answer in gathered.answers.values()), gathered

    # -- answering ---------------------------------------------------------------------------
    def answer(self, what: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """This process's part of a query (raises ``QueryError`` for one it cannot read)."""
        if what == "rooms":
            after = args.get("after")
            if after is not None and (not isinstance(after, str) or len(after) > MAX_CANVAS_ID):
                raise QueryError("after must be a canvas id")
            limit = _limit(args.get("limit"))
            candidates = (room for canvas_id, room in self.rooms.items() if after is None or canvas_id > after)
            chosen = heapq.nsmallest(limit + 1, candidates, key=lambda room: room.canvas_id)
            return {"rooms": [self._room_summary(room) for room in chosen]}
        canvas_id = args.get("canvas")
        if not isinstance(canvas_id, str) or not 0 < len(canvas_id) <= MAX_CANVAS_ID:
            raise QueryError("canvas must be a canvas id")
        room = self.rooms.get(canvas_id)
        if what == "sessions":
            cursor = args.get("after")
            if cursor is not None and not (
                isinstance(cursor, (list, tuple))
                and len(cursor) == 2
                and isinstance(cursor[0], str)
                and isinstance(cursor[1], int)
            ):
                raise QueryError("after must be [node, number]")
            limit = _limit(args.get("limit"))
            if room is None or (cursor is not None and cursor[0] > self.node_id):
                return {"sessions": []}
            floor = cursor[1] if cursor is not None and cursor[0] == self.node_id else 0
            conns = heapq.nsmallest(limit + 1, (c for c in room.connections if c.id > floor), key=lambda c: c.id)
            return {"sessions": [self._session(conn) for conn in conns]}
        if what == "disconnect":
            user = args.get("user")
            if user is not None and (not isinstance(user, str) or not 0 < len(user) <= MAX_USER_ID):
                raise QueryError("user must be a user id")
            return {"disconnected": self._disconnect(room, user) if room is not None else 0}
        raise QueryError(f"unknown query {what!r}")

    def _room_summary(self, room: DirectoryRoom) -> dict[str, Any]:
        users: dict[str, dict[str, str]] = {}
        truncated = False
        for conn in room.connections:
            principal = getattr(conn, "principal", None)
            user_id = getattr(principal, "user_id", None)
            if user_id is None or user_id in users:
                continue
            if len(users) >= MAX_USERS:
                truncated = True
                break
            users[user_id] = {"id": user_id, "name": getattr(principal, "name", None) or user_id}
        return {
            "id": room.canvas_id,
            "connections": len(room.connections),
            "users": list(users.values()),
            "users_truncated": truncated,
            # Updates of the canvas not yet durable: queued or being written here, plus changes relayed
            # from other processes that those processes have not yet confirmed stored.
            "backlog": self.backlog.pending_updates(room.canvas_id) + len(room.unconfirmed),
            "locked": room.locked,
        }

    def _session(self, conn: Peer) -> dict[str, Any]:
        principal = getattr(conn, "principal", None)
        return {
            "id": session_id(self.node_id, conn.id),
            "node": self.node_id,
            "number": conn.id,  # the sort key within a node (removed before the answer leaves the server)
            "user_id": getattr(principal, "user_id", None),
            "name": getattr(principal, "name", None) or getattr(principal, "user_id", None),
            "role": getattr(principal, "role", None),
            "protocol": getattr(conn, "protocol", "y-websocket"),
            "ip": getattr(conn, "ip", None),
            "connected_at": iso(getattr(conn, "opened_at", None)),
            "may_write": conn.may_write,
        }

    def _disconnect(self, room: DirectoryRoom, user_id: str | None) -> int:
        closed = 0
        for conn in list(room.connections):
            if user_id is not None and getattr(getattr(conn, "principal", None), "user_id", None) != user_id:
                continue
            room.leave(conn)
            conn.close(CloseCode.DISCONNECTED_BY_ADMIN, DISCONNECT_REASON, flush=True)
            closed += 1
        if closed:
            log(logging.INFO, "sessions_disconnected", canvas=room.canvas_id, user=user_id, sessions=closed)
        return closed

    # -- inbound -----------------------------------------------------------------------------
    def _heard(self, node: str) -> bool:
        """Note that ``node`` is alive; True if it was not known."""
        new = node not in self.nodes
        self.nodes[node] = time.monotonic()
        return new

    def _on_admin(self, sender: str, payload: bytes) -> None:
        kind, body = payload[:1], payload[1:]
        if kind == GONE:
            self.nodes.pop(sender, None)
            return
        if self._heard(sender) and kind == HEARTBEAT:
            self._beat()  # a newcomer (or one back from an outage) learns of us at once
        if kind != QUERY:
            return
        try:
            query = orjson.loads(body)
            if not isinstance(query, dict) or not isinstance(query.get("id"), str):
                raise QueryError("a query is an object with an id")
            part = self.answer(str(query.get("what")), query)
        except (orjson.JSONDecodeError, QueryError, KeyError, TypeError) as exc:
            self.rejected += 1
            log(logging.WARNING, "admin_query_rejected", sender=sender, error=repr(exc)[:200])
            return
        self.pubsub.publish(self.reply_channel(sender), REPLY + orjson.dumps({"id": query["id"], **part}))

    def _on_reply(self, sender: str, payload: bytes) -> None:
        if payload[:1] != REPLY:
            return
        try:
            reply = orjson.loads(payload[1:])
        except orjson.JSONDecodeError:
            self.rejected += 1
            return
        self._heard(sender)
        query_id = reply.get("id") if isinstance(reply, dict) else None
        pending = self._pending.get(query_id) if isinstance(query_id, str) else None
        if pending is None:
            return  # late: the query already gave up on this process
        pending.answers[sender] = reply
        if pending.expected <= pending.answers.keys():
            pending.done.set()

    # -- locks after an outage ------------------------------------------------------------------
    async def refresh_locks(self) -> None:
        """Re-read the lock of every canvas loaded here (a lock message may have been lost in an outage);
        retried every LOCK_RETRY_SECONDS while the store fails."""
        while True:
            canvas_ids = list(self.rooms)
            if not canvas_ids:
                return
            try:
                locked = await asyncio.wait_for(self.store.locked_canvases(canvas_ids), self.store_timeout)
            except Exception as exc:
                self._lock_failures.failed(repr(exc))
                await asyncio.sleep(LOCK_RETRY_SECONDS)
                continue
            self._lock_failures.recovered()
            for canvas_id in canvas_ids:
                room = self.rooms.get(canvas_id)
                if room is not None:
                    room.set_locked(canvas_id in locked)
            return


def _limit(value: Any) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise QueryError(f"limit must be between 1 and {MAX_PAGE}")
    return value
