"""Durable storage contracts: data shapes and four async protocols, one per concern.

``CanvasStore`` (update log and versioned snapshots), ``JobStore`` (durable background jobs
with leases), ``AssetStore`` (content-addressed binary outputs) and ``WebhookStore`` (the
webhook outbox: events and their deliveries, with leases) each have their own contract suite
in ``tests/``. One backend class may implement all four: ``Store`` names that union, which both
``SQLiteStore`` and ``PostgresStore`` are. Server parts ask for the narrowest protocol they use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class LoadedCanvas:
    """A canvas as stored: latest snapshot plus the log rows (seq, update) after it, ascending seq."""

    snapshot: bytes | None
    version: int
    updates: list[tuple[int, bytes]]
    updated_at: float | None
    locked: bool = False  # an administrator locked it read-only (``CanvasStore.set_canvas_lock``)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """Metadata of one retained snapshot version."""

    number: int
    created_at: float
    size: int


@dataclasses.dataclass(frozen=True)
class CanvasInfo:
    """One row of the canvas listing."""

    canvas_id: str
    version: int
    updated_at: float


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_ACTIVE_STATUSES = ("queued", "running")
JOB_TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclasses.dataclass(frozen=True)
class Job:
    """One durable background job ("generation"). Times are epoch seconds from the caller's clock."""

    id: str  # caller-chosen, time-ordered string (lexicographic order = creation order)
    canvas_id: str
    generator: str
    prompt: str
    params: dict[str, Any]  # JSON object
    status: str  # one of JOB_STATUSES
    progress: float  # 0..1
    attempts: int  # times claimed
    max_attempts: int
    error_type: str | None
    error_message: str | None
    result: dict[str, Any] | None  # JSON object, set on success
    idempotency_key: str | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    run_after: float  # not claimable before this time (retry backoff)
    lease_owner: str | None
    lease_expires: float | None
    result_applied: bool  # the server has put the result into the canvas
    # Which server process is putting the result into the canvas (``claim_results``), and until when
    # (epoch seconds); once that time has passed another process may claim the result.
    result_claimer: str | None = None
    result_claim_expires: float | None = None


JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))


@dataclasses.dataclass(frozen=True)
class Asset:
    """A stored binary output (e.g. a generated image)."""

    id: str
    content_type: str
    data: bytes
    created_at: float


WEBHOOK_DELIVERY_STATUSES = ("pending", "delivering", "delivered", "dead")
WEBHOOK_OUTCOMES = ("delivered", "retry", "dead")


@dataclasses.dataclass(frozen=True)
class WebhookEvent:
    """One event for the outbox. ``id`` is the ``webhook-id`` receivers dedupe by; ``payload`` is the
    JSON object sent as the body; ``endpoints`` are the names of the endpoints that get a delivery
    (the caller decides the fan-out; an event with no endpoint is not stored)."""

    id: str
    type: str
    payload: dict[str, Any]
    created_at: float
    endpoints: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """One event's delivery to one endpoint, with its event's type and payload."""

    id: int  # ascending in insertion order (the listing's cursor)
    endpoint: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    status: str  # one of WEBHOOK_DELIVERY_STATUSES
    attempts: int  # times claimed (an attempt cut short by a crash counts)
    next_attempt_at: float
    lease_owner: str | None
    lease_expires: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None


WebhookEventRows = list[tuple[tuple[str, str, str, float], list[str]]]


def webhook_event_rows(events: Sequence[WebhookEvent]) -> WebhookEventRows:
    """((id, type, payload JSON text, created_at), endpoint names) per event that has endpoints: checked
    and serialised before any transaction starts."""
    return [
        ((e.id, e.type, dump_json_object(e.payload, "webhook payload"), float(e.created_at)), list(e.endpoints))
        for e in events
        if e.endpoints
    ]


def webhook_attempt_status(outcome: str, next_attempt_at: float | None) -> tuple[str, float | None]:
    """(new status, next_attempt_at to store or None to keep it) for ``record_webhook_attempt``."""
    if outcome == "retry":
        if next_attempt_at is None:
            raise ValueError("a retry needs next_attempt_at")
        return "pending", float(next_attempt_at)
    if outcome in ("delivered", "dead"):
        return outcome, None
    raise ValueError(f"outcome must be one of {WEBHOOK_OUTCOMES}, not {outcome!r}")


def dump_json_object(value: Any, what: str) -> str:
    """Strict JSON text of a dict, accepted alike by every backend: no NaN/Infinity, and no NUL
    characters in strings (PostgreSQL's JSONB refuses them; SQLite would take them)."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")

    def has_nul(item: Any) -> bool:
        if isinstance(item, str):
            return "\x00" in item
        if isinstance(item, dict):
            return any(has_nul(k) or has_nul(v) for k, v in item.items())
        if isinstance(item, (list, tuple)):
            return any(has_nul(v) for v in item)
        return False

    if has_nul(value):
        raise ValueError(f"{what} must not contain NUL characters")
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def clamp_progress(value: float | None) -> float | None:
    """Progress clamped to 0..1; None (or NaN) means "leave it as it is"."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return min(max(value, 0.0), 1.0)


def check_final_status(status: str) -> None:
    if status not in JOB_TERMINAL_STATUSES:
        raise ValueError(f"a job can only finish as one of {JOB_TERMINAL_STATUSES}, not {status!r}")


LEASE_EXPIRED = "lease_expired"  # error_type of a job whose last lease expired with no attempts left


# Builds the webhook events of a job that a claim fails because its last lease expired (pure: called
# inside the claim's transaction, with the job as it was and the claim's ``now``).
LeaseFailure = Callable[[Job, float], Sequence[WebhookEvent]]


def lease_expired_message(job: Job) -> str:
    return f"the worker's lease expired on attempt {job.attempts} of {job.max_attempts}"


@runtime_checkable
class StoreLifecycle(Protocol):
    """Opening, closing and health: shared by every storage protocol."""

    async def open(self) -> None:
        """Connect and apply pending migrations (recorded in ``schema_migrations``)."""

    async def close(self) -> None:
        """Release connections/threads."""

    async def health(self) -> bool:
        """True if the backend answers a trivial query."""


@runtime_checkable
class CanvasStore(StoreLifecycle, Protocol):
    """Canvases: an append-only update log plus versioned snapshots (compare-and-swap on the version)."""

    async def append_updates(self, batch: list[tuple[str, bytes]]) -> list[int]:
        """Append (canvas_id, update) rows in one transaction; return assigned seqs in order."""

    async def load(self, canvas_id: str) -> LoadedCanvas | None:
        """Snapshot + remaining log rows, or None if the canvas does not exist."""

    async def compact(
        self,
        canvas_id: str,
        expected_version: int,
        snapshot: bytes,
        through_seq: int,
        keep_versions: int,
        record_version: bool = True,
    ) -> int | None:
        """Replace the snapshot if version == expected_version; return the new version or None on conflict.

        In the same transaction: delete log rows with seq <= ``through_seq``, record the snapshot
        as a history version (unless ``record_version`` is false, e.g. the content did not
        change) and keep only the newest ``keep_versions`` versions."""

    async def list_versions(self, canvas_id: str, before: int | None, limit: int) -> list[VersionInfo]:
        """Retained versions, newest first; ``before`` is an exclusive cursor on number."""

    async def get_version(self, canvas_id: str, number: int) -> bytes | None:
        """Snapshot bytes of one retained version."""

    async def list_canvases(self, after: str | None, limit: int) -> list[CanvasInfo]:
        """Canvases ordered by id; ``after`` is an exclusive cursor on id."""

    async def set_canvas_lock(self, canvas_id: str, locked: bool, now: float | None = None) -> bool:
        """Lock the canvas read-only (``locked``) or unlock it; True if the canvas exists (else nothing is
        stored). ``load`` reports the lock; deleting the canvas removes it. Idempotent."""

    async def locked_canvases(self, canvas_ids: Sequence[str]) -> set[str]:
        """Which of ``canvas_ids`` are locked (any number of ids; unknown ids are not locked)."""

    async def delete_canvas(self, canvas_id: str, events: Sequence[WebhookEvent] = ()) -> bool:
        """Remove canvas, log, versions and the canvas's jobs; True if the canvas existed.

        ``events`` (webhook outbox, see ``WebhookStore.add_webhook_events``) are written in the same
        transaction, and only if the canvas existed."""


@runtime_checkable
class JobStore(StoreLifecycle, Protocol):
    """Durable background jobs ("generations"): queue, leases, retries, results applied once.

    Every ``now`` defaults to the host's ``time.time()``; all job times are that clock's epoch
    seconds (never the database's clock), so callers that pass ``now`` control time completely."""

    async def create_job(
        self,
        job_id: str,
        canvas_id: str,
        generator: str,
        prompt: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        max_attempts: int,
        now: float | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job (run_after = now); return (job, True).

        If ``idempotency_key`` is not None and the canvas already has a job with that key, insert
        nothing and return (that job, False) -- also under concurrent creates. The canvas need not
        exist in the canvas table."""

    async def get_job(self, job_id: str) -> Job | None:
        """One job, or None."""

    async def list_jobs(self, canvas_id: str, before: str | None, limit: int) -> list[Job]:
        """A canvas's jobs, newest first (id descending); ``before`` is an exclusive cursor on id."""

    async def list_active_jobs(self, canvas_id: str) -> list[Job]:
        """A canvas's queued and running jobs, oldest first (id ascending)."""

    async def jobs_changed_since(self, since: float, limit: int) -> list[Job]:
        """Jobs with ``updated_at > since`` (strictly), ordered by (updated_at, id) ascending.

        Caveat for followers: a row whose updated_at equals the cursor but commits after the
        poll, or whose writer's clock lags another writer's, is not returned by a later poll with
        that cursor. A follower that must not miss changes should poll from ``cursor - margin``
        and drop rows it has already seen at the same (id, updated_at)."""

    async def claim_job(
        self,
        worker_id: str,
        lease_seconds: float,
        now: float | None = None,
        failed_events: LeaseFailure | None = None,
    ) -> Job | None:
        """Atomically lease one job, oldest run_after first, or None if nothing is claimable.

        Claimable: queued with run_after <= now and no cancel requested, or running with
        lease_expires < now (its worker died). The job becomes running, owned by ``worker_id``
        until now + lease_seconds, attempts + 1, progress 0, started_at set on its first claim.
        Expired running jobs that already used max_attempts become failed ('lease_expired'), with
        the webhook events ``failed_events(job, now)`` builds written in the same transaction, and
        expired ones with a cancel request become cancelled, instead of being returned."""

    async def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        progress: float | None,
        now: float | None = None,
    ) -> Job | None:
        """Extend the lease (to now + lease_seconds) of a running job ``worker_id`` owns, store
        ``progress`` if given (clamped to 0..1) and return the job (read its cancel_requested);
        None if the worker no longer holds the job."""

    async def finish_job(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        result: dict[str, Any] | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        now: float | None = None,
        events: Sequence[WebhookEvent] = (),
    ) -> Job | None:
        """Move a running job ``worker_id`` owns to succeeded, failed or cancelled: set result and
        error fields from the arguments, finished_at, progress 1.0 on success, clear the lease.
        None if the lease was lost (the caller must then not apply its result).

        ``events`` (webhook outbox) are written in the same transaction, and only if the job moved."""

    async def retry_job(
        self,
        job_id: str,
        worker_id: str,
        run_after: float,
        error_type: str,
        error_message: str,
        now: float | None = None,
    ) -> Job | None:
        """Put a running job ``worker_id`` owns back in the queue, claimable from ``run_after``,
        recording the error, progress 0, lease cleared. If a cancel was requested meanwhile the
        job becomes cancelled instead. None if the worker no longer holds the job."""

    async def cancel_job(self, job_id: str, now: float | None = None) -> Job | None:
        """Queued: cancelled at once. Running: cancel_requested (the worker sees it on its next
        heartbeat). Terminal: unchanged. Returns the job, or None if unknown."""

    async def claim_results(
        self, claimer: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[Job]:
        """Atomically claim up to ``limit`` results to apply, oldest first (id ascending).

        Claimable: succeeded, result not applied, and no live claim (never claimed, or
        result_claim_expires < now -- the claimer died or gave up). Each claimed job gets
        result_claimer = ``claimer`` and result_claim_expires = now + lease_seconds; updated_at is
        not touched (a claim is not a change clients see). Concurrent claimers, also in other
        processes, get disjoint sets. The claimer writes the result into the canvas, then calls
        ``mark_result_applied``; if it dies first, the result is claimable again after the lease."""

    async def mark_result_applied(self, job_id: str, now: float | None = None) -> None:
        """Record that the job's result is in the canvas, and bump updated_at to ``now`` so other
        processes following ``jobs_changed_since`` see it (if ``now`` is not after the current
        updated_at, e.g. clocks disagree, to updated_at + 1 ms instead: the change must always show
        up as a new (id, updated_at)). A job already marked, or unknown, is left unchanged."""

    async def unapplied_results(self, limit: int) -> list[Job]:
        """Succeeded jobs whose result is not applied yet (claimed or not), oldest first (id ascending).
        Read-only; whoever applies results must take them with ``claim_results``."""


@runtime_checkable
class AssetStore(StoreLifecycle, Protocol):
    """Content-addressed binary outputs (e.g. generated images)."""

    async def put_asset(self, asset_id: str, content_type: str, data: bytes, now: float | None = None) -> None:
        """Store an asset; storing an existing id again is a no-op (the first content wins)."""

    async def get_asset(self, asset_id: str) -> Asset | None:
        """One asset, or None."""


@runtime_checkable
class WebhookStore(StoreLifecycle, Protocol):
    """The webhook outbox: events, and one delivery per (event, endpoint) claimed with a lease.

    Times are the caller's epoch seconds (``now`` defaults to ``time.time()``), as for jobs."""

    async def add_webhook_events(self, events: Sequence[WebhookEvent]) -> None:
        """Store events and a pending delivery (due at the event's ``created_at``) per endpoint, in
        one transaction. An event id already stored, or an (event, endpoint) pair already present,
        is left as it is; an event with no endpoints is not stored."""

    async def claim_webhook_deliveries(
        self, owner: str, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[WebhookDelivery]:
        """Atomically lease up to ``limit`` deliveries, earliest next_attempt_at first.

        Claimable: pending with next_attempt_at <= now, or delivering with lease_expires < now (its
        owner died mid-attempt). Each becomes delivering, owned by ``owner`` until now +
        lease_seconds, attempts + 1. Concurrent claimers, also in other processes, get disjoint sets."""

    async def record_webhook_attempt(
        self,
        delivery_id: int,
        owner: str,
        outcome: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
        now: float | None = None,
    ) -> bool:
        """The result of an attempt by the lease holder: ``outcome`` "delivered" (delivered_at = now),
        "retry" (pending again, due at ``next_attempt_at``) or "dead" (no more attempts). Stores the
        status code and error, clears the lease. False (nothing changed) if ``owner`` no longer holds
        the delivery."""

    async def list_webhook_deliveries(
        self, before: int | None, limit: int, status: str | None = None, endpoint: str | None = None
    ) -> list[WebhookDelivery]:
        """Deliveries newest first (id descending), optionally of one status and/or one endpoint;
        ``before`` is an exclusive cursor on id."""

    async def prune_webhook_deliveries(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` delivered or dead deliveries last updated before ``finished_before``,
        and events left without deliveries; return the number of deliveries deleted."""


@runtime_checkable
class Store(CanvasStore, JobStore, AssetStore, WebhookStore, Protocol):
    """All four: what the embedded SQLite backend and the Postgres backend each implement."""
