"""The ``WebhookStore`` contract (the webhook outbox), on SQLite and on PostgreSQL.

Time is simulated: every call passes an explicit ``now`` (epoch seconds), so nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from canvashub.storage.base import WebhookDelivery, WebhookEvent, WebhookStore

from .store_backends import WAIT, backend, store  # noqa: F401 (fixtures: every test runs on both backends)

T = 1_700_000_000.0
LEASE = 30.0


def _event(n: int, *, endpoints=("a",), kind="canvas.deleted", at: float = T) -> WebhookEvent:
    return WebhookEvent(
        id=f"msg_{n:04d}",
        type=kind,
        payload={"type": kind, "timestamp": "2023-11-14T22:13:20Z", "data": {"canvas_id": f"c{n}", "ü": [1, None]}},
        created_at=at,
        endpoints=tuple(endpoints),
    )


async def test_is_a_webhook_store(store):
    """Both backends satisfy the WebhookStore protocol."""
    assert isinstance(store, WebhookStore)


async def test_events_fan_out_to_one_pending_delivery_per_endpoint(store):
    """An event with two endpoints becomes two pending deliveries carrying its type and payload."""
    event = _event(1, endpoints=("a", "b"))
    await store.add_webhook_events([event, _event(2, endpoints=())])
    rows = await store.list_webhook_deliveries(None, 10)
    assert [(d.endpoint, d.event_id, d.status) for d in rows] == [
        ("b", "msg_0001", "pending"),
        ("a", "msg_0001", "pending"),
    ]
    first = rows[1]
    assert isinstance(first, WebhookDelivery)
    assert first.payload == event.payload and first.event_type == "canvas.deleted"
    assert (first.attempts, first.next_attempt_at, first.created_at, first.updated_at) == (0, T, T, T)
    assert (first.lease_owner, first.lease_expires, first.last_status_code, first.last_error) == (None,) * 4
    assert first.delivered_at is None


async def test_adding_an_event_twice_changes_nothing(store):
    """An event id already stored is left as it is (a retried write does not deliver twice)."""
    await store.add_webhook_events([_event(1)])
    await store.add_webhook_events([_event(1), _event(1)])
    assert len(await store.list_webhook_deliveries(None, 10)) == 1


async def test_claim_leases_due_deliveries_earliest_first(store):
    """Claims take due deliveries only, earliest first, and count the attempt."""
    await store.add_webhook_events([_event(1, at=T + 5), _event(2, at=T), _event(3, at=T + 100)])
    claimed = await store.claim_webhook_deliveries("w1", 10, 1000.0, now=T + 10)
    assert [d.event_id for d in claimed] == ["msg_0002", "msg_0001"]
    for d in claimed:
        assert (d.status, d.attempts, d.lease_owner, d.lease_expires) == ("delivering", 1, "w1", T + 10 + 1000.0)
    assert await store.claim_webhook_deliveries("w2", 10, LEASE, now=T + 10) == []
    one = await store.claim_webhook_deliveries("w2", 1, LEASE, now=T + 200)
    assert [d.event_id for d in one] == ["msg_0003"]
    assert await store.claim_webhook_deliveries("w2", 0, LEASE, now=T + 200) == []


async def test_claim_respects_the_limit_and_oldest_first(store):
    """``limit`` caps a claim; the earliest due come first."""
    await store.add_webhook_events([_event(n, at=T + n) for n in range(5)])
    claimed = await store.claim_webhook_deliveries("w", 2, LEASE, now=T + 10)
    assert [d.event_id for d in claimed] == ["msg_0000", "msg_0001"]


async def test_expired_lease_is_claimed_again(store):
    """A delivery whose owner died (lease expired) is claimed by another, attempts counting on."""
    await store.add_webhook_events([_event(1)])
    [first] = await store.claim_webhook_deliveries("dead", 1, LEASE, now=T)
    assert await store.claim_webhook_deliveries("w2", 1, LEASE, now=T + LEASE - 1) == []
    [again] = await store.claim_webhook_deliveries("w2", 1, LEASE, now=T + LEASE + 1)
    assert again.id == first.id and again.attempts == 2 and again.lease_owner == "w2"
    # The first owner comes back too late: its result is refused.
    assert await store.record_webhook_attempt(first.id, "dead", "delivered", status_code=200, now=T + 40) is False
    assert await store.record_webhook_attempt(again.id, "w2", "delivered", status_code=204, now=T + 41) is True


async def test_record_delivered_retry_and_dead(store):
    """The three outcomes: delivered (done), retry (pending until t), dead (never again)."""
    await store.add_webhook_events([_event(1), _event(2), _event(3)])
    a, b, c = await store.claim_webhook_deliveries("w", 3, LEASE, now=T)
    assert await store.record_webhook_attempt(a.id, "w", "delivered", status_code=200, now=T + 1)
    assert await store.record_webhook_attempt(
        b.id, "w", "retry", status_code=503, error="HTTP 503", next_attempt_at=T + 60, now=T + 1
    )
    assert await store.record_webhook_attempt(c.id, "w", "dead", error="ConnectError('refused')", now=T + 1)
    by_id = {d.id: d for d in await store.list_webhook_deliveries(None, 10)}
    assert (by_id[a.id].status, by_id[a.id].delivered_at, by_id[a.id].last_status_code) == ("delivered", T + 1, 200)
    assert by_id[a.id].lease_owner is None and by_id[a.id].lease_expires is None
    assert (by_id[b.id].status, by_id[b.id].next_attempt_at, by_id[b.id].last_error) == ("pending", T + 60, "HTTP 503")
    assert (by_id[c.id].status, by_id[c.id].last_status_code, by_id[c.id].updated_at) == ("dead", None, T + 1)
    assert await store.claim_webhook_deliveries("w", 10, LEASE, now=T + 59) == []
    [retried] = await store.claim_webhook_deliveries("w", 10, LEASE, now=T + 60)
    assert retried.id == b.id and retried.attempts == 2
    # Recording twice: the lease is gone after the first.
    assert await store.record_webhook_attempt(a.id, "w", "delivered", status_code=200, now=T + 2) is False
    with pytest.raises(ValueError):
        await store.record_webhook_attempt(retried.id, "w", "retry", now=T + 61)
    with pytest.raises(ValueError):
        await store.record_webhook_attempt(retried.id, "w", "lost", now=T + 61)


async def test_concurrent_claims_are_disjoint(backend):
    """Claimers on separate connections (as separate processes would be) never get the same delivery."""
    stores = [await backend.open_store() for _ in range(3)]
    await stores[0].add_webhook_events([_event(n) for n in range(60)])

    async def drain(s, owner: str) -> list[int]:
        got: list[int] = []
        while batch := await s.claim_webhook_deliveries(owner, 4, LEASE, now=T):
            got.extend(d.id for d in batch)
        return got

    results = await asyncio.wait_for(asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate(stores))), WAIT)
    every = [i for r in results for i in r]
    assert len(every) == 60 and len(set(every)) == 60


async def test_listing_is_cursor_paginated_and_filtered(store):
    """Newest first; ``before`` pages; status and endpoint filters combine."""
    await store.add_webhook_events([_event(n, endpoints=("a", "b")) for n in range(5)])
    page1 = await store.list_webhook_deliveries(None, 4)
    page2 = await store.list_webhook_deliveries(page1[-1].id, 4)
    page3 = await store.list_webhook_deliveries(page2[-1].id, 4)
    ids = [d.id for d in page1 + page2 + page3]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 10 and len(page3) == 2
    only_a = await store.list_webhook_deliveries(None, 100, endpoint="a")
    assert len(only_a) == 5 and {d.endpoint for d in only_a} == {"a"}
    claimed = await store.claim_webhook_deliveries("w", 3, LEASE, now=T)
    for d in claimed:
        await store.record_webhook_attempt(d.id, "w", "dead", error="x", now=T)
    dead = await store.list_webhook_deliveries(None, 100, status="dead")
    assert {d.id for d in dead} == {d.id for d in claimed}
    dead_a = await store.list_webhook_deliveries(None, 100, status="dead", endpoint="a")
    assert {d.id for d in dead_a} == {d.id for d in claimed if d.endpoint == "a"}
    assert await store.list_webhook_deliveries(None, 100, status="delivered") == []


async def test_delete_canvas_writes_its_events_in_the_same_transaction(store):
    """``delete_canvas(events=...)`` stores the events with the delete, and none for a missing canvas."""
    await store.append_updates([("gone", b"\x00\x00")])
    assert await store.delete_canvas("gone", events=[_event(1)]) is True
    assert await store.delete_canvas("never", events=[_event(2)]) is False
    assert [d.event_id for d in await store.list_webhook_deliveries(None, 10)] == ["msg_0001"]
    assert await store.load("gone") is None


async def test_failed_payload_writes_neither_the_delete_nor_the_event(store):
    """An event that cannot be stored is refused before the transaction: the canvas stays."""
    await store.append_updates([("kept", b"\x00\x00")])
    bad = WebhookEvent("msg_bad", "canvas.deleted", {"bad": "\x00"}, T, ("a",))
    with pytest.raises(ValueError):
        await store.delete_canvas("kept", events=[bad])
    assert await store.load("kept") is not None
    assert await store.list_webhook_deliveries(None, 10) == []


async def test_finish_job_writes_its_events_only_when_the_job_moves(store):
    """``finish_job(events=...)`` stores them with the terminal state; a lost lease stores nothing."""
    await store.create_job("j1", "c", "fake", "p", {}, None, 3, now=T)
    job = await store.claim_job("worker", LEASE, now=T)
    assert job is not None
    assert await store.finish_job("j1", "other", "failed", events=[_event(1)], now=T + 1) is None
    assert await store.list_webhook_deliveries(None, 10) == []
    done = await store.finish_job("j1", "worker", "succeeded", result={"ok": True}, events=[_event(2)], now=T + 1)
    assert done is not None and done.status == "succeeded"
    assert [d.event_id for d in await store.list_webhook_deliveries(None, 10)] == ["msg_0002"]


async def test_a_claim_that_fails_a_dead_workers_job_writes_its_events(store):
    """A claim that marks a job failed (its last lease expired) writes ``failed_events`` in its transaction."""
    await store.create_job("j1", "c", "fake", "p", {}, None, 1, now=T)
    assert await store.claim_job("worker", LEASE, now=T) is not None  # attempt 1 of 1; the worker dies
    built: list[tuple[str, float]] = []

    def events(job, now):
        built.append((job.id, now))
        return [_event(7)]

    assert await store.claim_job("other", LEASE, now=T + LEASE + 1, failed_events=events) is None
    assert built == [("j1", T + LEASE + 1)]
    job = await store.get_job("j1")
    assert job is not None and job.status == "failed" and job.error_type == "lease_expired"
    assert [d.event_id for d in await store.list_webhook_deliveries(None, 10)] == ["msg_0007"]
    assert await store.claim_job("other", LEASE, now=T + 2 * LEASE, failed_events=events) is None
    assert len(built) == 1  # nothing else failed: nothing else built


async def test_prune_removes_old_finished_deliveries_and_their_events(store):
    """Delivered and dead deliveries older than the horizon go, with events left without deliveries."""
    await store.add_webhook_events([_event(1), _event(2), _event(3, endpoints=("a", "b"))])
    claimed = {d.event_id + d.endpoint: d for d in await store.claim_webhook_deliveries("w", 10, LEASE, now=T)}
    await store.record_webhook_attempt(claimed["msg_0001a"].id, "w", "delivered", status_code=200, now=T)
    await store.record_webhook_attempt(claimed["msg_0002a"].id, "w", "dead", error="x", now=T + 100)
    await store.record_webhook_attempt(claimed["msg_0003a"].id, "w", "delivered", status_code=200, now=T)
    await store.record_webhook_attempt(claimed["msg_0003b"].id, "w", "retry", error="x", next_attempt_at=T + 1, now=T)
    assert await store.prune_webhook_deliveries(T + 50, 100) == 2
    left = {(d.event_id, d.endpoint) for d in await store.list_webhook_deliveries(None, 10)}
    assert left == {("msg_0002", "a"), ("msg_0003", "b")}
    # msg_0001's event row went with its last delivery: adding it again delivers it again.
    await store.add_webhook_events([_event(1)])
    assert len(await store.list_webhook_deliveries(None, 10, endpoint="a")) == 2


async def test_outbox_migration_is_recorded(backend, store):
    """The outbox migration (SQLite 4, Postgres 6) is recorded after the job migrations."""
    from canvashub.storage import migrations

    expected = [v for v, _ in (migrations.SQLITE if backend.kind == "sqlite" else migrations.POSTGRES)]
    assert [v for v, _ in await backend.migration_rows()] == expected
    assert (4 if backend.kind == "sqlite" else 6) in expected
