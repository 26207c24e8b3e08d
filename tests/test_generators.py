"""Generators on their own: the built-in pattern SVG and the HTTP generator against a fake service."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest

from canvashub.server.generators import Generator, build_generators
from canvashub.server.generators.base import (
    GenerationError,
    GenerationOutput,
    GenerationRequest,
    PermanentError,
    RetryableError,
)
from canvashub.server.generators.http import HttpGenerator
from canvashub.server.generators.pattern import PatternGenerator

from .fake_generation_service import FakeGenerationService, make_png
from .support import wait_until

SVG = "{http://www.w3.org/2000/svg}"
INERT_TAGS = {f"{SVG}{tag}" for tag in ("svg", "title", "g", "rect", "circle", "polygon")}


def request(prompt: str = "blue waves", params: dict | None = None, job_id: str = "job1") -> GenerationRequest:
    return GenerationRequest(job_id, "canvas1", prompt, params if params is not None else {})


class Progress:
    """Records progress calls; ``first`` is set on the first one."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.first = asyncio.Event()

    def __call__(self, value: float) -> None:
        self.values.append(value)
        self.first.set()


async def run(generator: Generator, req: GenerationRequest, timeout: float = 10.0) -> tuple[GenerationOutput, Progress]:
    progress = Progress()
    output = await asyncio.wait_for(generator.generate(req, progress), timeout)
    return output, progress


# --- the registry -----------------------------------------------------------------------------------------------


def test_build_generators() -> None:
    """build_generators always offers pattern, and http when a base URL is set (slash trimmed, timeout passed on)."""
    only = build_generators(0.01, None, 5.0)
    assert list(only) == ["pattern"] and isinstance(only["pattern"], PatternGenerator)
    assert only["pattern"].step_delay == 0.01 and only["pattern"].name == "pattern"
    assert list(build_generators(0.01, "", 5.0)) == ["pattern"]
    both = build_generators(0.01, "http://127.0.0.1:9/api/", 7.5)
    assert sorted(both) == ["http", "pattern"]
    http = both["http"]
    assert isinstance(http, HttpGenerator) and http.name == "http"
    assert http.base_url == "http://127.0.0.1:9/api" and http.timeout == 7.5
    assert all(isinstance(g, Generator) for g in both.values())


def test_error_classes() -> None:
    """RetryableError and PermanentError are GenerationErrors with fixed retryability and the given type."""
    retry = RetryableError("down", error_type="unavailable")
    final = PermanentError("bad", error_type="invalid")
    assert isinstance(retry, GenerationError) and retry.retryable and retry.error_type == "unavailable"
    assert isinstance(final, GenerationError) and not final.retryable and final.error_type == "invalid"
    assert str(retry) == "down"
    plain = GenerationError("x", error_type="internal", retryable=True)
    assert plain.retryable and plain.error_type == "internal"


# --- pattern ----------------------------------------------------------------------------------------------------


async def test_pattern_is_deterministic() -> None:
    """The pattern SVG depends only on prompt and params: same input, same picture; different input, another.
    Thirty prompts give thirty pictures in all three styles; size and palette params change the picture."""
    generator = PatternGenerator(step_delay=0)
    first, _ = await run(generator, request("blue waves"))
    again, _ = await run(generator, request("blue waves", job_id="another job"))
    other, _ = await run(generator, request("red squares"))
    assert first.content_type == "image/svg+xml"
    assert first.data == again.data
    assert first.data != other.data
    # Many prompts: all different pictures, all three styles used.
    outputs = [(await run(generator, request(f"prompt {i}")))[0].data for i in range(30)]
    assert len(set(outputs)) == 30
    assert {ET.fromstring(data).get("data-style") for data in outputs} == {"grid", "rings", "stripes"}
    # Params change the picture (and only through what they mean).
    sized, _ = await run(generator, request("blue waves", {"width": 300, "height": 200, "x": 10}))
    assert (sized.width, sized.height) == (300, 200) and sized.data != first.data
    assert (first.width, first.height) == (512, 512)
    painted, _ = await run(generator, request("blue waves", {"palette": ["#ff0000", "#00F"]}))
    colours = {el.get("fill") for el in ET.fromstring(painted.data).iter() if el.get("fill")}
    assert colours <= {"#ff0000", "#00f"}
    named, _ = await run(generator, request("blue waves", {"palette": "mono"}))
    assert named.data != first.data and named.data != painted.data


@pytest.mark.parametrize(
    "prompt", ["blue waves", "", "<script>alert(1)</script> & \"q\" 'a' ]]> \x00\x1b\ufffe é 🎨", "x" * 5000]
)
async def test_pattern_svg_is_well_formed_and_inert(prompt: str) -> None:
    """Whatever the prompt, the pattern SVG is well-formed, inert (no scripts, links or handlers) and titled.
    The title is the prompt without characters XML cannot hold, cut to 200 characters."""
    output, _ = await run(PatternGenerator(step_delay=0), request(prompt, {"width": 640, "height": 100}))
    root = ET.fromstring(output.data)  # well-formed XML (raises otherwise)
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("640", "100", "0 0 640 100")
    elements = list(root.iter())
    assert {el.tag for el in elements} <= INERT_TAGS
    assert len(elements) > 3
    for el in elements:
        for name, value in el.attrib.items():
            assert "href" not in name and not name.startswith("on")
            assert "url(" not in value and "javascript" not in value.lower()
    title = root.find(f"{SVG}title")
    assert title is not None
    expected = "".join(c for c in prompt if c not in "\x00\x1b\ufffe")[:200]
    assert (title.text or "") == expected
    assert b"<script" not in output.data


async def test_pattern_progress_rises_to_one_in_steps() -> None:
    """The pattern generator reports progress once per step, strictly rising to exactly 1.0."""
    output, progress = await run(PatternGenerator(step_delay=0.001, steps=5), request())
    assert progress.values == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(a < b for a, b in itertools.pairwise(progress.values))
    _, progress = await run(PatternGenerator(step_delay=0, steps=8), request())
    assert len(progress.values) == 8 and progress.values[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(progress.values))


async def test_pattern_duration_param_overrides_step_delay() -> None:
    """A duration param spreads the job over that time (zero included), overriding the configured step_delay."""
    # 8 steps of 60 s each would blow the 5 s wait; duration 0.04 s makes them 5 ms each.
    output, progress = await run(PatternGenerator(step_delay=60), request("quick", {"duration": 0.04}), timeout=5)
    assert len(progress.values) == 8 and output.data.startswith(b"<?xml")
    await run(PatternGenerator(step_delay=60), request("zero", {"duration": 0}), timeout=5)


@pytest.mark.parametrize(
    "params",
    [
        {"width": 8},
        {"width": 4096},
        {"width": "512"},
        {"width": True},
        {"height": 1.5},
        {"height": 0},
        {"duration": -1},
        {"duration": 601},
        {"duration": "1"},
        {"duration": float("nan")},
        {"duration": False},
        {"palette": "nope"},
        {"palette": ["red"]},
        {"palette": []},
        {"palette": ["#fff"] * 17},
        {"palette": ['#fff" onload="x']},
        {"palette": 3},
        [],
    ],
)
async def test_pattern_invalid_params_are_permanent(params) -> None:
    """Invalid pattern params fail with a permanent "invalid" error before any progress is reported."""
    progress = Progress()
    with pytest.raises(PermanentError) as caught:
        await asyncio.wait_for(PatternGenerator(step_delay=0).generate(request(params=params), progress), 5)
    assert caught.value.error_type == "invalid" and caught.value.retryable is False
    assert progress.values == []  # refused before doing any work


def test_pattern_constructor_checks() -> None:
    """PatternGenerator refuses zero steps and a negative or NaN step_delay."""
    for kwargs in ({"steps": 0}, {"step_delay": -1}, {"step_delay": float("nan")}):
        with pytest.raises(ValueError):
            PatternGenerator(**kwargs)


async def test_pattern_cancellation_propagates_promptly() -> None:
    """Cancelling a pattern job stops it at once, between steps or in a long sleep, and no step runs after."""
    progress = Progress()
    task = asyncio.get_running_loop().create_task(
        PatternGenerator(step_delay=0.01, steps=100_000).generate(request(), progress)
    )
    await asyncio.wait_for(progress.first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert task.cancelled()
    seen = len(progress.values)
    assert 0 < seen < 100_000
    # Long sleeps are cancelled too, not waited out.
    slow = asyncio.get_running_loop().create_task(PatternGenerator(step_delay=3600).generate(request(), Progress()))
    # Its only await is the step sleep: once the coroutine is suspended, it is in its first (hour-long) sleep.
    await wait_until(lambda: inspect.getcoroutinestate(slow.get_coro()) == inspect.CORO_SUSPENDED, 5, "first sleep")
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(slow, 1)
    assert len(progress.values) == seen  # nothing more ran after cancellation


# --- http ---------------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeGenerationService]:
    service = await FakeGenerationService().start()
    yield service
    await service.stop()


def http_generator(fake: FakeGenerationService, **kwargs) -> HttpGenerator:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("max_wait", 10.0)
    return HttpGenerator(fake.base_url, **kwargs)


@pytest.mark.parametrize("absolute", [False, True])
async def test_http_success(fake: FakeGenerationService, absolute: bool) -> None:
    """The HTTP generator submits, polls (progress per poll) and downloads the image from a relative or absolute URL."""
    fake.succeed(after_polls=3)
    fake.absolute_output_url = absolute
    output, progress = await run(http_generator(fake), request("a cat", {"width": 300, "height": 200}, "job42"))
    assert output.data == fake.output and output.data.startswith(b"\x89PNG")
    assert output.content_type == "image/png"
    assert (output.width, output.height) == (300, 200)
    assert progress.values == [0.25, 0.5, 0.75, 1.0]  # three running polls, then succeeded
    assert dict(fake.requests) == {"generate": 1, "poll": 4, "output": 1}
    assert fake.submitted == [{"prompt": "a cat", "params": {"width": 300, "height": 200}, "job_id": "job42"}]


async def test_http_svg_output_default_size_and_streamed(fake: FakeGenerationService) -> None:
    """A chunked SVG output is accepted, its content type normalised and its size defaulted to 512x512."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>' + b" " * 1000
    fake.succeed(after_polls=0)
    fake.output, fake.output_type, fake.chunked_output = svg, "image/svg+xml; charset=utf-8", True
    output, progress = await run(http_generator(fake), request())
    assert output.data == svg and output.content_type == "image/svg+xml"
    assert (output.width, output.height) == (512, 512)
    assert progress.values[-1] == 1.0


async def test_http_unavailable_then_success_on_retry(fake: FakeGenerationService) -> None:
    """The caller (the worker) retries; each attempt is one ``generate`` call."""
    fake.fail_times(2).succeed(after_polls=1)
    generator = http_generator(fake)
    for attempt in (1, 2):
        with pytest.raises(RetryableError) as caught:
            await run(generator, request())
        assert caught.value.error_type == "unavailable" and caught.value.retryable, attempt
    output, _ = await run(generator, request())
    assert output.data == fake.output
    assert fake.requests["generate"] == 3 and fake.requests["output"] == 1


async def test_http_remote_failure_is_permanent(fake: FakeGenerationService) -> None:
    """A remote job that fails is a permanent upstream error with the service's message; nothing is downloaded."""
    fake.always_fail()
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake), request())
    assert caught.value.error_type == "upstream" and not caught.value.retryable
    assert "model exploded" in str(caught.value)
    assert fake.requests["poll"] == 1 and fake.requests["output"] == 0


async def test_http_remote_failure_marked_retryable(fake: FakeGenerationService) -> None:
    """A remote failure the service marks retryable is a retryable upstream error."""
    fake.always_fail(retryable=True)
    with pytest.raises(RetryableError) as caught:
        await run(http_generator(fake), request())
    assert caught.value.error_type == "upstream" and caught.value.retryable


async def test_http_slow_job_times_out(fake: FakeGenerationService) -> None:
    """A remote job still running after max_wait is a retryable timeout, and its output is never fetched."""
    fake.slow()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryableError) as caught:
        await run(http_generator(fake, max_wait=0.15), request())
    assert caught.value.error_type == "timeout"
    assert 0.15 <= loop.time() - started < 5
    assert fake.requests["poll"] >= 2 and fake.requests["output"] == 0


async def test_http_request_timeout(fake: FakeGenerationService) -> None:
    """A request that hangs past the generator's timeout is a retryable timeout."""
    fake.hang_polls = True
    with pytest.raises(RetryableError) as caught:
        await run(http_generator(fake, timeout=0.1), request())
    assert caught.value.error_type == "timeout"


async def test_http_connection_refused_is_unavailable() -> None:
    """A service that refuses connections is a retryable "unavailable" error."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError) as caught:
        await run(HttpGenerator(f"http://127.0.0.1:{port}", timeout=2), request())
    assert caught.value.error_type == "unavailable"


@pytest.mark.parametrize(
    "status, error_class, error_type",
    [
        (400, PermanentError, "invalid"),
        (422, PermanentError, "invalid"),
        (401, PermanentError, "upstream"),
        (404, PermanentError, "upstream"),
        (408, RetryableError, "timeout"),
        (429, RetryableError, "unavailable"),
        (500, RetryableError, "unavailable"),
        (502, RetryableError, "unavailable"),
    ],
)
async def test_http_status_classification(fake: FakeGenerationService, status: int, error_class, error_type) -> None:
    """Error statuses map to error classes: 400/422 invalid, 401/404 upstream, 408 timeout, 429/5xx unavailable."""
    fake.reject_with = status
    with pytest.raises(GenerationError) as caught:
        await run(http_generator(fake), request())
    assert type(caught.value) is error_class and caught.value.error_type == error_type
    assert caught.value.retryable is (error_class is RetryableError)


async def test_http_cancel_while_polling(fake: FakeGenerationService) -> None:
    """Cancelling while polling ends the task promptly and asks the service to cancel the remote job."""
    fake.slow()
    progress = Progress()
    task = asyncio.get_running_loop().create_task(http_generator(fake).generate(request(), progress))
    await asyncio.wait_for(fake.polled.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    assert task.cancelled()
    await asyncio.wait_for(fake.cancelled.wait(), 5)  # the service was asked to stop the remote job
    assert fake.cancelled_ids == ["r1"]


async def test_http_cancel_while_downloading_closes_the_response(fake: FakeGenerationService) -> None:
    """Cancelling mid-download closes the response (the service sees the hang-up) and cancels the remote job."""
    fake.succeed(after_polls=0)
    fake.stall_output = True
    fake.output = make_png(64, 64)
    task = asyncio.get_running_loop().create_task(http_generator(fake).generate(request(), Progress()))
    await asyncio.wait_for(fake.output_started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    await asyncio.wait_for(fake.output_closed.wait(), 5)  # the server saw the client hang up
    await asyncio.wait_for(fake.cancelled.wait(), 5)


async def test_http_cancel_during_a_request(fake: FakeGenerationService) -> None:
    """Cancelled while a poll request is in flight: the request is abandoned and the remote job cancelled."""
    fake.hang_polls = True
    task = asyncio.get_running_loop().create_task(http_generator(fake).generate(request(), Progress()))
    await asyncio.wait_for(fake.polled.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    await asyncio.wait_for(fake.cancelled.wait(), 5)


async def test_http_cancel_while_submitting(fake: FakeGenerationService) -> None:
    """Before the service answered there is no remote id, so nothing to cancel remotely; the task ends at once."""
    fake.hang_generate = True
    task = asyncio.get_running_loop().create_task(http_generator(fake).generate(request(), Progress()))
    await asyncio.wait_for(fake.submit_seen.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    assert fake.requests["cancel"] == 0 and fake.requests["poll"] == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_http_output_too_large(fake: FakeGenerationService, chunked: bool) -> None:
    """An output over max_bytes, chunked or not, is a permanent too_large; params may lower the limit, not raise it."""
    fake.succeed(after_polls=0)
    fake.output, fake.chunked_output = make_png(64, 64), chunked
    assert len(fake.output) > 10_000
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake, max_bytes=5_000), request())
    assert caught.value.error_type == "too_large" and not caught.value.retryable
    # params may lower the limit, never raise it.
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake), request(params={"max_bytes": 1000}))
    assert caught.value.error_type == "too_large"
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake, max_bytes=5_000), request(params={"max_bytes": 50_000}))
    assert caught.value.error_type == "invalid"


async def test_http_output_must_be_an_image(fake: FakeGenerationService) -> None:
    """An output that is not an image (text/html) is a permanent invalid error."""
    fake.succeed(after_polls=0)
    fake.output, fake.output_type = b"<html>oops</html>", "text/html"
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake), request())
    assert caught.value.error_type == "invalid"


async def test_http_invalid_params_fail_before_submitting(fake: FakeGenerationService) -> None:
    """Invalid params are a permanent invalid error raised before anything is submitted."""
    with pytest.raises(PermanentError) as caught:
        await run(http_generator(fake), request(params={"width": 99999}))
    assert caught.value.error_type == "invalid"
    assert fake.requests["generate"] == 0


def test_http_constructor_checks() -> None:
    """HttpGenerator refuses a non-HTTP base URL, a zero timeout and a zero max_bytes."""
    for args, kwargs in ((("ftp://x",), {}), (("http://x",), {"timeout": 0}), (("http://x",), {"max_bytes": 0})):
        with pytest.raises(ValueError):
            HttpGenerator(*args, **kwargs)
