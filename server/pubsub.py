"""Pub/sub between canvashub processes: channels and byte messages, nothing about CRDTs.

One Protocol (``PubSub``), two implementations:

- ``MemoryPubSub`` on a ``MemoryBroker``: in-process, the default for a single process.
  Several instances on one broker behave like several nodes (tests use that).
- ``RedisPubSub``: Redis PUBLISH/SUBSCRIBE over two connections of its own (one publishes
  pipelined batches from a bounded queue, one is subscribed and read by a reader task).

Delivery is at most once. An outage drops messages (counted), so a caller that needs every
message (the hub, for CRDT updates) resyncs in its ``on_reconnect`` callback, which runs only
after every registered channel is subscribed again: nothing published after the callback
starts can be missed.

Wire format (Redis): ``node_id`` (NODE_ID_BYTES ASCII bytes) + payload, so a receiver drops
its own messages with one slice compare and never decodes anything else.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import math
import random
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .logs import log, logger

NODE_ID_BYTES = 16  # 8 random bytes as hex: collisions among a few hundred processes are not a concern

MessageHandler = Callable[[str, bytes], None]  # (sender node id, payload)
ReconnectCallback = Callable[[], None]


class PubSub(Protocol):
    node_id: str
    healthy: bool

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def subscribe(self, channel: str, handler: MessageHandler) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...
    def publish(self, channel: str, payload: bytes) -> bool: ...
    def on_reconnect(self, callback: ReconnectCallback) -> None: ...
    def status(self) -> dict[str, Any]: ...


def new_node_id() -> str:
    return secrets.token_hex(NODE_ID_BYTES // 2)


def _checked_node_id(node_id: str | None) -> str:
    if node_id is None:
        return new_node_id()
    if len(node_id) != NODE_ID_BYTES or not node_id.isascii():
        raise ValueError(f"node_id must be {NODE_ID_BYTES} ASCII characters, got {node_id!r}")
    return node_id


def _call(fn: Callable[..., None], *args: Any, event: str) -> None:
    """Run a caller's handler or callback; its failure is logged and never stops the caller's task.
    BaseException too: pycrdt panics derive from it (shared/NOTES.md)."""
    try:
        fn(*args)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        logger.error(event, exc_info=exc, extra={"fields": {"error": repr(exc)}})


# -- in-process ---------------------------------------------------------------------------------


class MemoryBroker:
    """Routes messages between the ``MemoryPubSub`` nodes that share it."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemoryPubSub]] = collections.defaultdict(set)

    def _add(self, channel: str, node: MemoryPubSub) -> None:
        self._subscribers[channel].add(node)

    def _remove(self, channel: str, node: MemoryPubSub) -> None:
        nodes = self._subscribers.get(channel)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._subscribers[channel]

    def _publish(self, sender: MemoryPubSub, channel: str, payload: bytes) -> None:
        for node in self._subscribers.get(channel, ()):
            if node is not sender:
                node._enqueue(sender.node_id, channel, payload)


class MemoryPubSub:
    """In-process pub/sub. Delivery is asynchronous (``call_soon``), so a handler never runs
    inside ``publish``; ``call_soon`` is FIFO, so order is kept per sender (and overall)."""

    def __init__(self, broker: MemoryBroker | None = None, *, node_id: str | None = None) -> None:
        self.node_id = _checked_node_id(node_id)
        self.healthy = False
        self._broker = broker if broker is not None else MemoryBroker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[str, MessageHandler] = {}
        self._dropped = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.healthy = True

    async def close(self) -> None:
        self.healthy = False
        for channel in list(self._handlers):
            self._broker._remove(channel, self)
        self._handlers.clear()

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._handlers[channel] = handler
        self._broker._add(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        if self._handlers.pop(channel, None) is not None:
            self._broker._remove(channel, self)

    def publish(self, channel: str, payload: bytes) -> bool:
        if not self.healthy:
            self._dropped += 1
            return False
        self._broker._publish(self, channel, bytes(payload))
        return True

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Accepted for the Protocol's sake: an in-process broker never goes away."""

    def status(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "healthy": self.healthy,
            "node_id": self.node_id,
            "channels": len(self._handlers),
            "queued": 0,
            "dropped": self._dropped,
            "reconnects": 0,
            "last_error": None,
        }

    def _enqueue(self, sender: str, channel: str, payload: bytes) -> None:
        if self._loop is not None and self.healthy:
            self._loop.call_soon(self._deliver, sender, channel, payload)

    def _deliver(self, sender: str, channel: str, payload: bytes) -> None:
        handler = self._handlers.get(channel)  # looked up now: nothing arrives after unsubscribe()
        if handler is not None:
            _call(handler, sender, payload, event="pubsub_handler_failed")


# -- Redis --------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _confirmed(waiters: list[asyncio.Future[bool]]) -> bool:
    """Wait for SUBSCRIBE confirmations without cancelling them if *this* caller is cancelled
    (another caller may be waiting for the same ones)."""
    await asyncio.wait(waiters)
    return all(not w.cancelled() and w.result() for w in waiters)


async def _disconnect(*conns: AbstractConnection) -> None:
    for conn in conns:
        try:
            await conn.disconnect(nowait=True)
        except Exception:  # an already broken socket: nothing left to close
            pass


class _SessionLost(Exception):
    """The current pair of Redis connections is unusable."""


class _Session:
    """One pair of connections (publisher, subscriber) and the tasks that use them.
    Any failure ends the whole session; ``RedisPubSub`` then starts a new one."""

    def __init__(self, pubsub: RedisPubSub, pub: AbstractConnection, sub: AbstractConnection) -> None:
        self.owner = pubsub
        self.pub = pub
        self.sub = sub
        self.lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.requested: set[bytes] = set()  # keys a SUBSCRIBE was sent for (and no UNSUBSCRIBE since)
        # One waiter per SUBSCRIBE sent, per key, in order: Redis confirms each in order.
        self.waiters: dict[bytes, collections.deque[asyncio.Future[bool]]] = collections.defaultdict(collections.deque)
        self.tasks: list[asyncio.Task[None]] = []
        self.last_read = asyncio.get_running_loop().time()

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro), name=name)
        self.tasks.append(task)

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
            self.fail(_SessionLost("task ended"))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never let a task die silently: its failure ends the session
            self.fail(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise

    def fail(self, exc: BaseException) -> None:
        if self.lost.done():
            return
        self.lost.set_result(exc)
        self.owner.healthy = False  # at once, so publish() refuses from this instant
        for queue in self.waiters.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result(False)
        self.waiters.clear()

    async def subscribe(self, keys: list[bytes]) -> bool:
        """Send one SUBSCRIBE for ``keys``; True once Redis confirmed all, False if the session died."""
        if self.lost.done():
            return False
        loop = asyncio.get_running_loop()
        waiters = []
        for key in keys:
            waiter = loop.create_future()
            self.waiters[key].append(waiter)
            waiters.append(waiter)
            self.requested.add(key)
        try:
            await self.send(self.sub, b"SUBSCRIBE", *keys)
        except Exception as exc:
            self.fail(exc)
            return False
        return await _confirmed(waiters)

    async def unsubscribe(self, key: bytes) -> None:
        self.requested.discard(key)
        if self.lost.done():
            return
        try:
            await self.send(self.sub, b"UNSUBSCRIBE", key)
        except Exception as exc:
            self.fail(exc)

    async def send(self, conn: AbstractConnection, *args: bytes) -> None:
        async with asyncio.timeout(self.owner._command_timeout):
            await conn.send_command(*args, check_health=False)

    async def read_loop(self) -> None:
        """The reader task: every reply on the subscribed connection comes through here, in order."""
        own = self.owner._node_bytes
        handlers = self.owner._handlers
        loop = asyncio.get_running_loop()
        while True:
            reply = await self.sub.read_response(timeout=math.inf)  # liveness is the watchdog's job
            self.last_read = loop.time()
            kind = reply[0]
            if kind == b"message":
                handler = handlers.get(reply[1])
                data = reply[2]
                if handler is None or len(data) < NODE_ID_BYTES or data[:NODE_ID_BYTES] == own:
                    continue
                _call(
                    handler,
                    data[:NODE_ID_BYTES].decode("ascii", "replace"),
                    data[NODE_ID_BYTES:],
                    event="pubsub_handler_failed",
                )
            elif kind == b"subscribe":
                queue = self.waiters.get(reply[1])
                if queue:
                    waiter = queue.popleft()
                    if not waiter.done():
                        waiter.set_result(True)
                    if not queue:
                        del self.waiters[reply[1]]
            # b"unsubscribe" and b"pong" need nothing beyond last_read

    async def watchdog(self, interval: float, timeout: float) -> None:
        """A subscribed connection is silent when idle: PING it, so a dead link is noticed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self.last_read < interval:
                continue
            sent_at = loop.time()
            await self.send(self.sub, b"PING")
            await asyncio.sleep(timeout)
            if self.last_read < sent_at:
                raise _SessionLost(f"no PONG within {timeout}s on the subscriber connection")

    async def publish_loop(self, interval: float, timeout: float) -> None:
        """The publisher task: drain the queue in pipelined batches, keeping order; PING when idle."""
        owner = self.owner
        queue = owner._queue
        wakeup = owner._wakeup
        while True:
            if not queue:
                wakeup.clear()
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    # that arrives as the event is set, and close() would hang.
                    async with asyncio.timeout(interval):
                        await wakeup.wait()
                except TimeoutError:
                    await self.send(self.pub, b"PING")
                    if await self.pub.read_response(timeout=timeout) is None:
                        raise _SessionLost(f"no PONG within {timeout}s on the publisher connection") from None
                    continue
            batch: list[tuple[bytes, bytes, bytes]] = []
            size = 0
            while queue and len(batch) < owner._batch_messages and size < owner._batch_bytes:
                key, data = queue.popleft()
                owner._queued_bytes -= len(data)
                batch.append((b"PUBLISH", key, data))
                size += len(data)
            owner._in_flight = len(batch)
            async with asyncio.timeout(owner._command_timeout):  # one deadline per batch, not per reply
                await self.pub.send_packed_command(self.pub.pack_commands(batch), check_health=False)
                for _ in batch:
                    await self.pub.read_response(timeout=math.inf)
            owner._in_flight = 0

    async def close(self) -> None:
        """Idempotent. Sockets first (that never suspends), so a cancellation while the tasks
        wind down cannot leave a connection open."""
        self.fail(_SessionLost("closed"))
        await _disconnect(self.pub, self.sub)
        pending = {task for task in self.tasks if not task.done()}
        while pending:  # cancel again if a library call swallowed the first cancellation
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)


class RedisPubSub:
    """Redis pub/sub with its own reconnect loop (capped exponential backoff with jitter).

    Outages never raise to callers: ``publish`` returns False and counts a drop, ``subscribe``
    registers the channel for the next connection. ``healthy`` is True only while both connections
    are up and every registered channel is subscribed.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "canvashub:",
        node_id: str | None = None,
        max_queue: int = 10_000,
        retry_max_delay: float = 2.0,
        max_queue_bytes: int = 64 * 1024 * 1024,
        connect_timeout: float = 2.0,
        ping_interval: float = 1.0,
        ping_timeout: float = 1.0,
        command_timeout: float = 5.0,
    ) -> None:
        self.node_id = _checked_node_id(node_id)
        self.healthy = False
        self._node_bytes = self.node_id.encode("ascii")
        self._prefix = prefix
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._retry_max_delay = retry_max_delay
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._command_timeout = command_timeout
        self._batch_messages = 1024
        self._batch_bytes = 4 * 1024 * 1024
        # The pool only parses the URL and builds connections: each session owns its two.
        # No library retries (ours is the only reconnect loop); RESP2 so replies are plain lists.
        # No socket_timeout: redis-py then sends through asyncio.wait_for, which on Python 3.11
        # can swallow a cancellation; every send and read here has an asyncio.timeout instead.
        self._pool = ConnectionPool.from_url(url, client_name=f"canvashub-{self.node_id}", protocol=2)
        if str(self._pool.connection_kwargs.get("protocol")) != "2":
            raise ValueError("RedisPubSub speaks RESP2: remove protocol= from the Redis URL")
        self._pool.connection_kwargs.update(  # over any the URL's query string set
            socket_connect_timeout=connect_timeout,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._handlers: dict[bytes, MessageHandler] = {}
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._callbacks: list[ReconnectCallback] = []
        self._session: _Session | None = None
        self._runner: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event | None = None
        self._closed = False
        self._dropped = 0
        self._reconnects = 0
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"RedisPubSub(node_id={self.node_id!r}, prefix={self._prefix!r}, healthy={self.healthy})"

    # -- public API ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (waiting at most about ``connect_timeout`` for the first attempt); if Redis is
        down, return anyway and keep retrying in the background."""
        if self._runner is not None or self._closed:
            return
        self._first_attempt = asyncio.Event()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"pubsub-{self.node_id}")
        await self._first_attempt.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.healthy = False
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._drop_queue()

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        key = self._key(channel)
        self._handlers[key] = handler
        session = self._session
        if session is None or not self.healthy or key in session.requested:
            # Down, or connecting (the connect step subscribes every registered key before it
            # reports healthy), or already subscribed (the new handler takes over).
            # A SUBSCRIBE still unconfirmed: wait for it like the caller that sent it.
            queue = session.waiters.get(key) if session is not None and self.healthy else None
            if queue:
                await _confirmed(list(queue))
            return
        await session.subscribe([key])

    async def unsubscribe(self, channel: str) -> None:
        key = self._key(channel)
        if self._handlers.pop(key, None) is None:
            return
        session = self._session
        if session is not None and key in session.requested:
            await session.unsubscribe(key)

    def publish(self, channel: str, payload: bytes) -> bool:
        if (
            not self.healthy
            or len(self._queue) >= self._max_queue
            or self._queued_bytes + len(payload) > self._max_queue_bytes
        ):
            self._dropped += 1
            return False
        data = self._node_bytes + payload
        self._queue.append((self._key(channel), data))
        self._queued_bytes += len(data)
        self._wakeup.set()
        return True

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        self._callbacks.append(callback)

    def status(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "healthy": self.healthy,
            "node_id": self.node_id,
            "channels": len(self._handlers),
            "queued": len(self._queue),
            "dropped": self._dropped,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
        }

    # -- connection lifecycle -----------------------------------------------------------------

    def _key(self, channel: str) -> bytes:
        return (self._prefix + channel).encode()

    def _drop_queue(self) -> None:
        self._dropped += len(self._queue) + self._in_flight  # in flight: unknown whether delivered
        self._queue.clear()
        self._queued_bytes = 0
        self._in_flight = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        connected_before = False
        down_since: float | None = None
        session: _Session | None = None
        try:
            while True:
                session = None
                try:
                    session = await self._connect()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._last_error = _describe(exc)
                    if down_since is None:
                        down_since = loop.time()
                        log(logging.WARNING, "pubsub_down", error=self._last_error, backend="redis")
                    else:
                        log(logging.DEBUG, "pubsub_connect_failed", error=self._last_error, attempt=attempt)
                    self._signal_first_attempt()
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                self.healthy = True
                up_since = loop.time()
                session.spawn(session.publish_loop(self._ping_interval, self._ping_timeout), "pubsub-publisher")
                session.spawn(session.watchdog(self._ping_interval, self._ping_timeout), "pubsub-watchdog")
                self._signal_first_attempt()
                if connected_before:
                    self._reconnects += 1
                    log(
                        logging.INFO,
                        "pubsub_up",
                        reconnects=self._reconnects,
                        down_seconds=round(loop.time() - (down_since or loop.time()), 3),
                    )
                    for callback in list(self._callbacks):
                        _call(callback, event="pubsub_reconnect_callback_failed")
                else:
                    log(logging.INFO, "pubsub_connected", backend="redis", node=self.node_id)
                connected_before = True
                down_since = None
                try:
                    lost = await session.lost
                finally:
                    self.healthy = False
                    self._session = None
                    self._drop_queue()
                    await session.close()
                self._last_error = _describe(lost)
                down_since = loop.time()
                log(logging.WARNING, "pubsub_down", error=self._last_error, backend="redis")
                # Reconnect at once after a session that lasted; back off if sessions keep dying
                # young (e.g. Redis dropping a subscriber over its output buffer limit).
                attempt = 0 if loop.time() - up_since >= 1.0 else attempt + 1
                if attempt:
                    await asyncio.sleep(self._backoff(attempt))
        finally:
            self.healthy = False
            self._signal_first_attempt()
            if session is not None:  # cancelled (close()) while a session was open or winding down
                await session.close()

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (so restarted Redis isn't hit by all nodes at once)."""
        delay = min(self._retry_max_delay, 0.05 * 2 ** min(attempt, 16))
        return random.uniform(delay / 2, delay)

    def _signal_first_attempt(self) -> None:
        if self._first_attempt is not None:
            self._first_attempt.set()

    async def _connect(self) -> _Session:
        """Open both connections and subscribe every registered channel; bounded by connect_timeout."""
        pub = self._pool.make_connection()
        sub = self._pool.make_connection()
        session: _Session | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                await pub.connect()  # one after the other: gather would leave one connecting
                await sub.connect()  # in the background when the other fails
                session = _Session(self, pub, sub)
                self._session = session
                session.spawn(session.read_loop(), "pubsub-reader")
                # Channels may be registered while we wait: loop until none is missing.
                while missing := [key for key in self._handlers if key not in session.requested]:
                    if not await session.subscribe(missing):
                        raise _SessionLost(_describe(session.lost.result()))
            return session
        except BaseException:
            self._session = None
            if session is not None:
                await session.close()
            else:
                await _disconnect(pub, sub)
            raise


_REDIS_OPTIONS = frozenset(inspect.signature(RedisPubSub.__init__).parameters) - {"self", "url"}
_MEMORY_OPTIONS = frozenset({"broker", "node_id"})


def make_pubsub(redis_url: str | None, **kw: Any) -> PubSub:
    """Redis when a URL is given, else in-process. Redis-only options are ignored without Redis,
    so the composition root can pass the same settings either way; unknown options raise."""
    unknown = set(kw) - _REDIS_OPTIONS - _MEMORY_OPTIONS
    if unknown:
        raise TypeError(f"unknown pub/sub options: {sorted(unknown)}")
    if redis_url:
        return RedisPubSub(redis_url, **{k: v for k, v in kw.items() if k in _REDIS_OPTIONS})
    return MemoryPubSub(**{k: v for k, v in kw.items() if k in _MEMORY_OPTIONS})
