"""Background generations end to end: accepted at once, progress live, results in the canvas, on both stores."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest

from .support import wait_until
from .wire import WireClient

FAST = dict(job_watch_interval=0.05, job_poll_interval=0.05, job_retry_base=0.05, job_retry_max=0.2)


def statuses(client: WireClient, job_id: str) -> list[str]:
    return [e["status"] for e in client.events_of("generation") if e["job"]["id"] == job_id]


def image_elements(client: WireClient) -> dict[str, Any]:
    return {k: v for k, v in client.elements().items() if isinstance(v, dict) and v.get("type") == "image"}


async def job_state(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/generations/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_job(http: httpx.AsyncClient, job_id: str, predicate, timeout: float = 20.0) -> dict[str, Any]:
    """Poll the job until ``predicate(job)`` holds (the API has no push channel besides events)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        job = await job_state(http, job_id)
        if predicate(job):
            return job
        assert loop.time() < deadline, f"job never reached the expected state: {job}"
        await asyncio.sleep(0.05)  # poll interval of a wait bounded by its deadline


async def test_pattern_generation_reaches_every_client(server_factory, storage_backend):
    """POST returns 202 at once with a queued job; two clients get queued, started, progress and
    succeeded; both documents get exactly one image element; the asset is a valid SVG."""
    server = await server_factory(**storage_backend.overrides, **FAST)
    a = await WireClient.connect(server, "gen", sync=True)
    b = await WireClient.connect(server, "gen", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        started = time.perf_counter()
        response = await http.post(
            "/api/canvases/gen/generations",
            json={"generator": "pattern", "prompt": "blue waves", "params": {"duration": 2}},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 202, response.text
        job = response.json()["job"]
        assert job["status"] == "queued"
        assert elapsed < 0.5  # far below the 2 s the generator takes: the request did not wait for it
        for client in (a, b):
            await client.wait(lambda c=client: "succeeded" in statuses(c, job["id"]), 15, "succeeded")
            seen = statuses(client, job["id"])
            assert seen[0] == "queued" and "started" in seen and seen.count("progress") >= 3, seen
            assert seen.index("started") < seen.index("progress") < seen.index("succeeded")
            await client.wait(lambda c=client: image_elements(c), 5, "image element")
        done = [e for e in a.events_of("generation") if e["status"] == "succeeded"][0]
        elements = image_elements(a)
        assert list(elements) == [done["element_id"]] and image_elements(b) == elements
        element = elements[done["element_id"]]
        assert element["generation_id"] == job["id"] and element["src"] == done["src"]
        asset = await http.get(element["src"])
        assert asset.status_code == 200 and asset.headers["content-type"].startswith("image/svg+xml")
        assert "immutable" in asset.headers["cache-control"] and asset.headers["etag"]
        ET.fromstring(asset.content)  # well-formed SVG
        assert (await http.get(element["src"], headers={"If-None-Match": asset.headers["etag"]})).status_code == 304
        final = await job_state(http, job["id"])
        assert final["status"] == "succeeded" and final["progress"] == 1 and final["attempts"] == 1
        # The element is in the stored canvas too (persisted like any other change).
        stored = (await http.get("/api/canvases/gen")).json()["elements"]
        assert stored[done["element_id"]]["src"] == element["src"]


async def test_a_client_joining_mid_job_still_sees_it_finish(server_factory, storage_backend):
    """A socket that connects after `started` first gets the job's current state, then `succeeded`."""
    server = await server_factory(**storage_backend.overrides, **FAST)
    first = await WireClient.connect(server, "late", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        late = {"generator": "pattern", "prompt": "late", "params": {"duration": 1.5}}
        job = (await http.post("/api/canvases/late/generations", json=late)).json()["job"]
        await first.wait(lambda: "started" in statuses(first, job["id"]), 10, "started")
        late = await WireClient.connect(server, "late", sync=True)
        await late.wait(lambda: "succeeded" in statuses(late, job["id"]), 15, "succeeded")
        assert statuses(late, job["id"])[0] in ("started", "progress")  # the snapshot came first
        await late.wait(lambda: image_elements(late), 5, "image element")


async def test_cancellation_stops_the_job_and_adds_nothing(server_factory, storage_backend):
    """Cancelling a running job stops it: `cancelled` event, status cancelled, no element."""
    server = await server_factory(**storage_backend.overrides, **FAST)
    client = await WireClient.connect(server, "cancel", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        job = (
            await http.post(
                "/api/canvases/cancel/generations",
                json={"generator": "pattern", "prompt": "x", "params": {"duration": 5}},
            )
        ).json()["job"]
        await client.wait(lambda: "started" in statuses(client, job["id"]), 10, "started")
        response = await http.post(f"/api/generations/{job['id']}/cancel")
        assert response.status_code == 200
        await client.wait(lambda: "cancelled" in statuses(client, job["id"]), 10, "cancelled")
        final = await wait_job(http, job["id"], lambda j: j["status"] == "cancelled")
        assert final["result"] is None
        # A queued job is cancelled at once, before any worker sees it.
    assert not image_elements(client)
    assert "succeeded" not in statuses(client, job["id"])


async def test_idempotency_key_gives_one_job(server_factory, storage_backend):
    """The same idempotency key twice (even concurrently) yields one job."""
    server = await server_factory(**storage_backend.overrides, **FAST, job_workers=0)
    body = {"generator": "pattern", "prompt": "once", "idempotency_key": "k-1"}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        responses = await asyncio.gather(*(http.post("/api/canvases/idem/generations", json=body) for _ in range(5)))
        ids = {r.json()["job"]["id"] for r in responses}
        assert len(ids) == 1 and all(r.status_code == 202 for r in responses)
        assert sum(r.json()["created"] for r in responses) == 1
        listed = (await http.get("/api/canvases/idem/generations")).json()["generations"]
        assert [j["id"] for j in listed] == list(ids)
        # Validation: unknown generator, bad prompt, bad params, unknown fields are 422 with the problems
        # listed; a body that is not JSON is 400.
        for bad, path in (
            ({"generator": "nope", "prompt": "x"}, "generator"),
            ({"generator": "pattern", "prompt": 5}, "prompt"),
            ({"generator": "pattern", "params": []}, "params"),
            ({"generator": "pattern", "params": {"x": "left"}}, "params.x"),
            ({"generator": "pattern", "colour": "red"}, ""),
            ({"prompt": "x"}, ""),
        ):
            response = await http.post("/api/canvases/idem/generations", json=bad)
            assert response.status_code == 422 and response.json()["error"]["type"] == "invalid", bad
            assert path in [e["path"] for e in response.json()["error"]["errors"]], response.json()
        response = await http.post("/api/canvases/idem/generations", content=b"{nope")
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid"
        assert (await http.get("/api/generations/ffff")).status_code == 404


async def test_killed_worker_process_job_is_reclaimed_once(server_factory, storage_backend, worker_factory):
    """`canvashub worker` is killed mid-job: the lease expires, another worker reclaims the job,
    it succeeds exactly once and the canvas gets one element."""
    server = await server_factory(**storage_backend.overrides, **FAST, job_workers=0)
    env = {**storage_backend.env, "CANVASHUB_JOB_LEASE_SECONDS": "1", "CANVASHUB_JOB_POLL_INTERVAL": "0.05"}
    if storage_backend.kind == "sqlite":
        env["CANVASHUB_DATA_DIR"] = server.app.state.settings.data_dir
    first = await worker_factory(env)
    client = await WireClient.connect(server, "reclaim", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        job = (
            await http.post(
                "/api/canvases/reclaim/generations",
                json={"generator": "pattern", "prompt": "r", "params": {"duration": 3}},
            )
        ).json()["job"]
        await wait_job(http, job["id"], lambda j: j["status"] == "running" and j["progress"] > 0)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        second = await worker_factory(env)
        try:
            final = await wait_job(http, job["id"], lambda j: j["status"] in ("succeeded", "failed"), 30)
            assert final["status"] == "succeeded" and final["attempts"] == 2, final
            await client.wait(lambda: image_elements(client), 10, "image element")
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 20)
    assert len(image_elements(client)) == 1
    assert statuses(client, job["id"]).count("succeeded") == 1


@pytest.fixture
async def worker_factory():
    """Start `canvashub worker` child processes; any still running are killed at teardown."""
    import os

    started: list[asyncio.subprocess.Process] = []

    async def start(env: dict[str, str]) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "canvashub.server", "worker", "--job-workers", "1", env={**os.environ, **env}
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def fake_service():
    from .fake_generation_service import FakeGenerationService

    service = await FakeGenerationService().start()
    yield service
    await service.stop()


async def test_http_generator_retries_until_the_service_recovers(server_factory, storage_backend, fake_service):
    """The external service answers 503 twice, then works: the job is retried with backoff and
    succeeds on its third attempt; the PNG lands in the canvas as an asset."""
    fake_service.fail_times(2)
    server = await server_factory(**storage_backend.overrides, **FAST, generator_http_url=fake_service.base_url)
    client = await WireClient.connect(server, "remote", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        job = (
            await http.post("/api/canvases/remote/generations", json={"generator": "http", "prompt": "a cat"})
        ).json()["job"]
        final = await wait_job(http, job["id"], lambda j: j["status"] in ("succeeded", "failed"), 30)
        assert final["status"] == "succeeded" and final["attempts"] == 3, final
        await client.wait(lambda: "succeeded" in statuses(client, job["id"]), 10, "succeeded")
        (element,) = image_elements(client).values()
        asset = await http.get(element["src"])
        assert asset.headers["content-type"] == "image/png" and asset.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert fake_service.requests["generate"] == 3


async def test_http_generator_that_always_fails_ends_failed(server_factory, storage_backend, fake_service):
    """A service whose jobs always fail (retryably) exhausts the retry limit: the job ends `failed`
    with a classified error type, clients get a `failed` event, and no element appears."""
    fake_service.always_fail(retryable=True)
    server = await server_factory(
        **storage_backend.overrides, **FAST, generator_http_url=fake_service.base_url, job_max_attempts=3
    )
    client = await WireClient.connect(server, "broken", sync=True)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        job = (
            await http.post("/api/canvases/broken/generations", json={"generator": "http", "prompt": "nope"})
        ).json()["job"]
        final = await wait_job(http, job["id"], lambda j: j["status"] in ("succeeded", "failed"), 30)
    assert final["status"] == "failed" and final["attempts"] == 3, final
    assert final["error"]["type"] == "upstream"
    await client.wait(lambda: "failed" in statuses(client, job["id"]), 10, "failed event")
    failed = [e for e in client.events_of("generation") if e["status"] == "failed"][0]
    assert failed["error_type"] == "upstream"
    assert not image_elements(client)


async def test_requests_over_the_events_channel(server_factory):
    """An opted-in socket can start, read and cancel generations with [100, json] requests and gets
    a response per request_id; malformed requests get an error response, not a close."""
    import orjson

    from canvashub.crdt.codec import encode_event

    server = await server_factory(**FAST, job_workers=0)
    client = await WireClient.connect(server, "viaws")

    async def ask(payload: dict) -> dict:
        await client.ws.send(encode_event(orjson.dumps(payload)))
        return await client.wait(
            lambda: next(
                (e for e in client.events_of("response") if e["request_id"] == payload.get("request_id")), None
            ),
            10,
        )

    created = await ask(
        {"type": "generate", "request_id": "r1", "generator": "pattern", "prompt": "ws", "idempotency_key": "same"}
    )
    assert created["ok"] and created["job"]["status"] == "queued" and created["created"] is True
    job_id = created["job"]["id"]
    again = await ask(
        {"type": "generate", "request_id": "r2", "generator": "pattern", "prompt": "ws", "idempotency_key": "same"}
    )
    assert again["ok"] and again["job"]["id"] == job_id and again["created"] is False
    got = await ask({"type": "get_generation", "request_id": "r3", "job_id": job_id})
    assert got["ok"] and got["job"]["id"] == job_id
    cancelled = await ask({"type": "cancel_generation", "request_id": "r4", "job_id": job_id})
    assert cancelled["ok"] and cancelled["job"]["status"] == "cancelled"
    bad = await ask({"type": "generate", "request_id": "r5", "generator": "nope"})
    assert not bad["ok"] and bad["error"]["type"] == "invalid"
    unknown = await ask({"type": "frobnicate", "request_id": "r6"})
    assert not unknown["ok"] and unknown["error"]["type"] == "invalid"
    missing = await ask({"type": "get_generation", "request_id": "r7", "job_id": "ffff"})
    assert not missing["ok"] and missing["error"]["type"] == "not_found"
    assert client.close_code is None
    # A socket that did not opt in may not send event frames at all.
    stock = await WireClient.connect(server, "viaws", events=False)
    await stock.ws.send(encode_event(b'{"type":"get_generation"}'))
    assert await stock.wait_closed() == 1002


async def test_two_servers_apply_a_result_once_and_both_announce_it(server_factory, storage_backend):
    """Two server processes on one store, each with a socket on the canvas: the result is claimed and
    written by one of them (one stored update holds the element) and the sockets on both get exactly
    one `succeeded`, with the element id and src. (The servers do not relay document updates to each
    other here, so only the applying server's document is checked.)"""
    settings = dict(**storage_backend.overrides, **FAST, compact_interval=3600.0)
    servers = [await server_factory(**settings), await server_factory(**settings)]
    clients = [await WireClient.connect(server, "pair", sync=True) for server in servers]
    async with httpx.AsyncClient(base_url=servers[0].http_url) as http:
        shared = {"generator": "pattern", "prompt": "shared", "params": {"duration": 1}}
        job = (await http.post("/api/canvases/pair/generations", json=shared)).json()["job"]
        for client in clients:
            await client.wait(lambda c=client: "started" in statuses(c, job["id"]), 10, "started")
        for client in clients:
            await client.wait(lambda c=client: "succeeded" in statuses(c, job["id"]), 15, "succeeded")
    store = storage_backend.make_store()
    await store.open()
    try:
        stored = await store.get_job(job["id"])
        loaded = await store.load("pair")
    finally:
        await store.close()
    assert stored.status == "succeeded" and stored.result_applied is True
    element_id = stored.result["element_id"]
    # Both watchers have seen the job marked applied: no other `succeeded` can follow.
    watchers = [server.app.state.jobs.watcher for server in servers]
    await wait_until(
        lambda: all(w._seen.get(job["id"]) == stored.updated_at for w in watchers),
        10,
        "both watchers saw the job applied",
    )
    for client in clients:
        (done,) = [e for e in client.events_of("generation") if e["status"] == "succeeded"]
        assert done["job"]["id"] == job["id"]
        assert done["element_id"] == element_id == f"gen-{job['id']}" and done["src"] == stored.result["src"]
    # Written once: exactly one logged update carries the element (no compaction ran meanwhile).
    assert loaded.snapshot is None
    assert sum(element_id.encode() in data for _, data in loaded.updates) == 1
    (applier,) = [i for i, w in enumerate(watchers) if w.claimer_id == stored.result_claimer]
    await clients[applier].wait(lambda: image_elements(clients[applier]), 5, "image element")
    assert list(image_elements(clients[applier])) == [element_id]
