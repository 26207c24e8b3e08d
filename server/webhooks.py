"""Durable, signed webhooks: an outbox in the store, delivered at least once by leased claims.

The input side is ``WebhookPublisher``: ``publish(type, data)`` writes an event to the outbox now;
``prepare(type, data)`` builds the outbox rows for a storage call that writes them in its own
transaction (``store.delete_canvas(..., events=...)``, ``store.finish_job(..., events=...)``), after
which the caller says ``committed()``. So an event is durable before anything is attempted, and an
event that reports a change is stored if and only if the change is. ``Debouncer`` turns a stream of
notes (``canvas.changed``, ``canvas.saved``) into one event per canvas per quiet period.

The output side is ``WebhookService``'s claim loop: it leases due deliveries (Postgres ``FOR UPDATE
SKIP LOCKED``, SQLite ``BEGIN IMMEDIATE``; several processes never hold the same delivery at
once), POSTs each one signed per the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``) with at most ``concurrency`` in
flight, and records the outcome: delivered (2xx), retry with exponential backoff and full jitter,
or dead after ``max_attempts``. A process killed mid-attempt leaves a lease that expires; another
claim then retries it. Delivery is at least once: a receiver dedupes by ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import httpx
import orjson
import standardwebhooks

from canvashub.storage.base import WebhookDelivery, WebhookEvent, WebhookStore

from .isotime import iso
from .logs import FailureLog, log
from .metrics import Metrics
from .settings import WEBHOOK_EVENT_TYPES, WebhookEndpoint

USER_AGENT = "canvashub-webhooks/1"
MAX_ERROR_CHARS = 500  # of an attempt's error kept in the store
PRUNE_EVERY = 3600.0  # seconds between two prunes of old finished deliveries
PRUNE_BATCH = 1000
STOP_GRACE = 5.0  # seconds in-flight attempts get at shutdown before they are cut short (and retried later)


def new_message_id() -> str:
    """``msg_`` + 13 hex digits of milliseconds + 16 random hex digits: unique and time-ordered."""
    return f"msg_{int(time.time() * 1000):013x}{secrets.token_hex(8)}"


def envelope(event_type: str, data: dict[str, Any], at: float) -> dict[str, Any]:
    """The body every receiver gets: ``{"type", "timestamp", "data"}`` (the Standard Webhooks shape)."""
    return {"type": event_type, "timestamp": iso(at), "data": data}


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempts - 1))] after the ``attempts``-th failure."""
    return random.uniform(0.0, min(cap, base * 2 ** min(max(attempts - 1, 0), 60)))


class WebhookPublisher(Protocol):
    """What the rest of the server calls to emit webhook events (the narrow interface)."""

    def prepare(self, event_type: str, data: dict[str, Any]) -> list[WebhookEvent]:
        """The outbox rows for one event, for a storage call that writes them in its own transaction
        (empty when no endpoint wants this type: then nothing is written)."""

    def committed(self) -> None:
        """Rows from ``prepare`` were committed: deliver them now rather than at the next poll."""

    async def publish(self, event_type: str, data: dict[str, Any]) -> str | None:
        """Write one event to the outbox now; its ``webhook-id``, or None if no endpoint wants it."""


class WebhookService:
    """The outbox's writer (``WebhookPublisher``) and its delivery loop."""

    def __init__(
        self,
        store: WebhookStore,
        endpoints: Sequence[WebhookEndpoint],
        metrics: Metrics,
        *,
        max_attempts: int,
        timeout: float,
        retry_base: float,
        retry_max: float,
        concurrency: int,
        poll_interval: float,
        retention: float,
        store_timeout: float,
        owner_id: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.endpoints = {e.name: e for e in endpoints}
        self._signers = {e.name: standardwebhooks.Webhook(e.secret) for e in endpoints}
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.retention = retention
        self.store_timeout = store_timeout
        # A lease outlives one attempt (bounded by ``timeout``) and recording its outcome (bounded by the
        # store timeout): only a process that stalls longer than that can see its delivery taken over.
        self.lease_seconds = timeout + 2 * store_timeout + 5.0
        self.owner_id = owner_id or f"{os.uname().nodename}:{os.getpid()}:webhooks:{secrets.token_hex(3)}"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._next_due: float | None = None  # earliest retry this process scheduled (epoch seconds)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._claim_failures = FailureLog("webhook_claim")
        self._record_failures = FailureLog("webhook_record")
        self._receivers = {name: FailureLog(f"webhook_endpoint_{name}") for name in self.endpoints}

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    # -- input ---------------------------------------------------------------------------------
    def prepare(self, event_type: str, data: dict[str, Any]) -> list[WebhookEvent]:
        if event_type not in WEBHOOK_EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
        names = tuple(name for name, e in self.endpoints.items() if e.wants(event_type))
        if not names:
            return []
        at = time.time()
        return [WebhookEvent(new_message_id(), event_type, envelope(event_type, data, at), at, names)]

    def committed(self) -> None:
        self.metrics.webhook_events += 1
        self._wake.set()

    async def publish(self, event_type: str, data: dict[str, Any]) -> str | None:
        events = self.prepare(event_type, data)
        if not events:
            return None
        await asyncio.wait_for(self.store.add_webhook_events(events), self.store_timeout)
        self.committed()
        return events[0].id

    # -- delivery loop ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            return  # nothing to deliver to; deliveries of removed endpoints wait (and are dead-lettered later)
        self._client = httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            headers={"user-agent": USER_AGENT},
        )
        self._loop_task = asyncio.get_running_loop().create_task(self._claim_loop())
        log(logging.INFO, "webhooks_started", endpoints=sorted(self.endpoints), owner=self.owner_id)

    async def stop(self) -> None:
        """Stop claiming; give attempts in flight a short grace, then cut them short (their leases
        expire and they are retried, by this or another process: at least once)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._running:
            await asyncio.wait(list(self._running), timeout=min(STOP_GRACE, self.timeout))
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            free = self.concurrency - len(self._running)
            claimed: list[WebhookDelivery] = []
            if free > 0:
                try:
                    claimed = await asyncio.wait_for(
                        self.store.claim_webhook_deliveries(self.owner_id, free, self.lease_seconds),
                        self.store_timeout,
                    )
                    self._claim_failures.recovered()
                except Exception as exc:  # store down: try again at the next poll
                    self._claim_failures.failed(repr(exc))
            for delivery in claimed:
                task = loop.create_task(self._attempt(delivery))
                self._running.add(task)
                task.add_done_callback(self._attempt_done)
            if claimed and len(claimed) == free:
                continue  # there may be more due; slots free up as attempts end (they wake us)
            await self._maybe_prune()
            wait = self.poll_interval
            if self._next_due is not None:
                wait = min(wait, max(0.0, self._next_due - time.time()))
                self._next_due = None  # the claim after this wait takes it (or a later poll does)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a slot is free

    async def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            pruned = await asyncio.wait_for(
                self.store.prune_webhook_deliveries(now - self.retention, PRUNE_BATCH), self.store_timeout
            )
        except Exception as exc:
            log(logging.WARNING, "webhook_prune_failed", error=repr(exc))
            return
        if pruned:
            log(logging.INFO, "webhook_pruned", deliveries=pruned)
            if pruned == PRUNE_BATCH:
                self._last_prune = 0.0  # more to go: again at the next idle round

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        endpoint = self.endpoints.get(delivery.endpoint)
        if endpoint is None:  # removed from the configuration since the event was written
            await self._record(delivery, "dead", error="endpoint is no longer configured")
            return
        if delivery.attempts > self.max_attempts:  # the last allowed attempt was cut short (crash, stop)
            await self._record(delivery, "dead", error=f"gave up after {self.max_attempts} attempts")
            return
        status_code, error = await self._post(endpoint, delivery)
        receiver = self._receivers[endpoint.name]
        if status_code is not None and 200 <= status_code < 300:
            receiver.recovered(endpoint=endpoint.name)
            await self._record(delivery, "delivered", status_code=status_code)
            return
        receiver.failed(error or f"HTTP {status_code}", endpoint=endpoint.name, url=endpoint.url)
        if delivery.attempts >= self.max_attempts:
            log(
                logging.WARNING,
                "webhook_dead",
                endpoint=endpoint.name,
                webhook_id=delivery.event_id,
                event_type=delivery.event_type,
                attempts=delivery.attempts,
                error=error,
                status=status_code,
            )
            await self._record(delivery, "dead", status_code=status_code, error=error)
            return
        delay = backoff_delay(delivery.attempts, self.retry_base, self.retry_max)
        due = time.time() + delay
        if await self._record(delivery, "retry", status_code=status_code, error=error, next_attempt_at=due):
            self._next_due = due if self._next_due is None else min(self._next_due, due)

    async def _post(self, endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str | None]:
        """One signed POST: (status code or None, error text or None). The body is never read."""
        assert self._client is not None
        body = orjson.dumps(delivery.payload).decode()
        now = time.time()
        signature = self._signers[endpoint.name].sign(
            delivery.event_id, datetime.datetime.fromtimestamp(now, tz=datetime.UTC), body
        )
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signature,
        }
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.stream(
                    "POST", endpoint.url, content=body.encode(), headers=headers, timeout=self.timeout
                ) as response:
                    status = response.status_code
        except TimeoutError:
            return None, f"no response within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    async def _record(
        self,
        delivery: WebhookDelivery,
        outcome: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> bool:
        try:
            held = await asyncio.wait_for(
                self.store.record_webhook_attempt(
                    delivery.id,
                    self.owner_id,
                    outcome,
                    status_code=status_code,
                    error=None if error is None else error[:MAX_ERROR_CHARS],
                    next_attempt_at=next_attempt_at,
                ),
                self.store_timeout,
            )
            self._record_failures.recovered()
        except Exception as exc:  # the lease expires and the delivery is attempted again (at least once)
            self._record_failures.failed(repr(exc), delivery=delivery.id)
            return False
        self.metrics.webhook_attempts[outcome if held else "lease_lost"] += 1
        if not held:
            log(logging.WARNING, "webhook_lease_lost", delivery=delivery.id, webhook_id=delivery.event_id)
        elif outcome == "delivered":
            log(
                logging.INFO,
                "webhook_delivered",
                endpoint=delivery.endpoint,
                webhook_id=delivery.event_id,
                event_type=delivery.event_type,
                attempt=delivery.attempts,
                status=status_code,
            )
        return held


class Debouncer:
    """Notes per canvas become one event per canvas: sent ``wait`` seconds after the last note, and at
    most ``max_wait`` seconds after the first unsent one. What it carries: the canvas id, the changed
    element ids (up to ``max_elements``; ``elements_truncated`` past that), the users who changed it,
    the highest ``seq`` noted, and the first and last note times.

    Driven by whoever observes changes (the extension-hook framework): ``note`` is synchronous and
    never awaits; ``publish`` runs in a task (bounded: one per canvas at a time)."""

    def __init__(
        self,
        event_type: str,
        publish: Callable[[str, dict[str, Any]], Awaitable[object]],
        *,
        wait: float,
        max_wait: float,
        max_elements: int = 1000,
        max_users: int = 100,
    ) -> None:
        self.event_type = event_type
        self.publish = publish
        self.wait = wait
        self.max_wait = max(max_wait, wait)
        self.max_elements = max_elements
        self.max_users = max_users
        self._pending: dict[str, dict[str, Any]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._failures = FailureLog(f"webhook_debounce_{event_type.replace('.', '_')}")

    def note(
        self, canvas_id: str, *, elements: Iterable[str] = (), user: str | None = None, seq: int | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        now = time.time()
        state = self._pending.get(canvas_id)
        if state is None:
            state = self._pending[canvas_id] = {
                "first": now,
                "first_loop": loop.time(),
                "elements": set(),
                "truncated": False,
                "users": set(),
                "seq": None,
            }
        state["last"] = now
        for element in elements:
            if len(state["elements"]) >= self.max_elements:
                state["truncated"] = True
                break
            state["elements"].add(element)
        if user is not None and len(state["users"]) < self.max_users:
            state["users"].add(user)
        if seq is not None:
            state["seq"] = seq if state["seq"] is None else max(state["seq"], seq)
        fire_at = min(loop.time() + self.wait, state["first_loop"] + self.max_wait)
        timer = self._timers.pop(canvas_id, None)
        if timer is not None:
            timer.cancel()
        self._timers[canvas_id] = loop.call_at(fire_at, self._fire, canvas_id)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _fire(self, canvas_id: str) -> None:
        self._timers.pop(canvas_id, None)
        state = self._pending.pop(canvas_id, None)
        if state is None:
            return
        task = asyncio.get_running_loop().create_task(self._send(canvas_id, state))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, canvas_id: str, state: dict[str, Any]) -> None:
        data: dict[str, Any] = {
            "canvas_id": canvas_id,
            "elements": sorted(state["elements"]),
            "elements_truncated": state["truncated"],
            "users": sorted(state["users"]),
            "first_change_at": iso(state["first"]),
            "last_change_at": iso(state["last"]),
        }
        if state["seq"] is not None:
            data["seq"] = state["seq"]
        try:
            await self.publish(self.event_type, data)
            self._failures.recovered()
        except Exception as exc:  # the store is down: the notes are lost (they were never promised)
            self._failures.failed(repr(exc), canvas=canvas_id)

    async def flush(self) -> None:
        """Send everything pending now (at shutdown) and wait for the sends."""
        for canvas_id in list(self._pending):
            timer = self._timers.pop(canvas_id, None)
            if timer is not None:
                timer.cancel()
            self._fire(canvas_id)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


# -- payloads ------------------------------------------------------------------------------------
# Each event's ``data`` (the envelope is {"type", "timestamp", "data"}); docs/integrating.md lists them.


def canvas_deleted_data(canvas_id: str, user_id: str | None, role: str | None) -> dict[str, Any]:
    return {"canvas_id": canvas_id, "deleted_by": None if user_id is None else {"user_id": user_id, "role": role}}


def generation_data(
    job_id: str,
    canvas_id: str,
    generator: str,
    prompt: str,
    attempts: int,
    finished_at: float,
    result: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "canvas_id": canvas_id,
        "generation": {
            "id": job_id,
            "generator": generator,
            "prompt": prompt,
            "attempts": attempts,
            "finished_at": iso(finished_at),
        },
    }
    if result is not None:
        data["generation"]["result"] = {
            k: result[k] for k in ("asset_id", "src", "content_type", "element_id") if k in result
        }
    if error is not None:
        data["generation"]["error"] = {"type": error[0], "message": error[1]}
    return data


def session_data(
    canvas_id: str, session_id: str, user_id: str | None, role: str, protocol: str, reason: str | None = None
) -> dict[str, Any]:
    """``session.started`` / ``session.ended`` (``reason``: the close code's meaning, on end)."""
    data: dict[str, Any] = {
        "canvas_id": canvas_id,
        "session_id": session_id,
        "user_id": user_id,
        "role": role,
        "protocol": protocol,
    }
    if reason is not None:
        data["reason"] = reason
    return data
