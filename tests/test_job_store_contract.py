"""The ``JobStore`` contract (durable background jobs, "generations"), on SQLite and on PostgreSQL.

Time is simulated: every call passes an explicit ``now`` (epoch seconds), so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from canvashub.storage import migrations
from canvashub.storage.base import JOB_STATUSES, Job, JobStore

from .store_backends import WAIT, backend, store  # noqa: F401 (fixtures: every test runs on both backends)

T = 1_700_000_000.0  # a fixed "now"
LEASE = 30.0


async def _create(
    store,
    job_id: str,
    canvas: str = "canvas-a",
    *,
    key: str | None = None,
    now: float = T,
    max_attempts: int = 3,
    params: dict | None = None,
) -> Job:
    job, created = await store.create_job(
        job_id, canvas, "fake", f"prompt {job_id}", params or {"w": 64}, key, max_attempts, now=now
    )
    assert created
    return job


# --------------------------------------------------------------------------- create / get / list


async def test_is_a_job_store(store):
    """Both backends satisfy the JobStore protocol."""
    assert isinstance(store, JobStore)


async def test_create_and_get_round_trip(store):
    """A new job is queued with every field set as documented and reads back identically."""
    params = {"width": 512, "ratio": 1.5, "style": "ünïcode ✓", "tags": ["a", None, True], "nested": {"k": [1, 2]}}
    job, created = await store.create_job("0001", "canvas-a", "fake", "a cat", params, "key-1", 4, now=T)
    assert created is True
    assert isinstance(job, Job)
    assert job == Job(
        id="0001",
        canvas_id="canvas-a",
        generator="fake",
        prompt="a cat",
        params=params,
        status="queued",
        progress=0.0,
        attempts=0,
        max_attempts=4,
        error_type=None,
        error_message=None,
        result=None,
        idempotency_key="key-1",
        cancel_requested=False,
        created_at=T,
        updated_at=T,
        started_at=None,
        finished_at=None,
        run_after=T,
        lease_owner=None,
        lease_expires=None,
        result_applied=False,
    )
    assert isinstance(job.progress, float) and isinstance(job.created_at, float) and isinstance(job.run_after, float)
    assert await store.get_job("0001") == job
    assert await store.get_job("missing") is None


async def test_params_must_be_strict_json_objects(store):
    """params must be a dict of JSON values; NaN and NUL characters (which JSONB refuses) are refused
    on both backends, and no row is written."""
    with pytest.raises(TypeError):
        await store.create_job("0001", "c", "fake", "p", ["not", "a", "dict"], None, 3, now=T)
    with pytest.raises(ValueError):
        await store.create_job("0002", "c", "fake", "p", {"x": float("nan")}, None, 3, now=T)
    with pytest.raises(ValueError):
        await store.create_job("0003", "c", "fake", "p", {"x": ["ok", "nul\x00"]}, None, 3, now=T)
    with pytest.raises(ValueError):
        await store.create_job("0004", "c", "fake", "p", {"k\x00": 1}, None, 3, now=T)
    job, _ = await store.create_job("0005", "c", "fake", "p", {"backslash": "\\u0000 is fine"}, None, 3, now=T)
    assert job.params == {"backslash": "\\u0000 is fine"}
    assert [j.id for j in await store.list_jobs("c", None, 10)] == ["0005"]


async def test_list_jobs_newest_first_with_cursor(store):
    """list_jobs pages newest first (id descending) with an exclusive ``before`` cursor, per canvas."""
    ids = [f"{i:04d}" for i in range(1, 6)]
    for i, job_id in enumerate(ids):
        await _create(store, job_id, now=T + i)
    await _create(store, "0003-other", canvas="canvas-b")
    page = await store.list_jobs("canvas-a", None, 2)
    assert [j.id for j in page] == ["0005", "0004"]
    page = await store.list_jobs("canvas-a", page[-1].id, 2)
    assert [j.id for j in page] == ["0003", "0002"]
    page = await store.list_jobs("canvas-a", page[-1].id, 2)
    assert [j.id for j in page] == ["0001"]
    assert await store.list_jobs("canvas-a", "0001", 2) == []
    assert [j.id for j in await store.list_jobs("canvas-b", None, 10)] == ["0003-other"]
    assert await store.list_jobs("canvas-none", None, 10) == []


async def test_job_ids_order_bytewise(store):
    """Job ids order by bytes on both backends ("B" < "a"), so cursors agree with SQLite on Postgres."""
    for job_id in ["0a", "0B", "0_", "00"]:
        await _create(store, job_id)
    assert [j.id for j in await store.list_jobs("canvas-a", None, 10)] == ["0a", "0_", "0B", "00"]
    assert [j.id for j in await store.list_active_jobs("canvas-a")] == ["00", "0B", "0_", "0a"]


async def test_list_active_jobs_oldest_first(store):
    """list_active_jobs returns only queued and running jobs of the canvas, oldest first."""
    for job_id in ["0001", "0002", "0003", "0004"]:
        await _create(store, job_id)
    await _create(store, "0005", canvas="canvas-b")
    running = await store.claim_job("w1", LEASE, now=T)
    assert running.id == "0001"
    assert (await store.cancel_job("0002", now=T)).status == "cancelled"
    done = await store.claim_job("w1", LEASE, now=T)
    assert (await store.finish_job(done.id, "w1", "succeeded", result={}, now=T)).status == "succeeded"
    active = await store.list_active_jobs("canvas-a")
    assert [(j.id, j.status) for j in active] == [("0001", "running"), ("0004", "queued")]


# --------------------------------------------------------------------------- idempotency


async def test_idempotency_key_returns_the_existing_job(store):
    """A second create with the same (canvas, key) inserts nothing and returns the first job unchanged;
    the same key on another canvas, or no key at all, creates new jobs."""
    first = await _create(store, "0001", key="k", params={"v": 1})
    again, created = await store.create_job("0002", "canvas-a", "other", "different", {"v": 2}, "k", 9, now=T + 5)
    assert created is False and again == first
    assert await store.get_job("0002") is None
    other, created = await store.create_job("0003", "canvas-b", "fake", "p", {}, "k", 3, now=T)
    assert created is True and other.id == "0003"
    a, created_a = await store.create_job("0004", "canvas-a", "fake", "p", {}, None, 3, now=T)
    b, created_b = await store.create_job("0005", "canvas-a", "fake", "p", {}, None, 3, now=T)
    assert created_a and created_b and a.id != b.id
    assert [j.id for j in await store.list_jobs("canvas-a", None, 10)] == ["0005", "0004", "0001"]


async def test_idempotency_key_holds_after_the_job_finished(store):
    """The key still deduplicates once its job is terminal (the caller gets the finished job back)."""
    await _create(store, "0001", key="k")
    await store.cancel_job("0001", now=T)
    job, created = await store.create_job("0002", "canvas-a", "fake", "p", {}, "k", 3, now=T + 1)
    assert created is False and job.id == "0001" and job.status == "cancelled"


async def test_concurrent_creates_with_one_key_make_one_job(store):
    """20 concurrent creates with the same key: exactly one inserts, every caller gets that job."""
    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                store.create_job(f"{i:04d}", "canvas-a", "fake", "p", {"i": i}, "same-key", 3, now=T + i)
                for i in range(20)
            )
        ),
        WAIT,
    )
    assert sum(1 for _, created in results if created) == 1
    ids = {job.id for job, _ in results}
    assert len(ids) == 1
    (winner,) = [job for job, created in results if created]
    assert all(job == winner for job, _ in results)
    assert [j.id for j in await store.list_jobs("canvas-a", None, 100)] == [winner.id]


# --------------------------------------------------------------------------- claiming


async def test_claim_takes_the_oldest_due_job(store):
    """claim_job takes due jobs by run_after (then id), leasing each and counting the attempt; jobs
    not yet due are left alone; an empty queue gives None."""
    await _create(store, "0003", now=T - 30)
    await _create(store, "0001", now=T - 10)
    await _create(store, "0002", now=T - 20)
    await _create(store, "0004", now=T + 100)  # not due yet
    lease = 1000.0  # no lease expires during this test
    claimed = await store.claim_job("w1", lease, now=T)
    assert claimed.id == "0003"
    assert claimed.status == "running" and claimed.attempts == 1 and claimed.lease_owner == "w1"
    assert claimed.lease_expires == T + lease and claimed.started_at == T and claimed.updated_at == T
    assert claimed.finished_at is None and claimed.created_at == T - 30
    assert claimed == await store.get_job("0003")
    assert (await store.claim_job("w1", lease, now=T)).id == "0002"
    assert (await store.claim_job("w2", lease, now=T)).id == "0001"
    assert await store.claim_job("w2", lease, now=T) is None
    assert await store.claim_job("w2", lease, now=T + 99.5) is None
    assert (await store.claim_job("w2", lease, now=T + 100)).id == "0004"
    assert await store.claim_job("w2", lease, now=T + 100) is None


async def test_concurrent_claimers_take_each_job_once(store):
    """10 concurrent claimers on 5 due jobs: each job is claimed by exactly one of them."""
    ids = [f"{i:04d}" for i in range(5)]
    for i, job_id in enumerate(ids):
        await _create(store, job_id, now=T + i)
    results = await asyncio.wait_for(
        asyncio.gather(*(store.claim_job(f"w{i}", LEASE, now=T + 10) for i in range(10))), WAIT
    )
    claimed = [job for job in results if job is not None]
    assert sorted(job.id for job in claimed) == ids
    assert len({job.lease_owner for job in claimed}) == 5
    assert all(job.attempts == 1 and job.status == "running" for job in claimed)
    for job in claimed:
        assert (await store.get_job(job.id)).lease_owner == job.lease_owner


async def test_claimers_in_two_processes_take_each_job_once(backend, store):
    """Two stores on the same database (as two processes would have) racing 20 claims and 20 same-key
    creates: each job is claimed once and one job exists for the key."""
    other = await backend.open_store()
    stores = [store, other]
    ids = [f"{i:04d}" for i in range(8)]
    for job_id in ids:
        await _create(store, job_id)
    results = await asyncio.wait_for(
        asyncio.gather(*(stores[i % 2].claim_job(f"w{i}", LEASE, now=T) for i in range(20))), WAIT
    )
    assert sorted(job.id for job in results if job is not None) == ids
    created = await asyncio.wait_for(
        asyncio.gather(
            *(stores[i % 2].create_job(f"k{i:03d}", "canvas-k", "fake", "p", {}, "key", 3, now=T) for i in range(20))
        ),
        WAIT,
    )
    assert sum(1 for _, new in created if new) == 1 and len({job.id for job, _ in created}) == 1


async def test_expired_lease_is_reclaimed_and_the_old_worker_is_locked_out(store):
    """A running job whose lease expired goes to the next claimer (attempt 2, started_at kept,
    progress reset); the first worker's heartbeat, retry and finish then return None."""
    await _create(store, "0001")
    first = await store.claim_job("w1", LEASE, now=T)
    assert (await store.heartbeat("0001", "w1", LEASE, 0.6, now=T + 1)).progress == 0.6
    # Lease now runs to T + 1 + LEASE: not expired at that exact instant.
    assert await store.claim_job("w2", LEASE, now=T + 1 + LEASE) is None
    second = await store.claim_job("w2", LEASE, now=T + 1 + LEASE + 1)
    assert second.id == first.id
    assert second.attempts == 2 and second.lease_owner == "w2" and second.status == "running"
    assert second.lease_expires == T + 2 * LEASE + 2 and second.started_at == T and second.progress == 0.0
    assert await store.heartbeat("0001", "w1", LEASE, 0.9, now=T + LEASE + 3) is None
    assert await store.finish_job("0001", "w1", "succeeded", result={"x": 1}, now=T + LEASE + 3) is None
    assert await store.retry_job("0001", "w1", T + LEASE + 10, "boom", "boom", now=T + LEASE + 3) is None
    current = await store.get_job("0001")
    assert current == second  # the stale worker changed nothing
    assert (await store.heartbeat("0001", "w2", LEASE, None, now=T + LEASE + 4)).lease_owner == "w2"


async def test_late_heartbeat_by_the_owner_still_counts(store):
    """Until someone else reclaims it, a worker whose lease ran out still owns the job and may renew it."""
    await _create(store, "0001")
    await store.claim_job("w1", LEASE, now=T)
    renewed = await store.heartbeat("0001", "w1", LEASE, None, now=T + LEASE + 5)
    assert renewed is not None and renewed.lease_expires == T + 2 * LEASE + 5
    assert await store.claim_job("w2", LEASE, now=T + LEASE + 6) is None


async def test_reclaim_with_no_attempts_left_fails_the_job(store):
    """An expired lease on a job that used all its attempts fails it ('lease_expired') instead of
    handing it out, and the claimer goes on to the next claimable job."""
    await _create(store, "0001", max_attempts=2, now=T)
    assert (await store.claim_job("w1", LEASE, now=T)).attempts == 1
    assert (await store.claim_job("w2", LEASE, now=T + LEASE + 1)).attempts == 2
    await _create(store, "0002", now=T + 50)
    t = T + 3 * LEASE
    nxt = await store.claim_job("w3", LEASE, now=t)
    assert nxt.id == "0002"
    failed = await store.get_job("0001")
    assert failed.status == "failed" and failed.error_type == "lease_expired" and failed.error_message
    assert failed.finished_at == t and failed.updated_at == t and failed.attempts == 2
    assert failed.lease_owner is None and failed.lease_expires is None
    assert await store.claim_job("w4", LEASE, now=t + 10 * LEASE) == await store.get_job("0002")  # attempts left


async def test_exhausted_reclaims_all_fail_and_nothing_is_returned(store):
    """Several expired jobs without attempts left are all failed in one claim, which then finds nothing."""
    for job_id in ["0001", "0002", "0003"]:
        await _create(store, job_id, max_attempts=1)
        assert (await store.claim_job("w1", LEASE, now=T)).id == job_id
    assert await store.claim_job("w2", LEASE, now=T + LEASE + 1) is None
    for job_id in ["0001", "0002", "0003"]:
        assert (await store.get_job(job_id)).status == "failed"


# --------------------------------------------------------------------------- retry / finish / heartbeat


async def test_retry_requeues_with_backoff(store):
    """retry_job puts the job back with the error recorded and the lease cleared; it is not claimable
    before run_after and is claimable from it; success then clears the error."""
    await _create(store, "0001")
    await store.claim_job("w1", LEASE, now=T)
    await store.heartbeat("0001", "w1", LEASE, 0.4, now=T + 1)
    assert await store.retry_job("0001", "intruder", T + 50, "x", "x", now=T + 2) is None
    queued = await store.retry_job("0001", "w1", T + 50, "timeout", "took too long", now=T + 2)
    assert queued.status == "queued" and queued.run_after == T + 50 and queued.updated_at == T + 2
    assert queued.error_type == "timeout" and queued.error_message == "took too long"
    assert queued.lease_owner is None and queued.lease_expires is None and queued.progress == 0.0
    assert queued.attempts == 1 and queued.finished_at is None
    assert await store.claim_job("w2", LEASE, now=T + 49.999) is None
    again = await store.claim_job("w2", LEASE, now=T + 50)
    assert again.id == "0001" and again.attempts == 2 and again.started_at == T
    assert again.error_type == "timeout"  # the last error stays visible while retrying
    done = await store.finish_job("0001", "w2", "succeeded", result={"ok": True}, now=T + 60)
    assert done.error_type is None and done.error_message is None


async def test_finish_success_sets_result_and_progress(store):
    """finish_job(succeeded) stores the result, progress 1.0 and finished_at, and clears the lease;
    a second finish (no longer running) returns None."""
    await _create(store, "0001")
    await store.claim_job("w1", LEASE, now=T)
    result = {"asset_id": "abc", "src": "/assets/abc", "element": {"type": "image", "w": 512.5}}
    assert await store.finish_job("0001", "w2", "succeeded", result=result, now=T + 5) is None
    done = await store.finish_job("0001", "w1", "succeeded", result=result, now=T + 5)
    assert done.status == "succeeded" and done.result == result and done.progress == 1.0
    assert done.finished_at == T + 5 and done.updated_at == T + 5
    assert done.lease_owner is None and done.lease_expires is None and done.result_applied is False
    assert await store.get_job("0001") == done
    assert await store.finish_job("0001", "w1", "failed", error_type="x", now=T + 6) is None
    assert await store.claim_job("w3", LEASE, now=T + 10 * LEASE) is None


async def test_finish_failed_and_invalid_status(store):
    """finish_job(failed) records the error and keeps progress; a non-terminal status is refused."""
    await _create(store, "0001")
    await store.claim_job("w1", LEASE, now=T)
    await store.heartbeat("0001", "w1", LEASE, 0.3, now=T + 1)
    with pytest.raises(ValueError):
        await store.finish_job("0001", "w1", "queued", now=T + 2)
    failed = await store.finish_job("0001", "w1", "failed", error_type="invalid", error_message="bad prompt", now=T + 2)
    assert failed.status == "failed" and failed.progress == 0.3 and failed.result is None
    assert (failed.error_type, failed.error_message, failed.finished_at) == ("invalid", "bad prompt", T + 2)


async def test_heartbeat_extends_lease_and_clamps_progress(store):
    """heartbeat renews the lease from now, stores clamped progress (None keeps it) and bumps updated_at;
    it is None for a job that is not running or not owned."""
    await _create(store, "0001")
    assert await store.heartbeat("0001", "w1", LEASE, 0.5, now=T) is None  # queued, not owned
    await store.claim_job("w1", LEASE, now=T)
    beat = await store.heartbeat("0001", "w1", 60.0, 1.7, now=T + 10)
    assert beat.progress == 1.0 and beat.lease_expires == T + 70 and beat.updated_at == T + 10
    assert (await store.heartbeat("0001", "w1", LEASE, -3, now=T + 11)).progress == 0.0
    assert (await store.heartbeat("0001", "w1", LEASE, 0.25, now=T + 12)).progress == 0.25
    kept = await store.heartbeat("0001", "w1", LEASE, None, now=T + 13)
    assert kept.progress == 0.25 and kept.lease_expires == T + 13 + LEASE
    assert await store.heartbeat("0001", "w2", LEASE, 0.9, now=T + 14) is None
    assert await store.heartbeat("missing", "w1", LEASE, 0.9, now=T + 14) is None


# --------------------------------------------------------------------------- cancel


async def test_cancel_queued_job_is_immediate(store):
    """Cancelling a queued job makes it cancelled at once; it is never claimed; cancelling a terminal job
    changes nothing; an unknown job gives None."""
    await _create(store, "0001")
    cancelled = await store.cancel_job("0001", now=T + 1)
    assert cancelled.status == "cancelled" and cancelled.finished_at == T + 1 and cancelled.updated_at == T + 1
    assert await store.claim_job("w1", LEASE, now=T + 100) is None
    assert await store.cancel_job("0001", now=T + 2) == cancelled
    assert await store.cancel_job("missing", now=T) is None


async def test_cancel_running_job_is_requested(store):
    """Cancelling a running job only requests it: the worker's heartbeat shows cancel_requested and the
    worker finishes it as cancelled; cancelling again or after the end changes nothing."""
    await _create(store, "0001")
    await store.claim_job("w1", LEASE, now=T)
    requested = await store.cancel_job("0001", now=T + 1)
    assert requested.status == "running" and requested.cancel_requested is True
    assert requested.lease_owner == "w1" and requested.finished_at is None and requested.updated_at == T + 1
    assert await store.cancel_job("0001", now=T + 2) == requested
    beat = await store.heartbeat("0001", "w1", LEASE, 0.5, now=T + 3)
    assert beat.cancel_requested is True and beat.status == "running"
    done = await store.finish_job("0001", "w1", "cancelled", now=T + 4)
    assert done.status == "cancelled" and done.finished_at == T + 4 and done.lease_owner is None
    assert await store.cancel_job("0001", now=T + 5) == done


async def test_cancel_requested_job_is_never_requeued_or_reclaimed(store):
    """A cancel-requested job that its worker retries becomes cancelled (not queued); one whose worker
    died becomes cancelled when its lease expires instead of being handed to another worker."""
    await _create(store, "0001")
    await _create(store, "0002")
    await store.claim_job("w1", LEASE, now=T)
    await store.claim_job("w2", LEASE, now=T)
    await store.cancel_job("0001", now=T + 1)
    await store.cancel_job("0002", now=T + 1)
    retried = await store.retry_job("0001", "w1", T + 5, "flaky", "flaky", now=T + 2)
    assert retried.status == "cancelled" and retried.finished_at == T + 2 and retried.lease_owner is None
    assert await store.claim_job("w3", LEASE, now=T + LEASE + 1) is None
    dead = await store.get_job("0002")
    assert dead.status == "cancelled" and dead.finished_at == T + LEASE + 1 and dead.lease_owner is None
    assert dead.attempts == 1


# --------------------------------------------------------------------------- results applied / changes


async def _succeed(store, job_ids: list[str], now: float = T) -> None:
    """Create, claim and finish the jobs as succeeded (result {"n": job id}) at ``now``."""
    for job_id in job_ids:
        await _create(store, job_id, now=now)
    for _ in job_ids:
        job = await store.claim_job("worker", LEASE, now=now)
        assert (await store.finish_job(job.id, "worker", "succeeded", result={"n": job.id}, now=now)) is not None


async def test_unapplied_results_and_mark_applied(store):
    """unapplied_results lists succeeded jobs not yet applied, oldest first, up to limit;
    mark_result_applied removes a job from it and bumps updated_at to ``now``."""
    for job_id in ["0001", "0002", "0003", "0004"]:
        await _create(store, job_id)
    for job_id in ["0001", "0002", "0003"]:  # equal run_after: claimed by id
        assert (await store.claim_job("w1", LEASE, now=T)).id == job_id
    # Finish them in another order: "oldest first" is by id (creation), not by finish time.
    await store.finish_job("0003", "w1", "succeeded", result={"n": 3}, now=T + 1)
    await store.finish_job("0001", "w1", "succeeded", result={"n": 1}, now=T + 2)
    await store.finish_job("0002", "w1", "failed", error_type="x", now=T + 3)
    assert [j.id for j in await store.unapplied_results(10)] == ["0001", "0003"]
    assert [j.id for j in await store.unapplied_results(1)] == ["0001"]
    before = await store.get_job("0001")
    assert await store.mark_result_applied("0001", now=T + 10) is None
    after = await store.get_job("0001")
    assert after.result_applied is True and after.updated_at == T + 10
    assert dataclasses.replace(after, result_applied=False, updated_at=before.updated_at) == before
    assert [j.id for j in await store.unapplied_results(10)] == ["0003"]
    await store.mark_result_applied("0003", now=T + 11)
    await store.mark_result_applied("missing", now=T + 11)  # no error
    assert await store.unapplied_results(10) == []


async def test_mark_result_applied_shows_up_as_a_change(store):
    """Followers of jobs_changed_since see the mark: updated_at moves to ``now``, strictly forward even
    when ``now`` is not after it (clocks of two processes disagree); marking again changes nothing."""
    await _succeed(store, ["0001", "0002"], now=T + 5)
    assert await store.jobs_changed_since(T + 5, 100) == []
    await store.mark_result_applied("0001", now=T + 6)
    (changed,) = await store.jobs_changed_since(T + 5, 100)
    assert (changed.id, changed.result_applied, changed.updated_at, changed.status) == (
        "0001",
        True,
        T + 6,
        "succeeded",
    )
    # A marker whose clock is behind the worker's still moves updated_at forward.
    await store.mark_result_applied("0002", now=T + 1)
    late = await store.get_job("0002")
    assert late.result_applied is True and T + 5 < late.updated_at < T + 5.01
    assert [j.id for j in await store.jobs_changed_since(T + 5, 100)] == ["0002", "0001"]
    # Already applied: no new change (a second applier after a lost claim must not announce it again).
    await store.mark_result_applied("0001", now=T + 20)
    assert (await store.get_job("0001")).updated_at == T + 6
    assert (await store.get_job("0002")) == late


async def test_claim_results_takes_unapplied_results_oldest_first(store):
    """claim_results takes up to ``limit`` succeeded, unapplied, unclaimed jobs by id, recording the
    claimer and the claim's expiry without touching updated_at; jobs in other states are never claimed."""
    await _succeed(store, ["0003", "0001", "0005", "0002"])
    await _create(store, "0004")  # queued
    await _create(store, "0006")
    await store.claim_job("w1", LEASE, now=T)  # 0004 running
    await store.cancel_job("0006", now=T)
    await _create(store, "0007")
    await store.claim_job("w1", LEASE, now=T)
    await store.finish_job("0007", "w1", "failed", error_type="x", now=T)
    first = await store.claim_results("server-a", 2, 10.0, now=T + 1)
    assert [j.id for j in first] == ["0001", "0002"]
    for job in first:
        assert job.result_claimer == "server-a" and job.result_claim_expires == T + 11
        assert job.status == "succeeded" and job.result == {"n": job.id} and job.updated_at == T
        assert job.result_applied is False
        assert await store.get_job(job.id) == job
    second = await store.claim_results("server-b", 10, 10.0, now=T + 2)
    assert [(j.id, j.result_claimer) for j in second] == [("0003", "server-b"), ("0005", "server-b")]
    assert await store.claim_results("server-c", 10, 10.0, now=T + 3) == []
    assert await store.claim_results("server-c", 0, 10.0, now=T + 100) == []
    assert await store.jobs_changed_since(T, 100) == []  # claims are not changes clients see
    unclaimed = await store.get_job("0004")
    assert unclaimed.result_claimer is None and unclaimed.result_claim_expires is None


async def test_an_expired_result_claim_is_claimed_again(store):
    """A claim holds until result_claim_expires (inclusive); after that another claimer takes the result
    (its claimer dies before marking it applied), and the first claimer's claim is replaced."""
    await _succeed(store, ["0001", "0002"])
    assert [j.id for j in await store.claim_results("a", 1, 10.0, now=T)] == ["0001"]
    assert [j.id for j in await store.claim_results("b", 1, 10.0, now=T + 1)] == ["0002"]
    assert await store.claim_results("c", 10, 10.0, now=T + 10) == []  # 0001's claim runs to T + 10
    again = await store.claim_results("c", 10, 10.0, now=T + 10.5)
    assert [(j.id, j.result_claimer, j.result_claim_expires) for j in again] == [("0001", "c", T + 20.5)]
    assert [j.id for j in await store.claim_results("d", 10, 10.0, now=T + 11.5)] == ["0002"]
    assert (await store.get_job("0001")).result_claimer == "c"


async def test_an_applied_result_is_never_claimed(store):
    """Once marked applied (by its claimer, or by anyone) a result is never claimed again, whatever
    the time; results applied before they were ever claimed are not claimed either."""
    await _succeed(store, ["0001", "0002", "0003"])
    assert [j.id for j in await store.claim_results("a", 2, 10.0, now=T)] == ["0001", "0002"]
    await store.mark_result_applied("0001", now=T + 1)
    await store.mark_result_applied("0003", now=T + 1)  # never claimed
    assert await store.claim_results("b", 10, 10.0, now=T + 1) == []  # 0002's claim is live
    assert [j.id for j in await store.claim_results("b", 10, 10.0, now=T + 10.5)] == ["0002"]
    # Long after every claim expired only the unapplied one comes back.
    assert [j.id for j in await store.claim_results("c", 10, 10.0, now=T + 1_000_000)] == ["0002"]
    await store.mark_result_applied("0002", now=T + 1_000_001)
    assert await store.claim_results("d", 10, 10.0, now=T + 2_000_000) == []
    assert await store.unapplied_results(10) == []


async def test_concurrent_result_claimers_in_two_processes_get_disjoint_sets(backend, store):
    """20 concurrent claimers on two stores on the same database (as two server processes would have)
    racing for 30 results, 3 at most each: every result is claimed by exactly one of them."""
    other = await backend.open_store()
    stores = [store, other]
    ids = [f"{i:04d}" for i in range(30)]
    await _succeed(store, ids)
    results = await asyncio.wait_for(
        asyncio.gather(*(stores[i % 2].claim_results(f"c{i}", 3, 10.0, now=T + 1) for i in range(20))), WAIT
    )
    claimed = [job.id for batch in results for job in batch]
    assert sorted(claimed) == ids  # disjoint (no id twice) and covering
    for i, batch in enumerate(results):
        assert len(batch) <= 3 and all(job.result_claimer == f"c{i}" for job in batch)
        assert [job.id for job in batch] == sorted(job.id for job in batch)
        for job in batch:
            assert (await store.get_job(job.id)).result_claimer == f"c{i}"
    assert await store.claim_results("late", 100, 10.0, now=T + 2) == []
    # Once every claim expired, a second race again hands each result to exactly one claimer.
    again = await asyncio.wait_for(
        asyncio.gather(*(stores[i % 2].claim_results(f"d{i}", 30, 10.0, now=T + 20) for i in range(20))), WAIT
    )
    assert sorted(job.id for batch in again for job in batch) == ids


async def test_jobs_changed_since_is_strictly_after_the_cursor(store):
    """jobs_changed_since returns jobs with updated_at strictly greater than ``since``, ordered by
    (updated_at, id), up to limit: a follower advancing its cursor to the last updated_at never sees a
    row twice, and rows sharing that exact timestamp are not returned again (documented caveat)."""
    await _create(store, "0001", now=T)
    await _create(store, "0002", now=T + 1)
    await _create(store, "0003", now=T + 1)
    await _create(store, "0004", now=T + 2)
    assert [j.id for j in await store.jobs_changed_since(T - 1, 100)] == ["0001", "0002", "0003", "0004"]
    assert [j.id for j in await store.jobs_changed_since(T, 100)] == ["0002", "0003", "0004"]
    assert [j.id for j in await store.jobs_changed_since(T + 1, 100)] == ["0004"]
    assert await store.jobs_changed_since(T + 2, 100) == []
    page = await store.jobs_changed_since(T - 1, 2)
    assert [j.id for j in page] == ["0001", "0002"]
    # Every mutation bumps updated_at and so shows up again.
    await store.claim_job("w1", LEASE, now=T + 3)  # takes 0001
    await store.cancel_job("0004", now=T + 4)
    changed = await store.jobs_changed_since(T + 2, 100)
    assert [(j.id, j.status, j.updated_at) for j in changed] == [
        ("0001", "running", T + 3),
        ("0004", "cancelled", T + 4),
    ]
    await store.heartbeat("0001", "w1", LEASE, 0.5, now=T + 5)
    assert [(j.id, j.progress) for j in await store.jobs_changed_since(T + 4, 100)] == [("0001", 0.5)]
    await store.finish_job("0001", "w1", "succeeded", result={}, now=T + 6)
    assert [j.status for j in await store.jobs_changed_since(T + 5, 100)] == ["succeeded"]


# --------------------------------------------------------------------------- canvas deletion, persistence


async def test_delete_canvas_removes_its_jobs(store):
    """delete_canvas deletes the canvas's jobs (even if the canvas row never existed) and frees their
    idempotency keys; other canvases' jobs and assets stay."""
    await store.append_updates([("canvas-a", b"u")])
    await _create(store, "0001", key="k")
    await _create(store, "0002")
    await store.claim_job("w1", LEASE, now=T)
    await _create(store, "0003", canvas="canvas-b")
    await _create(store, "0004", canvas="never-stored")
    await store.put_asset("a1", "image/png", b"png", now=T)
    assert await store.delete_canvas("canvas-a") is True
    assert await store.get_job("0001") is None and await store.get_job("0002") is None
    assert await store.list_jobs("canvas-a", None, 10) == []
    assert await store.list_active_jobs("canvas-a") == []
    assert await store.delete_canvas("never-stored") is False
    assert await store.get_job("0004") is None
    assert (await store.get_job("0003")).canvas_id == "canvas-b"
    assert await store.get_asset("a1") is not None
    job, created = await store.create_job("0005", "canvas-a", "fake", "p", {}, "k", 3, now=T)
    assert created is True and job.id == "0005"


async def test_jobs_and_assets_survive_reopen(backend, store):
    """Jobs (in every state) and assets are durable across close and reopen."""
    await _create(store, "0001")
    await _create(store, "0002")
    claimed = await store.claim_job("w1", LEASE, now=T)
    await store.put_asset("a1", "image/png", b"\x00png", now=T)
    before = [await store.get_job("0001"), await store.get_job("0002")]
    await store.close()
    again = await backend.open_store()
    assert [await again.get_job("0001"), await again.get_job("0002")] == before
    assert (await again.get_asset("a1")).data == b"\x00png"
    assert (await again.heartbeat(claimed.id, "w1", LEASE, 0.5, now=T + 1)).progress == 0.5


async def test_jobs_migration_is_recorded(backend, store):
    """The jobs/assets migration and the result-claims one after it are recorded (SQLite 2, 3;
    Postgres 4, 5) and the statuses match JOB_STATUSES."""
    expected = [v for v, _ in (migrations.SQLITE if backend.kind == "sqlite" else migrations.POSTGRES)]
    rows = await backend.migration_rows()
    assert [v for v, _ in rows] == expected
    jobs = [2, 3] if backend.kind == "sqlite" else [4, 5]
    assert expected[expected.index(jobs[0]) : expected.index(jobs[0]) + 2] == jobs
    assert JOB_STATUSES == ("queued", "running", "succeeded", "failed", "cancelled")
