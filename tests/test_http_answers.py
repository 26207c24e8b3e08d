"""Consistent HTTP answers, on SQLite and on Postgres: every refusal is the documented JSON error.

Unmatched routes and methods, NUL bytes, content negotiation and its ETags, generation params checked
at ``POST``, idempotency keys, unknown canvases, and numbers that keep their JSON type.
"""

from __future__ import annotations

import httpx
import pytest

from .test_http_api import assert_error, assert_strong_etag


@pytest.fixture
async def http(server_factory, storage_backend):
    """An HTTP client on a live server over each store."""
    server = await server_factory(**storage_backend.overrides, pattern_step_delay=0.0)
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        yield client


async def test_unmatched_routes_answer_json_404(http):
    """A path no route matches is a JSON 404, whatever the method (not a plain-text 404 or 405)."""
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        assert_error(await http.request(method, "/api/nope"), 404, "not_found")
    assert_error(await http.get("/api/canvases/x/nothing/here"), 404, "not_found")


async def test_wrong_method_is_json_405_listing_every_allowed_method(http):
    """A method a path does not accept is a JSON 405 whose ``Allow`` lists every method the path accepts."""
    response = await http.put("/api/canvases/x", content=b"{}")
    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD", "DELETE"}
    response = await http.delete("/api/canvases/x/generations")
    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}


async def test_nul_bytes_anywhere_are_400(http):
    """A NUL character in a query parameter, a path or a JSON body is a JSON 400 on every store."""
    assert_error(await http.get("/api/canvases", params={"cursor": "\x00"}), 400, "invalid")
    assert_error(await http.get("/api/canvases/a/generations", params={"cursor": "a\x00"}), 400, "invalid")
    assert_error(await http.get("/api/generations/ab%00cd"), 400, "invalid")
    body = {"generator": "pattern", "prompt": "a\u0000b"}
    assert_error(await http.post("/api/canvases/a/generations", json=body), 400, "invalid")
    body = {"generator": "pattern", "prompt": "ok", "idempotency_key": "k\u0000"}
    assert_error(await http.post("/api/canvases/a/generations", json=body), 400, "invalid")
    assert_error(await http.patch("/api/canvases/a/elements/e", json={"text": "\u0000"}), 400, "invalid")
    assert_error(await http.patch("/api/canvases/a/elements/e", json={"k\u0000": 1}), 400, "invalid")


async def test_json_and_binary_exports_have_their_own_etags_and_vary_on_accept(http):
    """The JSON and the binary export of one canvas are two representations: different strong ETags,
    ``Vary: Accept``, and ``If-None-Match`` compares with the representation asked for."""
    assert (await http.patch("/api/canvases/neg/elements/e", json={"x": 1})).status_code == 200
    as_json = await http.get("/api/canvases/neg")
    as_binary = await http.get("/api/canvases/neg", headers={"Accept": "application/octet-stream"})
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_binary.headers["content-type"] == "application/octet-stream"
    json_tag, binary_tag = as_json.headers["etag"], as_binary.headers["etag"]
    assert_strong_etag(json_tag)
    assert json_tag != binary_tag and binary_tag.startswith('"') and not binary_tag.startswith("W/")
    assert "accept" in as_json.headers["vary"].lower() and "accept" in as_binary.headers["vary"].lower()
    binary = {"Accept": "application/octet-stream"}
    assert (await http.get("/api/canvases/neg", headers={**binary, "If-None-Match": binary_tag})).status_code == 304
    assert (await http.get("/api/canvases/neg", headers={**binary, "If-None-Match": json_tag})).status_code == 200
    assert (await http.get("/api/canvases/neg", headers={"If-None-Match": json_tag})).status_code == 304
    # Either representation's ETag is a valid If-Match for a write.
    ok = await http.patch("/api/canvases/neg/elements/e", json={"x": 2}, headers={"If-Match": binary_tag})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "accept, binary",
    [
        ("application/octet-stream", True),
        ("application/json", False),
        ("*/*", False),
        ("application/octet-stream;q=0, application/json", False),
        ("application/json;q=0.5, application/octet-stream", True),
        ("application/json;q=0.9, application/octet-stream;q=0.1", False),
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),
        ("application/x-octet-stream-nope", None),
    ],
)
async def test_accept_is_parsed_with_q_values(http, accept, binary):
    """The export's format follows the highest-q acceptable media type, not a substring; nothing
    acceptable is a JSON 406."""
    assert (await http.patch("/api/canvases/q/elements/e", json={"x": 1})).status_code == 200
    response = await http.get("/api/canvases/q", headers={"Accept": accept})
    if binary is None:
        assert_error(response, 406, "not_acceptable")
    else:
        assert response.status_code == 200
        assert (response.headers["content-type"] == "application/octet-stream") is binary


async def test_generation_params_are_checked_when_posted(http):
    """Params a generator would refuse are a 422 at ``POST`` with the offending path, not a failed job."""
    for params, path in [
        ({"duration": 100000}, "params.duration"),
        ({"width": 3}, "params.width"),
        ({"palette": "nope"}, "params.palette"),
        ({"width": "wide"}, "params.width"),
    ]:
        response = await http.post("/api/canvases/g/generations", json={"generator": "pattern", "params": params})
        error = assert_error(response, 422, "invalid")
        assert path in [e["path"] for e in error["errors"]], error
    ok = await http.post(
        "/api/canvases/g/generations",
        json={"generator": "pattern", "params": {"duration": 0, "width": 64, "palette": "warm"}},
    )
    assert ok.status_code == 202, ok.text


async def test_an_idempotency_key_reused_with_another_body_is_409(http):
    """The same key with the same body replays the first answer (202, the same job, ``created`` false);
    with a different body it is a 409."""
    body = {"generator": "pattern", "prompt": "sea", "idempotency_key": "once"}
    first = await http.post("/api/canvases/idem/generations", json=body)
    again = await http.post("/api/canvases/idem/generations", json=body)
    assert first.status_code == 202 and again.status_code == 202, (first.text, again.text)
    assert again.json()["job"]["id"] == first.json()["job"]["id"] and again.json()["created"] is False
    assert_error(await http.post("/api/canvases/idem/generations", json={**body, "prompt": "sky"}), 409, "conflict")
    other = {**body, "params": {"width": 64}}
    assert_error(await http.post("/api/canvases/idem/generations", json=other), 409, "conflict")


async def test_unknown_canvas_is_the_same_404_on_every_per_canvas_endpoint(http):
    """Reads of a canvas that does not exist answer one 404 ``not_found``, whichever endpoint."""
    for path in (
        "/api/canvases/ghost",
        "/api/canvases/ghost/versions",
        "/api/canvases/ghost/versions/1",
        "/api/canvases/ghost/generations",
    ):
        error = assert_error(await http.get(path), 404, "not_found")
        assert "ghost" in error["message"]
    assert_error(await http.delete("/api/canvases/ghost"), 404, "not_found")


async def test_numbers_keep_their_json_type(http):
    """An integer written as JSON reads back as an integer, a fraction as a fraction (JS-safe numbers)."""
    body = {"x": 10, "y": -3, "w": 2.5, "big": 2**53 - 1, "zero": 0, "nested": {"n": 7, "list": [1, 1.5]}}
    assert (await http.patch("/api/canvases/num/elements/e", json=body)).status_code == 200
    element = (await http.get("/api/canvases/num")).json()["elements"]["e"]
    assert element == body
    assert type(element["x"]) is int and type(element["w"]) is float and type(element["nested"]["n"]) is int
