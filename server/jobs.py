"""Background generations: a durable job queue in the store, leased workers, results put into the canvas.

Three cooperating parts, all talking through the store so that a worker can
run in this process or in ``canvashub worker`` (another process) unchanged:

* ``Worker`` claims jobs with a lease (Postgres: ``FOR UPDATE SKIP LOCKED``),
  runs the generator, heartbeats (renewing the lease, saving throttled
  progress, noticing cancellation), stores the output as an asset and finishes
  the job. Failures are retried with backoff up to ``max_attempts``; a worker
  that dies leaves a lease that expires, and another worker reclaims the job.
  A worker whose lease was taken over stops and never reports a result.
* ``JobWatcher`` (server only) follows job changes in the store and sends
  ``generation`` events to the opted-in sockets of canvases loaded here, and
  keeps the active jobs of loaded canvases so a (re)connecting socket gets
  their current state first.
* The watcher also applies results: each succeeded job's image element is
  written into the canvas through ``Hub.write`` (relayed, stored, in history)
  under an id derived from the job id, so applying it twice never duplicates
  it; ``succeeded`` is announced once that change is durable. With several
  server processes on one store, each result is claimed (``claim_results``,
  with a lease so a process that dies mid-way leaves it to another) and
  applied by one process; the others announce ``succeeded`` to their own
  sockets when they see the job marked applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from canvashub.crdt.edits import patch_element
from canvashub.crdt.room import Effects, RoomDocument
from canvashub.storage.base import (
    JOB_ACTIVE_STATUSES,
    JOB_TERMINAL_STATUSES,
    LEASE_EXPIRED,
    Job,
    JobStore,
    LeaseFailure,
    Store,
    WebhookEvent,
    lease_expired_message,
)

from .errors import CanvasLocked, CanvasTooLarge, Conflict, ServerError, UnprocessableBody, answer
from .generators.base import GenerationError, GenerationOutput, GenerationRequest, Generator
from .isotime import iso
from .logs import FailureLog, log
from .schemas import GENERATION_REQUEST, MAX_PARAMS_BYTES, SchemaViolation, check, contains_nul
from .webhooks import WebhookPublisher, generation_data

PROGRESS_EVENT_INTERVAL = 0.2  # at most 5 progress events per second per job
CHANGE_MARGIN = 2.0  # seconds the job watcher re-reads behind its cursor
RESULT_BATCH = 50  # results claimed per watcher round
MIN_RESULT_LEASE = 10.0  # seconds a process holds a claimed result before another may take it
APPLIED_MEMORY = 600.0  # seconds this process remembers the results it applied (not to announce them twice)


def new_job_id() -> str:
    """Time-ordered and unguessable: 13 hex digits of milliseconds, then 12 random hex digits."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(6)}"


def element_id_for(job_id: str) -> str:
    return f"gen-{job_id}"


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "canvas_id": job.canvas_id,
        "generator": job.generator,
        "prompt": job.prompt,
        "params": job.params,
        "status": job.status,
        "progress": round(job.progress, 4),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "error": None if job.error_type is None else {"type": job.error_type, "message": job.error_message},
        "result": job.result,
        "cancel_requested": job.cancel_requested,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


# Told of every job state this process causes: (job, new status, (error type, message) or None).
# The composition root sends it to metrics and to the extensions' ``generation`` hook.
StateListener = Callable[[Job, str, "tuple[str, str] | None"], None]


def _tell(listener: StateListener | None, job: Job, status: str, error: tuple[str, str] | None = None) -> None:
    if listener is not None:
        try:
            listener(job, status, error)
        except Exception as exc:  # a listener bug must not fail the job
            log(logging.ERROR, "job_state_listener_failed", job=job.id, error=repr(exc))


class Worker:
    """Claims and runs jobs, at most ``concurrency`` at a time."""

    def __init__(
        self,
        store: Store,
        generators: dict[str, Generator],
        *,
        concurrency: int,
        lease_seconds: float,
        poll_interval: float,
        retry_base: float,
        retry_max: float,
        worker_id: str | None = None,
        webhooks: WebhookPublisher | None = None,
        on_state: StateListener | None = None,
    ) -> None:
        self.store = store
        self.on_state = on_state
        # generation.succeeded / generation.failed go to the outbox with the job's terminal state
        self.webhooks = webhooks
        self.generators = generators
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self._running: set[asyncio.Task[None]] = set()
        self._nudge = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self.changed: asyncio.Event | None = None  # set on every state change (the in-process watcher listens)
        self._claim_failures = FailureLog("job_claim")
        self._heartbeat_failures = FailureLog("job_heartbeat")

    def _lease_failure(self, failed: list[tuple[Job, tuple[str, str]]]) -> LeaseFailure:
        """What a claim writes for a job it fails because the job's last lease expired: its
        ``generation.failed`` event (in the claim's transaction), noted in ``failed`` for after the commit."""

        def events(job: Job, now: float) -> list[WebhookEvent]:
            error = (LEASE_EXPIRED, lease_expired_message(job))
            failed.append((job, error))
            if self.webhooks is None:
                return []
            data = generation_data(job.id, job.canvas_id, job.generator, job.prompt, job.attempts, now, error=error)
            return self.webhooks.prepare("generation.failed", data)

        return events

    def nudge(self) -> None:
        """A job was just queued: look now instead of at the next poll."""
        self._nudge.set()

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._claim_loop())

    async def stop(self) -> None:
        self._stopping = True  # as well as the cancel, which a completing wait_for may swallow (3.11)
        self._nudge.set()
        tasks = ([self._loop_task] if self._loop_task else []) + list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_loop(self) -> None:
        while not self._stopping:
            job = None
            if len(self._running) < self.concurrency:
                try:
                    # Bounded by the lease: a claim cut short after it committed expires and is reclaimed.
                    failed: list[tuple[Job, tuple[str, str]]] = []
                    job = await asyncio.wait_for(
                        self.store.claim_job(
                            self.worker_id, self.lease_seconds, failed_events=self._lease_failure(failed)
                        ),
                        self.lease_seconds,
                    )
                    self._claim_failures.recovered()
                    if failed and self.webhooks is not None:
                        self.webhooks.committed()
                    for dead, error in failed:  # their last worker died: failed inside the claim
                        _tell(self.on_state, dead, "failed", error)
                except Exception as exc:  # store down: try again later
                    self._claim_failures.failed(repr(exc))
            if job is not None:
                task = asyncio.get_running_loop().create_task(self._run(job))
                self._running.add(task)
                task.add_done_callback(self._job_done)
                continue
            self._nudge.clear()
            try:
                await asyncio.wait_for(self._nudge.wait(), self.poll_interval)
            except TimeoutError:
                pass

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._nudge.set()  # a slot is free

    def _signal(self) -> None:
        if self.changed is not None:
            self.changed.set()

    async def _run(self, job: Job) -> None:
        log(
            logging.INFO, "job_started", job=job.id, canvas=job.canvas_id, generator=job.generator, attempt=job.attempts
        )
        _tell(self.on_state, job, "running")
        self._signal()
        generator = self.generators.get(job.generator)
        if generator is None:
            await self._finish(job, "failed", error=("invalid", f"unknown generator {job.generator!r}"))
            return
        progress = {"value": job.progress, "dirty": False}

        def report(value: float) -> None:
            progress["value"] = min(max(float(value), 0.0), 1.0)
            progress["dirty"] = True

        request = GenerationRequest(job.id, job.canvas_id, job.prompt, job.params)
        work = asyncio.get_running_loop().create_task(generator.generate(request, report))
        outcome = await self._supervise(job, work, progress)
        if outcome == "lease_lost":
            log(logging.WARNING, "job_lease_lost", job=job.id)
            return
        if outcome == "cancelled":
            await self._finish(job, "cancelled")
            return
        try:
            output: GenerationOutput = work.result()
        except GenerationError as exc:
            await self._failed(job, exc.error_type, str(exc), exc.retryable)
            return
        except Exception as exc:  # a generator bug: retry, it may be transient
            await self._failed(job, "internal", f"{type(exc).__name__}: {exc}", True)
            return
        await self._succeeded(job, output)

    async def _supervise(self, job: Job, work: asyncio.Task, progress: dict) -> str:
        """Heartbeat until the generator finishes; 'done', 'cancelled' or 'lease_lost'."""
        loop = asyncio.get_running_loop()
        renew_every = self.lease_seconds / 3
        last_renew = loop.time()
        try:
            while True:
                done, _ = await asyncio.wait([work], timeout=PROGRESS_EVENT_INTERVAL)
                if done:
                    return "done"
                now = loop.time()
                if not progress["dirty"] and now - last_renew < renew_every:
                    continue
                value = progress["value"] if progress["dirty"] else None
                progress["dirty"] = False
                try:
                    current = await self.store.heartbeat(job.id, self.worker_id, self.lease_seconds, value)
                    self._heartbeat_failures.recovered()
                except Exception as exc:  # store hiccup: keep working, the lease still has time
                    self._heartbeat_failures.failed(repr(exc), job=job.id)
                    continue
                last_renew = now
                if current is None:
                    work.cancel()
                    return "lease_lost"
                self._signal()
                if current.cancel_requested:
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    return "cancelled"
        except asyncio.CancelledError:
            work.cancel()
            raise

    async def _finish(
        self, job: Job, status: str, result: dict | None = None, error: tuple[str, str] | None = None
    ) -> None:
        now = time.time()
        events = []
        if self.webhooks is not None and status in ("succeeded", "failed"):
            events = self.webhooks.prepare(
                f"generation.{status}",
                generation_data(
                    job.id, job.canvas_id, job.generator, job.prompt, job.attempts, now, result=result, error=error
                ),
            )
        finished = await self.store.finish_job(
            job.id,
            self.worker_id,
            status,
            result=result,
            error_type=error[0] if error else None,
            error_message=error[1] if error else None,
            now=now,
            events=events,
        )
        if finished is not None and events and self.webhooks is not None:
            self.webhooks.committed()
        if finished is not None:
            _tell(self.on_state, job, status, error)
        log(
            logging.INFO if status != "failed" else logging.WARNING,
            "job_finished",
            job=job.id,
            status=status,
            error=error[0] if error else None,
            lease_lost=finished is None,
        )
        self._signal()

    async def _failed(self, job: Job, error_type: str, message: str, retryable: bool) -> None:
        if retryable and job.attempts < job.max_attempts:
            delay = random.uniform(0.5, 1.0) * min(self.retry_max, self.retry_base * 2 ** (job.attempts - 1))
            await self.store.retry_job(job.id, self.worker_id, time.time() + delay, error_type, message[:500])
            log(
                logging.WARNING,
                "job_retry",
                job=job.id,
                attempt=job.attempts,
                error=error_type,
                retry_in_ms=round(delay * 1000),
            )
            _tell(self.on_state, job, "queued", (error_type, message[:500]))
            self._signal()
            return
        await self._finish(job, "failed", error=(error_type, message[:500]))

    async def _succeeded(self, job: Job, output: GenerationOutput) -> None:
        asset_id = hashlib.sha256(output.data).hexdigest()[:32]
        await self.store.put_asset(asset_id, output.content_type, output.data)
        params = job.params
        result = {
            "asset_id": asset_id,
            "src": f"/assets/{asset_id}",
            "content_type": output.content_type,
            "element_id": element_id_for(job.id),
            "element": {
                "type": "image",
                "x": params.get("x", 40),
                "y": params.get("y", 40),
                "w": output.width,
                "h": output.height,
                "src": f"/assets/{asset_id}",
                "generation_id": job.id,
            },
        }
        await self._finish(job, "succeeded", result=result)


class LiveCanvases(Protocol):
    """What the job watcher needs of the canvases this process holds (the hub provides it)."""

    def is_loaded(self, canvas_id: str) -> bool: ...

    def send_event(self, canvas_id: str, event: dict[str, Any]) -> None:
        """Send a canvashub event to every socket on the canvas that opted in."""

    async def write(
        self, canvas_id: str, change: Callable[[RoomDocument], Effects], if_match: str | None = None, size: int = 0
    ) -> tuple[str, asyncio.Future[int] | None]:
        """Apply a server-side change to the canvas (loading it if needed): its ETag and commit future."""


class JobWatcher:
    """Follows job changes in the store; notifies loaded canvases; applies results into canvases."""

    def __init__(self, canvases: LiveCanvases, store: JobStore, poll_interval: float, store_timeout: float) -> None:
        self.canvases = canvases
        self.store = store
        self.poll_interval = poll_interval
        # A result's claim must outlast loading the canvas, writing the element and waiting for it to be
        # durable (each bounded by about one store timeout) and marking it applied.
        self.result_lease = max(MIN_RESULT_LEASE, 3 * store_timeout)
        self.store_timeout = store_timeout
        self.claimer_id = f"{os.uname().nodename}:{os.getpid()}:watcher:{secrets.token_hex(4)}"
        self._applied_here: dict[str, float] = {}  # job id -> when this process applied its result (monotonic)
        self.changed = asyncio.Event()
        self.active: dict[str, dict[str, Job]] = {}  # canvas -> job id -> latest active state (loaded canvases)
        self._sent: dict[str, tuple[str, float, float]] = {}  # job id -> (status, progress, when) last announced
        self._cursor = time.time() - 1.0
        self._seen: dict[str, float] = {}  # job id -> updated_at already observed
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = FailureLog("job_watch")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True  # as well as the cancel, which a completing wait_for may swallow (3.11)
            self.changed.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def seed(self, canvas_id: str) -> None:
        """A room is loading: remember its active jobs so a connecting socket hears about them first."""
        jobs = await self.store.list_active_jobs(canvas_id)
        known = self.active.setdefault(canvas_id, {})
        for job in jobs:
            if job.id not in known or known[job.id].updated_at <= job.updated_at:
                known[job.id] = job

    def forget(self, canvas_id: str) -> None:
        self.active.pop(canvas_id, None)

    def snapshot_events(self, canvas_id: str) -> list[dict[str, Any]]:
        """Current state of the canvas's active jobs, as the events a newcomer receives first."""
        return [generation_event(job) for job in self.active.get(canvas_id, {}).values()]

    async def _loop(self) -> None:
        while not self._stopping:
            self.changed.clear()
            try:
                # Bounded: a database that stops answering must not stall job events for good.
                await asyncio.wait_for(self._poll(), self.store_timeout)
                await asyncio.wait_for(self._apply_results(), self.result_lease)  # a cut-short claim expires
                self._failures.recovered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failed(repr(exc))
            try:
                await asyncio.wait_for(self.changed.wait(), self.poll_interval)
            except TimeoutError:
                pass

    async def _poll(self) -> None:
        # Re-read a margin behind the cursor: a change stamped just before the cursor may commit
        # after we read past it (several writers, clocks). (id, updated_at) pairs seen are skipped.
        since = self._cursor - CHANGE_MARGIN
        while True:
            jobs = await self.store.jobs_changed_since(since, 500)
            for job in jobs:
                if self._seen.get(job.id) != job.updated_at:
                    self._seen[job.id] = job.updated_at
                    self.observe(job)
            if jobs:
                since = jobs[-1].updated_at
                self._cursor = max(self._cursor, since)
            if len(jobs) < 500:
                break
        horizon = self._cursor - CHANGE_MARGIN
        if len(self._seen) > 1000:
            self._seen = {k: v for k, v in self._seen.items() if v >= horizon}

    def observe(self, job: Job) -> None:
        if not self.canvases.is_loaded(job.canvas_id):
            return
        known = self.active.setdefault(job.canvas_id, {})
        previous = known.get(job.id)
        if previous is not None and previous.updated_at > job.updated_at:
            return  # stale
        if job.status in JOB_ACTIVE_STATUSES:
            known[job.id] = job
        else:
            known.pop(job.id, None)
        if job.status == "succeeded":
            # The process that applies the result announces it (_apply_results), once the element is in
            # the canvas; every other process does when it sees the job marked applied.
            if job.result_applied and self._applied_here.pop(job.id, None) is None:
                result = job.result or {}
                self._announce(
                    job, {"element_id": result.get("element_id") or element_id_for(job.id), "src": result.get("src")}
                )
            return
        self._announce(job)

    def _announce(self, job: Job, extra: dict[str, Any] | None = None) -> None:
        status = event_status(job)
        now = time.monotonic()
        last = self._sent.get(job.id)
        if last is not None:
            if status == "progress" and last[0] == "progress":
                if job.progress <= last[1] or now - last[2] < PROGRESS_EVENT_INTERVAL:
                    return
            elif last[0] == status and status != "progress":
                return
        if status in JOB_TERMINAL_STATUSES:
            self._sent.pop(job.id, None)
        else:
            self._sent[job.id] = (status, job.progress, now)
        self.canvases.send_event(job.canvas_id, generation_event(job, extra))

    def _applied(self, job_id: str) -> None:
        """Remember that this process applied (or refused) the result, before it is marked applied."""
        now = time.monotonic()
        self._applied_here[job_id] = now
        if len(self._applied_here) > 1000:
            self._applied_here = {k: t for k, t in self._applied_here.items() if now - t < APPLIED_MEMORY}

    async def _apply_results(self) -> None:
        for job in await self.store.claim_results(self.claimer_id, RESULT_BATCH, self.result_lease):
            if job.result_claim_expires is not None and time.time() >= job.result_claim_expires:
                continue  # the batch took too long: the claim ran out; another process may be on it
            result = job.result or {}
            element = dict(result.get("element") or {})
            element_id = result.get("element_id") or element_id_for(job.id)
            try:
                _, done = await self.canvases.write(
                    job.canvas_id, element_patch(element_id, element), size=len(orjson.dumps(element))
                )
            except (CanvasTooLarge, CanvasLocked) as exc:  # the job succeeded but its element cannot be added
                log(logging.WARNING, "job_result_refused", job=job.id, canvas=job.canvas_id, reason=exc.reason)
                self._applied(job.id)
                await self.store.mark_result_applied(job.id)
                self._announce(job, {"element_id": None, "error": exc.reason})
                continue
            if done is not None:
                await done  # durable before we say so
            self._applied(job.id)
            await self.store.mark_result_applied(job.id)
            log(logging.INFO, "job_result_applied", job=job.id, canvas=job.canvas_id, element=element_id)
            self._announce(job, {"element_id": element_id, "src": result.get("src")})


def element_patch(element_id: str, fields: dict[str, Any]) -> Callable[[RoomDocument], Effects]:
    """The change that writes a generation's element into a canvas (one transaction)."""
    return lambda document: document.transact(lambda doc: patch_element(doc, element_id, fields))


def event_status(job: Job) -> str:
    if job.status == "running":
        return "progress" if job.progress > 0 else "started"
    return job.status


def generation_event(job: Job, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "generation", "status": event_status(job), "job": job_json(job)}
    if job.status == "failed":
        event["error_type"] = job.error_type
    if extra:
        event.update(extra)
    return event


JOB_ID = re.compile(r"[0-9a-f]{1,64}")  # what ``new_job_id`` makes (and any shorter hex id)


class InvalidJobRequest(UnprocessableBody):
    """A generation request of the wrong shape, or with params its generator would refuse."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, errors=errors or [])


class IdempotencyConflict(Conflict):
    """The idempotency key was used for a request with another generator, prompt or params."""


class JobService:
    """What the server exposes: create, look up, list and cancel jobs; runs the watcher (and workers)."""

    def __init__(
        self,
        canvases: LiveCanvases,
        store: Store,
        generators: dict[str, Generator],
        *,
        workers: int,
        lease_seconds: float,
        poll_interval: float,
        watch_interval: float,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        store_timeout: float,
        webhooks: WebhookPublisher | None = None,
        on_state: StateListener | None = None,
    ) -> None:
        self.store = store
        self.on_state = on_state
        self.generators = generators
        self.max_attempts = max_attempts
        self.watcher = JobWatcher(canvases, store, watch_interval, store_timeout)
        self.worker: Worker | None = None
        if workers > 0:
            self.worker = Worker(
                store,
                generators,
                concurrency=workers,
                lease_seconds=lease_seconds,
                poll_interval=poll_interval,
                retry_base=retry_base,
                retry_max=retry_max,
                webhooks=webhooks,
                on_state=on_state,
            )
            self.worker.changed = self.watcher.changed

    def start(self) -> None:
        self.watcher.start()
        if self.worker is not None:
            self.worker.start()

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await self.watcher.stop()

    def validate(self, body: Any) -> tuple[str, str, dict, str | None]:
        """Check a generation request against ``GENERATION_REQUEST``; raise ``InvalidJobRequest``."""
        try:
            check(GENERATION_REQUEST, body)
        except SchemaViolation as exc:
            raise InvalidJobRequest(str(exc), exc.errors) from None
        generator = body["generator"]
        if generator not in self.generators:
            raise InvalidJobRequest(
                f"unknown generator {generator!r}; available: {sorted(self.generators)}",
                [{"path": "generator", "message": "unknown generator"}],
            )
        if contains_nul(body):
            raise InvalidJobRequest("NUL characters are not accepted", [{"path": "", "message": "NUL character"}])
        params = body.get("params") or {}
        if len(orjson.dumps(params)) > MAX_PARAMS_BYTES:
            raise InvalidJobRequest(
                f"params must be at most {MAX_PARAMS_BYTES} bytes of JSON", [{"path": "params", "message": "too large"}]
            )
        params_schema = getattr(self.generators[generator], "params_schema", None)
        if params_schema:
            try:
                check(params_schema, params, at="params")
            except SchemaViolation as exc:
                raise InvalidJobRequest(str(exc), exc.errors) from None
        return generator, body.get("prompt", ""), params, body.get("idempotency_key")

    async def create(self, canvas_id: str, body: Any) -> tuple[Job, bool]:
        generator, prompt, params, key = self.validate(body)
        job, created = await self.store.create_job(
            new_job_id(), canvas_id, generator, prompt, params, key, self.max_attempts
        )
        if not created and (job.generator, job.prompt, job.params) != (generator, prompt, params):
            raise IdempotencyConflict(f"idempotency key {key!r} was used for a different request (generation {job.id})")
        if created:
            log(logging.INFO, "job_queued", job=job.id, canvas=canvas_id, generator=generator)
            _tell(self.on_state, job, "queued")
            self.watcher.observe(job)  # `queued` goes out now, before any worker can start it
            self.watcher.changed.set()
            if self.worker is not None:
                self.worker.nudge()
        return job, created

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.store.cancel_job(job_id)
        self.watcher.changed.set()
        if job is not None and job.status == "cancelled" and job.finished_at is not None:
            _tell(self.on_state, job, "cancelled")  # a queued job ends here; a running one when its worker stops
        return job


async def answer_request(service: JobService | None, canvas_id: str, request: Any) -> dict[str, Any]:
    """A request sent on the events channel (``[100, json]`` from an opted-in socket) and its answer.

    ``{"type": "generate", "request_id", "generator", "prompt", "params", "idempotency_key"}``,
    ``{"type": "cancel_generation", "request_id", "job_id"}``, ``{"type": "get_generation", "request_id", "job_id"}``
    → ``{"type": "response", "request_id", "ok": true, "job": {...}}`` or ``"ok": false, "error": {type, message}``.
    """
    request_id = request.get("request_id") if isinstance(request, dict) else None

    def fail(error_type: str, message: str) -> dict[str, Any]:
        return {
            "type": "response",
            "request_id": request_id,
            "ok": False,
            "error": {"type": error_type, "message": message},
        }

    if not isinstance(request, dict):
        return fail("invalid", "a request must be a JSON object")
    if service is None:
        return fail("unavailable", "generations are not enabled")
    kind = request.get("type")
    try:
        if kind == "generate":
            job, created = await service.create(canvas_id, request)
            return {"type": "response", "request_id": request_id, "ok": True, "created": created, "job": job_json(job)}
        if kind in ("cancel_generation", "get_generation"):
            job_id = request.get("job_id")
            if not isinstance(job_id, str):
                return fail("invalid", "job_id must be a string")
            if not JOB_ID.fullmatch(job_id):
                return fail("not_found", f"generation {job_id!r} does not exist on this canvas")
            found = await service.store.get_job(job_id)
            if (
                found is None or found.canvas_id != canvas_id
            ):  # checked before cancelling: a socket acts on its canvas only
                return fail("not_found", f"generation {job_id!r} does not exist on this canvas")
            job = found
            if kind == "cancel_generation":
                cancelled = await service.cancel(job_id)
                if cancelled is None:
                    return fail("not_found", f"generation {job_id!r} does not exist on this canvas")
                job = cancelled
            return {"type": "response", "request_id": request_id, "ok": True, "job": job_json(job)}
    except ServerError as exc:  # invalid request, idempotency conflict: as the error table names them
        return fail(answer(exc).error_type, exc.message)
    except TimeoutError:
        return fail("timeout", "storage did not answer in time")
    except Exception as exc:
        log(logging.WARNING, "event_request_failed", canvas=canvas_id, error=repr(exc))
        return fail("unavailable", "storage is unavailable, retry later")
    return fail("invalid", f"unknown request type {kind!r}")
