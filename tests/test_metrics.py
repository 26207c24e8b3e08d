"""/metrics: counters, histograms of durable acks, frames and HTTP requests, job states and hook calls."""

from __future__ import annotations

import asyncio

import httpx

from canvashub.server.extensions import DeletedEvent

from .support import metric_value, wait_until
from .wire import WireClient, key_updates


class Listener:
    """An extension that records ``deleted`` events."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def deleted(self, event: DeletedEvent) -> None:
        self.seen.append(event.canvas_id)


async def scrape(server) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def test_durable_acks_frames_and_http_requests_are_histograms(live_server) -> None:
    """A socket's saved update, its frames and an HTTP request each land in their histogram."""
    client = await WireClient.connect(live_server, "m1", events=True)
    _, updates = key_updates(3)
    for update in updates:
        await client.send_update(update)
    await client.wait_save(where=lambda e: e["through"] == 3)
    async with httpx.AsyncClient(base_url=live_server.http_url) as http:
        assert (await http.get("/api/canvases/m1")).status_code == 200
        assert (await http.get("/api/canvases/nope-nope")).status_code == 404
    text = await scrape(live_server)
    await client.close()
    assert metric_value(text, "canvashub_durable_ack_seconds_count") >= 3
    assert metric_value(text, 'canvashub_durable_ack_seconds_bucket{le="+Inf"}') >= 3
    assert metric_value(text, "canvashub_frame_handling_seconds_count") >= 3
    assert metric_value(text, "canvashub_commit_duration_seconds_count") >= 1
    get_canvas = 'route="/api/canvases/{canvas_id}",method="GET"'
    assert metric_value(text, f'canvashub_http_request_duration_seconds_count{{{get_canvas},status="200"}}') == 1
    assert metric_value(text, f'canvashub_http_request_duration_seconds_count{{{get_canvas},status="404"}}') == 1
    assert metric_value(text, "canvashub_updates_committed_total") >= 3
    assert metric_value(text, "canvashub_connections") == 1  # gauges from the hub's stats


async def test_job_states_and_hook_calls_are_counted(server_factory) -> None:
    """A generation's queued/running/succeeded and an extension's hook calls appear as labelled counters."""
    listener = Listener()
    server = await server_factory(extensions=[listener])
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as http:
        created = await http.post("/api/canvases/m2/generations", json={"generator": "pattern", "prompt": "p"})
        assert created.status_code == 202

        async def succeeded() -> bool:
            text = (await http.get("/metrics")).text
            return metric_value(text, 'canvashub_job_transitions_total{status="succeeded"}') == 1

        for _attempt in range(600):
            if await succeeded():
                break
            await asyncio.sleep(0.05)  # poll interval of a wait bounded to 30 s
        else:
            raise AssertionError("the generation did not succeed within 30 s")
        # The job succeeds a moment before its element is written into the canvas (which creates it).
        for _attempt in range(600):
            if (await http.get("/api/canvases/m2")).status_code == 200:
                break
            await asyncio.sleep(0.05)  # poll interval of a wait bounded to 30 s
        assert (await http.delete("/api/canvases/m2")).status_code == 204
        await wait_until(lambda: listener.seen == ["m2"], 10, "deleted hook")
        text = (await http.get("/metrics")).text
    assert metric_value(text, 'canvashub_job_transitions_total{status="queued"}') == 1
    assert metric_value(text, 'canvashub_job_transitions_total{status="running"}') == 1
    assert metric_value(text, 'canvashub_hook_calls_total{hook="generation",outcome="ok"}') == 0  # nobody listens
    assert metric_value(text, 'canvashub_hook_calls_total{hook="deleted",outcome="ok"}') == 1
