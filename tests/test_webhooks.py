"""Durable signed webhooks with real parts: a real HTTP receiver verifying Standard Webhooks signatures,
live servers on both stores, ``canvashub serve`` killed with SIGKILL, and three processes on Postgres
and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time

import httpx
import pytest

from canvashub.server.auth import mint_token
from canvashub.server.settings import Settings, SettingsError, parse_webhook_endpoints
from canvashub.server.webhooks import Debouncer, backoff_delay

from .support import free_port, metric_value, wait_until
from .test_cli import assert_refused, run_cli, serve_args
from .test_scale_out import redis_process, start_cluster  # noqa: F401 (fixture)
from .webhook_receiver import Receiver, new_secret
from .wire import WireClient, key_updates

pytestmark = pytest.mark.timeout(180)

FAST = dict(
    webhook_poll_interval=0.1,
    webhook_retry_base=0.05,
    webhook_retry_max=0.3,
    webhook_timeout=2.0,
    job_watch_interval=0.05,
    job_poll_interval=0.05,
    pattern_step_delay=0.02,
)
SECRET = "s" * 40


@pytest.fixture
def receiver():
    """A receiver listening on 127.0.0.1 (port 0); stopped at teardown."""
    r = Receiver()
    r.start()
    yield r
    r.stop()


def config(*endpoints: dict) -> str:
    return json.dumps(list(endpoints))


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("{", "must be a JSON list of endpoints"),
        ('{"name": "a"}', "must be a JSON list"),
        ('[{"name": "a b", "url": "http://x", "secret": "whsec_AAAA"}]', "name must be 1-64 characters"),
        ('[{"name": "a", "secret": "whsec_AAAA"}]', "endpoint 'a': url is missing"),
        (
            '[{"name": "a", "url": "ftp://x", "secret": "whsec_AAAA"}]',
            "endpoint 'a': url must be a http:// or https://",
        ),
        ('[{"name": "a", "url": "http://x", "secret": "plain"}]', "secret must be a Standard Webhooks secret"),
        ('[{"name": "a", "url": "http://x", "secret": "whsec_!!"}]', "secret is not valid base64"),
        ('[{"name": "a", "url": "http://x", "secret": "whsec_AAAA"}]', "secret must decode to 24-64 bytes, got 3"),
        ('[{"name": "a", "url": "http://x", "secret": "SECRET", "events": ["canvas.moved"]}]', "unknown event"),
        ('[{"name": "a", "url": "http://x", "secret": "SECRET", "color": 1}]', "unknown keys ['color']"),
        (
            '[{"name": "a", "url": "http://x", "secret": "SECRET"}, {"name": "a", "url": "http://y", "secret": "SECRET"}]',
            "endpoint 'a': the name is used twice",
        ),
    ],
)
def test_bad_endpoint_config_names_the_problem(value, problem):
    """Each mistake in CANVASHUB_WEBHOOKS is refused with a message naming the variable and the entry."""
    value = value.replace("SECRET", new_secret())
    with pytest.raises(SettingsError) as caught:
        Settings(webhooks=value)
    assert str(caught.value).startswith("--webhooks (CANVASHUB_WEBHOOKS): ")
    assert problem in str(caught.value)


def test_good_endpoint_config_parses_with_filters():
    """A valid list parses; filters take exact types, families (canvas.*) and * (the default)."""
    secret = new_secret()
    a, b = parse_webhook_endpoints(
        config(
            {"name": "a", "url": "https://app.example/hook", "secret": secret, "events": ["canvas.*"]},
            {"name": "b", "url": "http://127.0.0.1:9/x", "secret": secret},
        )
    )
    assert a.wants("canvas.deleted") and a.wants("canvas.changed") and not a.wants("generation.failed")
    assert b.events == ("*",) and b.wants("session.ended")
    assert parse_webhook_endpoints("") == ()


def test_bad_endpoint_config_is_a_clear_startup_error(tmp_path):
    """``canvashub serve`` with a bad CANVASHUB_WEBHOOKS exits 2 with one line naming it, no traceback."""
    out = run_cli(
        *serve_args(tmp_path),
        cwd=tmp_path,
        env={"CANVASHUB_WEBHOOKS": '[{"name": "a", "url": "http://x", "secret": "nope"}]'},
        timeout=15,
    )
    assert_refused(
        out,
        "--webhooks (CANVASHUB_WEBHOOKS): endpoint 'a': secret must be a Standard Webhooks secret, "
        "whsec_ followed by base64",
    )


def test_backoff_is_full_jitter_doubling_to_a_cap():
    """Delays stay within [0, min(cap, base * 2^(n-1))] and spread over that range."""
    for attempt, bound in ((1, 1.0), (2, 2.0), (4, 8.0), (10, 30.0), (500, 30.0)):
        delays = [backoff_delay(attempt, 1.0, 30.0) for _ in range(400)]
        assert all(0.0 <= d <= bound for d in delays)
        assert min(delays) < bound * 0.2 and max(delays) > bound * 0.8


# -- debouncer ---------------------------------------------------------------------------------------


async def test_debouncer_sends_once_after_a_quiet_period_with_everything_noted():
    """Notes within ``wait`` of each other become one event carrying every element, user and the last seq."""
    sent: list[tuple[float, str, dict]] = []
    done = asyncio.Event()

    async def publish(kind: str, data: dict) -> None:
        sent.append((time.monotonic(), kind, data))
        done.set()

    debouncer = Debouncer("canvas.changed", publish, wait=0.15, max_wait=5.0)
    start = time.monotonic()
    debouncer.note("c1", elements=["e1", "e2"], user="ann", seq=3)
    debouncer.note("c1", elements=["e2", "e3"], user="bob", seq=7)
    debouncer.note("c1", elements=["e4"], seq=5)
    await asyncio.wait_for(done.wait(), 5)
    [(at, kind, data)] = sent
    assert at - start >= 0.15
    assert kind == "canvas.changed"
    assert data["canvas_id"] == "c1" and data["elements"] == ["e1", "e2", "e3", "e4"]
    assert data["users"] == ["ann", "bob"] and data["seq"] == 7 and data["elements_truncated"] is False
    assert debouncer.pending == 0


async def test_debouncer_sends_at_most_max_wait_after_the_first_note_under_steady_changes():
    """A canvas changing faster than ``wait`` still gets an event once ``max_wait`` has passed."""
    sent: list[float] = []
    first = asyncio.Event()

    async def publish(kind: str, data: dict) -> None:
        sent.append(time.monotonic())
        first.set()

    debouncer = Debouncer("canvas.changed", publish, wait=0.2, max_wait=0.5)
    start = time.monotonic()
    while not first.is_set():
        debouncer.note("busy", elements=["e"])
        try:
            await asyncio.wait_for(first.wait(), 0.05)  # a change every 50 ms: never quiet for 200 ms
        except TimeoutError:
            pass
        assert time.monotonic() - start < 5.0
    assert 0.5 <= sent[0] - start < 2.0
    debouncer.note("busy", elements=["later"])  # a note after the event starts a new period
    assert debouncer.pending == 1
    await debouncer.flush()  # ... sent now, at shutdown
    assert len(sent) == 2 and debouncer.pending == 0


async def test_debouncer_bounds_what_one_event_carries():
    """Element ids past ``max_elements`` are dropped and flagged; canvases are debounced separately."""
    sent: dict[str, dict] = {}

    async def publish(kind: str, data: dict) -> None:
        sent[data["canvas_id"]] = data

    debouncer = Debouncer("canvas.saved", publish, wait=10.0, max_wait=10.0, max_elements=3)
    debouncer.note("a", elements=[f"e{i}" for i in range(10)])
    debouncer.note("b", seq=1)
    assert debouncer.pending == 2
    await debouncer.flush()
    assert sent["a"]["elements"] == ["e0", "e1", "e2"] and sent["a"]["elements_truncated"] is True
    assert sent["b"]["seq"] == 1 and "seq" not in sent["a"]


# -- a live server -----------------------------------------------------------------------------------


async def test_receiver_down_then_up_gets_every_event_once_after_dedup(server_factory, storage_backend, receiver):
    """Events written while the receiver answers 503 are retried and all arrive, signed, once per id."""
    receiver.mode = "fail"
    # Only what this test writes: the PATCH's own hook-driven events (canvas.created/changed/saved) are
    # filtered out by the endpoint, so exactly eleven events are expected.
    endpoint = receiver.endpoint(events=["session.started", "canvas.deleted"])
    server = await server_factory(**storage_backend.overrides, **FAST, webhooks=config(endpoint))
    webhooks = server.app.state.webhooks
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        ids = [await webhooks.publish("session.started", {"canvas_id": f"c{i}"}) for i in range(10)]
        assert (await http.patch("/api/canvases/doomed/elements/e1", json={"x": 1})).status_code == 200
        assert (await http.delete("/api/canvases/doomed")).status_code == 204
        assert (await http.delete("/api/canvases/doomed")).status_code == 404  # nothing deleted: no event
        await receiver.wait_for(
            lambda r: len(r.attempts) == 11 and all(n >= 2 for n in r.attempts.values()),
            30,
            "two failed attempts of every event",
        )
        receiver.mode = "ok"
        await receiver.wait_for(lambda r: len(r.unique()) == 11, 30, "every event delivered")
        got = receiver.unique()
        assert set(ids) <= set(got)
        deleted = [body for body in got.values() if body["type"] == "canvas.deleted"]
        assert [body["data"] for body in deleted] == [{"canvas_id": "doomed", "deleted_by": None}]
        assert receiver.bad_signatures == 0
        # Settled in the store: every delivery delivered, none still leased or pending.
        await wait_until(lambda: webhooks.metrics.webhook_attempts["delivered"] == 11, 10, "all deliveries recorded")
        listed = (await http.get("/api/webhooks/deliveries", params={"limit": 100})).json()["deliveries"]
        assert {d["webhook_id"] for d in listed} == set(got)
        assert all(d["status"] == "delivered" and d["attempts"] >= 3 for d in listed)
        assert all(d["last_status_code"] == 204 and d["delivered_at"] for d in listed)
        metrics = (await http.get("/metrics")).text
    assert metric_value(metrics, 'canvashub_webhook_attempts_total{outcome="delivered"}') == 11


async def test_generation_outcomes_are_delivered_with_the_job(server_factory, storage_backend, receiver):
    """A generation that succeeds sends generation.succeeded with its result; one that fails, generation.failed."""
    server = await server_factory(
        **storage_backend.overrides,
        **FAST,
        job_max_attempts=1,
        generator_http_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: the http generator fails
        webhooks=config(receiver.endpoint(events=["generation.*"])),
    )
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        ok = await http.post("/api/canvases/g/generations", json={"generator": "pattern", "prompt": "waves"})
        bad = await http.post("/api/canvases/g/generations", json={"generator": "http", "prompt": "x"})
        assert ok.status_code == 202 and bad.status_code == 202, (ok.text, bad.text)
        await receiver.wait_for(lambda r: len(r.unique()) == 2, 30, "both generation events")
    by_type = {body["type"]: body["data"] for body in receiver.unique().values()}
    succeeded, failed = by_type["generation.succeeded"], by_type["generation.failed"]
    assert succeeded["canvas_id"] == "g" and succeeded["generation"]["id"] == ok.json()["job"]["id"]
    assert succeeded["generation"]["result"]["element_id"] == f"gen-{ok.json()['job']['id']}"
    assert succeeded["generation"]["result"]["src"].startswith("/assets/")
    assert failed["generation"]["id"] == bad.json()["job"]["id"] and failed["generation"]["error"]["type"]


async def test_dead_letter_after_max_attempts(server_factory, storage_backend, receiver):
    """A receiver that always fails gets exactly max_attempts tries, then the delivery is dead."""
    receiver.mode = "fail"
    server = await server_factory(
        **storage_backend.overrides, **FAST, webhook_max_attempts=3, webhooks=config(receiver.endpoint())
    )
    webhook_id = await server.app.state.webhooks.publish("canvas.created", {"canvas_id": "x"})
    async with httpx.AsyncClient(base_url=server.http_url) as http:

        async def dead() -> list:
            listed = await http.get("/api/webhooks/deliveries", params={"status": "dead"})
            return listed.json()["deliveries"]

        deadline = asyncio.get_running_loop().time() + 30
        while not (rows := await dead()):
            assert asyncio.get_running_loop().time() < deadline, "never dead-lettered"
            await receiver.wait_for(lambda r: True, 0.1, "a moment")  # poll interval bounded by the deadline
        [row] = rows
        assert row["webhook_id"] == webhook_id and row["attempts"] == 3 and row["last_error"] == "HTTP 503"
        assert receiver.attempts[webhook_id] == 3
        # Nothing more is attempted: another event goes through the same loop and the dead one stays at 3.
        receiver.mode = "ok"
        await server.app.state.webhooks.publish("canvas.created", {"canvas_id": "y"})
        await receiver.wait_for(lambda r: len(r.unique()) == 1, 10, "the next event")
        assert receiver.attempts[webhook_id] == 3


async def test_deliveries_endpoint_needs_an_admin_and_pages(server_factory, receiver):
    """GET /api/webhooks/deliveries: 401 without a token, 403 for an owner, pages and filters for an admin."""
    receiver.mode = "fail"
    server = await server_factory(
        **FAST, auth_secret=SECRET, webhook_max_attempts=1, webhooks=config(receiver.endpoint("one"))
    )
    webhooks = server.app.state.webhooks
    for i in range(5):
        await webhooks.publish("canvas.created", {"canvas_id": f"c{i}"})
    await receiver.wait_for(lambda r: len(r.attempts) == 5, 20, "five attempts")
    admin = mint_token(SECRET, canvas="*", role="admin", user="ops")
    owner = mint_token(SECRET, canvas="*", role="owner", user="o")
    narrow_admin = mint_token(SECRET, canvas="c1", role="admin", user="ops")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        path = "/api/webhooks/deliveries"
        assert (await http.get(path)).status_code == 401
        forbidden = await http.get(path, headers={"authorization": f"Bearer {owner}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "forbidden"
        assert (await http.get(path, headers={"authorization": f"Bearer {narrow_admin}"})).status_code == 403
        auth = {"authorization": f"Bearer {admin}"}
        for bad in ({"status": "lost"}, {"cursor": "x"}, {"limit": "0"}, {"endpoint": "a b"}):
            wrong = await http.get(path, params=bad, headers=auth)
            assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid", bad

        async def all_dead() -> bool:
            rows = (await http.get(path, params={"status": "dead"}, headers=auth)).json()["deliveries"]
            return len(rows) == 5

        deadline = asyncio.get_running_loop().time() + 20
        while not await all_dead():
            assert asyncio.get_running_loop().time() < deadline
            await receiver.wait_for(lambda r: True, 0.05, "a moment")  # poll interval bounded by the deadline
        seen, cursor = [], None
        while True:
            params = {"limit": 2, "endpoint": "one", **({"cursor": cursor} if cursor else {})}
            page = (await http.get(path, params=params, headers=auth)).json()
            seen += page["deliveries"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 5 and [d["id"] for d in seen] == sorted((d["id"] for d in seen), reverse=True)
        assert {d["payload"]["data"]["canvas_id"] for d in seen} == {f"c{i}" for i in range(5)}
        assert (await http.get(path, params={"endpoint": "other"}, headers=auth)).json()["deliveries"] == []


# -- processes ---------------------------------------------------------------------------------------


async def test_kill_9_between_commit_and_delivery_still_delivers(process_server_factory, tmp_path):
    """A delete committed while the receiver is down, then SIGKILL: the restarted server delivers it."""
    receiver = Receiver()
    receiver.port = free_port()  # not listening yet: attempts are refused
    env = {
        "CANVASHUB_DATA_DIR": str(tmp_path / "data"),
        "CANVASHUB_WEBHOOKS": config(receiver.endpoint(events=["canvas.deleted"])),  # the delete's event only
        "CANVASHUB_WEBHOOK_RETRY_BASE": "0.05",
        "CANVASHUB_WEBHOOK_RETRY_MAX": "0.2",
        "CANVASHUB_WEBHOOK_POLL_INTERVAL": "0.1",
        "CANVASHUB_LOG_LEVEL": "warning",
    }
    first = await process_server_factory(env)
    async with httpx.AsyncClient(base_url=first.http_url) as http:
        assert (await http.patch("/api/canvases/gone/elements/e1", json={"x": 1})).status_code == 200
        assert (await http.delete("/api/canvases/gone")).status_code == 204  # committed with its event

        async def failed_attempts() -> int:
            rows = (await http.get("/api/webhooks/deliveries")).json()["deliveries"]
            return rows[0]["attempts"] if rows else 0

        deadline = asyncio.get_running_loop().time() + 20
        while await failed_attempts() < 2:  # the server tried, and the receiver was down
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)  # poll interval bounded by the deadline
    await first.stop(signal.SIGKILL)
    receiver.start()
    try:
        second = await process_server_factory(env)
        await receiver.wait_for(lambda r: len(r.unique()) == 1, 30, "the delete's event after the restart")
        [body] = receiver.unique().values()
        assert body["type"] == "canvas.deleted" and body["data"]["canvas_id"] == "gone"
        assert receiver.bad_signatures == 0
        await second.stop()
    finally:
        receiver.stop()


async def test_three_processes_deliver_each_event_exactly_once(
    process_server_factory, postgres_backend, redis_process, receiver
):
    """Three servers on one Postgres and Redis: each event reaches the receiver once, none twice."""
    servers = await start_cluster(
        process_server_factory,
        postgres_backend,
        redis_process,
        CANVASHUB_WEBHOOKS=config(receiver.endpoint(events=["canvas.deleted"])),  # the deletes' events only
        CANVASHUB_WEBHOOK_POLL_INTERVAL="0.05",
        CANVASHUB_WEBHOOK_CONCURRENCY="4",
    )
    canvases = [f"k{i}" for i in range(30)]
    clients = [httpx.AsyncClient(base_url=s.http_url) for s in servers]
    try:
        for i, canvas in enumerate(canvases):
            http = clients[i % 3]
            assert (await http.patch(f"/api/canvases/{canvas}/elements/e", json={"x": i})).status_code == 200
        # Deletes spread over the three processes, all at once: each event is written by one and may be
        # claimed by any.
        answers = await asyncio.gather(
            *(clients[(i + 1) % 3].delete(f"/api/canvases/{c}") for i, c in enumerate(canvases))
        )
        assert [a.status_code for a in answers] == [204] * 30
        await receiver.wait_for(lambda r: len(r.unique()) == 30, 60, "thirty events")
        # Let any duplicate that was going to happen arrive: every delivery settled in the store first.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            rows = (await clients[0].get("/api/webhooks/deliveries", params={"limit": 100})).json()["deliveries"]
            if len(rows) == 30 and all(r["status"] == "delivered" for r in rows):
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.05)  # poll interval bounded by the deadline
        assert sorted(receiver.attempts.values()) == [1] * 30  # no webhook-id twice
        assert {body["data"]["canvas_id"] for body in receiver.unique().values()} == set(canvases)
        assert receiver.bad_signatures == 0
    finally:
        for http in clients:
            await http.aclose()


def test_settings_defaults_are_sane():
    """The defaults: no endpoints, 12 attempts, a retry cap of an hour, a debounce of 2 s at most 10 s."""
    s = Settings()
    assert s.webhooks == "" and s.webhook_max_attempts == 12 and s.webhook_retry_max == 3600.0
    assert (s.webhook_change_debounce, s.webhook_change_max_wait) == (2.0, 10.0)
    assert dataclasses.replace(s, webhook_timeout=1.0).webhook_timeout == 1.0


async def test_hook_driven_events_reach_the_receiver(server_factory, receiver):
    """A socket that joins, edits and leaves a new canvas produces session.started, canvas.created,
    canvas.changed (with the element ids), canvas.saved (with the seq) and session.ended, signed."""
    server = await server_factory(
        **FAST,
        webhook_change_debounce=0.1,
        webhook_change_max_wait=0.5,
        webhooks=config(receiver.endpoint(events=["canvas.*", "session.*"])),
    )
    client = await WireClient.connect(server, "hooked", sync=True)
    _, updates = key_updates(3, prefix="shape")
    for update in updates:
        await client.send_update(update)
    await client.wait_save(where=lambda e: e["through"] == 3)
    await client.close()

    def kinds(r) -> set[str]:
        return {body["type"] for body in r.unique().values()}

    wanted = {"session.started", "canvas.created", "canvas.changed", "canvas.saved", "session.ended"}
    await receiver.wait_for(lambda r: wanted <= kinds(r), 30, "every hook-driven event")
    bodies = list(receiver.unique().values())
    changed = [b["data"] for b in bodies if b["type"] == "canvas.changed"]
    assert {"shape0", "shape1", "shape2"} <= {e for data in changed for e in data["elements"]}
    assert all(data["canvas_id"] == "hooked" for data in changed)
    saved = [b["data"] for b in bodies if b["type"] == "canvas.saved"]
    assert max(data["seq"] for data in saved) >= 1
    ended = next(b["data"] for b in bodies if b["type"] == "session.ended")
    assert ended["protocol"] == "y-websocket" and ended["canvas_id"] == "hooked"
    assert receiver.bad_signatures == 0


async def test_a_job_whose_last_worker_died_sends_generation_failed(server_factory, receiver):
    """A job failed by a claim because its last worker's lease expired sends generation.failed, signed."""
    from canvashub.server.jobs import Worker

    server = await server_factory(
        **FAST, job_workers=0, job_max_attempts=1, webhooks=config(receiver.endpoint(events=["generation.*"]))
    )
    store = server.hub.store
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        created = await http.post("/api/canvases/g/generations", json={"generator": "pattern", "prompt": "x"})
    assert created.status_code == 202
    job_id = created.json()["job"]["id"]
    assert await store.claim_job("worker-that-dies", 0.05) is not None  # its only attempt; nobody renews it
    worker = Worker(
        store,
        {},
        concurrency=1,
        lease_seconds=5,
        poll_interval=0.05,
        retry_base=0.1,
        retry_max=1,
        webhooks=server.app.state.webhooks,
    )
    worker.start()
    try:
        await receiver.wait_for(
            lambda r: any(b["type"] == "generation.failed" for b in r.unique().values()), 30, "generation.failed"
        )
    finally:
        await worker.stop()
    failed = next(b for b in receiver.unique().values() if b["type"] == "generation.failed")
    assert failed["data"]["generation"]["id"] == job_id
    assert failed["data"]["generation"]["error"]["type"] == "lease_expired"
    assert receiver.bad_signatures == 0
