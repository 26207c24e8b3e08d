"""The OpenAPI document: it describes every HTTP endpoint, and live servers on both stores keep to it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import positive_data_acceptance
from starlette.routing import Mount, Route

from canvashub.server.app import create_app
from canvashub.server.openapi import OPERATIONS, document
from canvashub.server.settings import Settings

from .support import PG_DSN, free_port, skip_or_fail, with_search_path


def served_operations(routes: list, prefix: str = "") -> set[tuple[str, str]]:
    found = set()
    for route in routes:
        if isinstance(route, Mount) and route.path == "/api":
            found |= served_operations(route.routes, "/api")
        elif isinstance(route, Route):
            path = prefix + route.path.replace(":int", "")
            found |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return found


def test_every_route_is_documented_and_every_documented_route_served(tmp_path) -> None:
    """The router and /openapi.json list the same (method, path) pairs (demo pages aside)."""
    app = create_app(Settings(data_dir=str(tmp_path)))
    served = served_operations(app.routes) - {("GET", "/c/{canvas_id}")}
    documented = {(method.upper(), path) for path, methods in document("test")["paths"].items() for method in methods}
    assert served == documented


def test_request_schemas_are_the_handlers_own_and_valid() -> None:
    """Every JSON schema in the document is valid Draft 2020-12 (the dialect of OpenAPI 3.1)."""
    spec = document("test")
    for methods in spec["paths"].values():
        for operation in methods.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
            for answer in operation["responses"].values():
                for media in answer.get("content", {}).values():
                    Draft202012Validator.check_schema(media["schema"])
    assert len(OPERATIONS) == sum(len(methods) for methods in spec["paths"].values())


async def _create_schema(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await admin.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await admin.close()


async def _drop_schema(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api_server(request) -> Iterator[str]:
    """``canvashub serve`` on one store, for the whole module."""
    schema = None
    data_dir = tempfile.mkdtemp(prefix="canvashub-openapi-")
    env = {**os.environ, "CANVASHUB_DATA_DIR": data_dir}
    env.pop("DATABASE_URL", None)
    if request.param == "postgres":
        schema = f"t_openapi_{os.getpid()}"
        try:
            asyncio.run(_create_schema(schema))
        except (OSError, TimeoutError) as exc:
            skip_or_fail(f"Postgres unreachable at {PG_DSN}: {exc!r}")
        env["DATABASE_URL"] = with_search_path(PG_DSN, schema)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "canvashub.server", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy in 30 s"
            time.sleep(0.05)  # poll interval of a wait bounded by its deadline
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        if schema is not None:
            asyncio.run(_drop_schema(schema))


# Bodies whose validity JSON Schema cannot express: a Yjs update (binary), element fields (values Yjs can
# encode: no NUL, no lone surrogate, safe integers, bounded depth) and a generator's own parameters. Their
# refusals are documented answers (400/422); schemathesis's "valid data must be accepted" heuristic is off
# for them, every other check stays on.
SEMANTIC_BODIES = {
    "POST /api/canvases/{canvas_id}/updates",
    "PATCH /api/canvases/{canvas_id}/elements/{element_id}",
    "POST /api/canvases/{canvas_id}/generations",
}


def conformance_test(operation):
    """A hypothesis test of one operation: generated requests, every schemathesis check on the answers."""
    excluded = [positive_data_acceptance] if operation.label in SEMANTIC_BODIES else []

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    return check


def test_live_server_keeps_to_the_document(api_server: str) -> None:
    """schemathesis on every operation: no undocumented status (no 500), every answer matches the document."""
    schema = schemathesis.openapi.from_url(f"{api_server}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        check = conformance_test(operation)
        try:
            check()
        except BaseException as exc:  # collect every operation's failure (a FailureGroup), then report them all
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures[operation.label] = str(exc)[:2000]
    # schemathesis leaves out the document's own URL (/openapi.json); every other operation ran
    assert operations == len(OPERATIONS) - 1
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def response_schema(spec: dict, method: str, path: str, status: int, media: str = "application/json") -> dict:
    return spec["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]


async def test_real_answers_match_their_documented_schemas(live_server) -> None:
    """A canvas with elements, versions and a finished generation: each answer validates against the document."""
    spec = document("test")

    def valid(body: object, method: str, path: str, status: int) -> None:
        Draft202012Validator(response_schema(spec, method, path, status)).validate(body)

    async with httpx.AsyncClient(base_url=live_server.http_url, timeout=30) as http:
        patched = await http.patch("/api/canvases/doc1/elements/e1", json={"type": "rect", "x": 1, "fill": "#fff"})
        assert patched.status_code == 200
        valid(patched.json(), "patch", "/api/canvases/{canvas_id}/elements/{element_id}", 200)
        created = await http.post("/api/canvases/doc1/generations", json={"generator": "pattern", "prompt": "p"})
        assert created.status_code == 202
        valid(created.json(), "post", "/api/canvases/{canvas_id}/generations", 202)
        job_id = created.json()["job"]["id"]
        for _attempt in range(300):
            job = (await http.get(f"/api/generations/{job_id}")).json()
            if job["status"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.1)  # poll interval of a wait bounded to 30 s
        else:
            raise AssertionError(f"generation still {job['status']} after 30 s")
        valid(job, "get", "/api/generations/{job_id}", 200)
        for path, template in [
            ("/api/canvases", "/api/canvases"),
            ("/api/canvases/doc1", "/api/canvases/{canvas_id}"),
            ("/api/canvases/doc1/versions", "/api/canvases/{canvas_id}/versions"),
            ("/api/canvases/doc1/generations", "/api/canvases/{canvas_id}/generations"),
            ("/readyz", "/readyz"),
        ]:
            answer = await http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            valid(answer.json(), "get", template, 200)
        listed = (await http.get("/api/canvases/doc1/generations")).json()["generations"]
        assert listed and listed[0]["id"] == job_id
        refused = await http.patch("/api/canvases/doc1/elements/e1", json={"x": "\u0000"})
        assert refused.status_code == 400
        valid(refused.json(), "patch", "/api/canvases/{canvas_id}/elements/{element_id}", 400)
