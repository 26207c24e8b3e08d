"""Tokens, roles, awareness integrity, limits and HTTP hardening, over real sockets (docs/security.md)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
import websockets

from canvashub.crdt import codec
from canvashub.crdt.awareness import AwarenessEntry, encode_awareness_payload
from canvashub.server.auth import Authenticator, mint_token, parse_ttl, websocket_token
from canvashub.server.errors import AccessDenied, Unauthorized, answer_for

from .js_client import JsClient
from .support import wait_until
from .wire import WireClient, key_updates

SECRET = "test-secret-" + "x" * 32
AUTH = {"auth_secret": SECRET}
UNLIMITED = {"rate_messages_per_second": 0, "rate_bytes_per_second": 0}


def token(canvas: str, role: str, user: str = "u1", name: str | None = None, ttl: float = 300) -> str:
    return mint_token(SECRET, canvas=canvas, role=role, user=user, name=name, ttl=ttl)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def upgrade_status(server, canvas: str, **kwargs) -> int:
    """The HTTP status an upgrade is refused with (fails if it is accepted)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await server.connect(canvas, **kwargs)
    return refused.value.response.status_code


def awareness_frame(client_id: int, clock: int, state: dict) -> bytes:
    return codec.encode_awareness(encode_awareness_payload([AwarenessEntry(client_id, clock, orjson.dumps(state))]))


# -- tokens and modes -------------------------------------------------------------------------


async def test_upgrade_needs_a_valid_token_for_this_canvas(server_factory):
    """No token or a bad one: 401; a token for canvas A on canvas B: 403; both before any document loads.
    Tokens work from ?token= and from Sec-WebSocket-Protocol (``canvashub`` is selected when offered)."""
    server = await server_factory(**AUTH)
    assert await upgrade_status(server, "b") == 401
    assert await upgrade_status(server, "b?token=not-a-token") == 401
    forged = mint_token("another-secret-" + "y" * 32, canvas="b", role="owner", user="x")
    assert await upgrade_status(server, f"b?token={forged}") == 401
    assert await upgrade_status(server, f"b?token={token('a', 'owner')}") == 403
    assert await upgrade_status(server, f"b?token={token('b', 'editor', ttl=-10)}") == 401  # already expired
    assert "b" not in server.hub.registry.rooms and await server.hub.store.load("b") is None

    ws = await server.connect(f"b?token={token('b', 'viewer')}")
    await ws.close()
    ws = await server.connect("b", subprotocols=["canvashub", token("b", "editor")])
    assert ws.subprotocol == "canvashub"
    await ws.close()
    tok = token("team-*", "editor")
    ws = await server.connect("team-red", subprotocols=[tok])
    assert ws.subprotocol == tok  # a browser fails the socket unless one offered protocol is selected
    await ws.close()
    assert await upgrade_status(server, "blue-team", subprotocols=[tok]) == 403


async def test_stock_client_sends_token_both_ways_and_stops_at_expiry(server_factory):
    """The stock y-websocket provider authenticates with params or protocols; at expiry the server
    closes 4401 and the provider gives up (4400-4499 are terminal) instead of reconnecting."""
    server = await server_factory(**AUTH)
    base = f"ws://127.0.0.1:{server.port}/ws"
    by_query = await JsClient.start(base, "exp", token=token("exp", "editor", ttl=60))
    by_protocol = await JsClient.start(base, "exp", protocols=["canvashub", token("exp", "editor", ttl=60)])
    short = await JsClient.start(base, "exp", token=token("exp", "editor", ttl=2))
    try:
        for client in (by_query, by_protocol, short):
            await client.wait_event("synced")
        await by_query.call("set", key="a", fields={"x": 1})
        await by_protocol.wait_event("update", where=lambda e: e["origin"] == "remote")
        started = time.monotonic()
        closed = await short.wait_event("closed", timeout=6, where=lambda e: e.get("terminal"))
        assert closed["code"] == 4401 and time.monotonic() - started < 4
        assert short.errors() == []
    finally:
        for client in (by_query, by_protocol, short):
            await client.close()


async def test_expiry_while_connected_closes_4401(server_factory):
    """A connected socket is closed with 4401 when its token expires, not long before or after."""
    server = await server_factory(**AUTH)
    client = await WireClient.connect(server, "e", token=token("e", "editor", ttl=1.5), sync=True)
    started = time.monotonic()
    assert await client.wait_closed(5) == 4401
    assert 0.3 < time.monotonic() - started < 3.5


async def test_open_mode_warns_loudly_and_lets_everyone_edit(server_factory, capfd):
    """Without an auth secret the server warns NO ACCESS CONTROL and every caller may edit and delete.
    Sockets are told they are editors with every permission; HTTP edits and deletes succeed."""
    server = await server_factory()
    assert "NO ACCESS CONTROL" in capfd.readouterr().err
    client = await WireClient.connect(server, "open", sync=True)
    access = await client.wait(lambda: client.events_of("access"), 5, "access event")
    assert access[0]["role"] == "editor" and all(access[0]["can"].values())
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.patch("/api/canvases/open/elements/e", json={"x": 1})).status_code == 200
        assert (await http.delete("/api/canvases/open")).status_code == 204
    await client.close()


def test_cli_mints_tokens_the_server_accepts():
    """The `token` command mints a token the server accepts, with its claims and TTL; a short secret exits 2."""
    env = {**os.environ, "CANVASHUB_AUTH_SECRET": SECRET}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvashub.server",
            "token",
            "--canvas",
            "c1",
            "--role",
            "editor",
            "--user",
            "ann",
            "--name",
            "Ann",
            "--ttl",
            "1h",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    principal = Authenticator(secret=SECRET).authenticate(out.stdout.strip())
    assert (principal.user_id, principal.name, principal.role, principal.canvas) == ("ann", "Ann", "editor", "c1")
    assert 3500 < principal.expires_at - time.time() <= 3600
    short = subprocess.run(
        [sys.executable, "-m", "canvashub.server", "token", "--canvas", "c1", "--role", "editor", "--user", "ann"],
        env={**os.environ, "CANVASHUB_AUTH_SECRET": "short"},
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2 and "at least 32 bytes" in short.stderr


def test_public_key_tokens_and_algorithm_confusion(tmp_path):
    """RS256 and ES256 tokens verify against the configured public key; HS256 tokens signed with the
    public key's PEM, unsigned tokens and other keys' tokens are refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys = (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1()))
    for private in keys:
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        key_file = tmp_path / f"{algorithm}.pem"
        key_file.write_text(pem)
        for configured in (pem, str(key_file)):
            auth = Authenticator(public_key=configured)
            good = mint_token(private, canvas="*", role="owner", user="k", algorithm=algorithm)
            assert auth.authenticate(good).role == "owner"
            confused = hs256_by_hand(
                {"sub": "k", "role": "owner", "canvas": "*", "exp": time.time() + 60}, pem.encode()
            )  # PyJWT itself refuses to make this one
            unsigned = jwt.encode(
                {"sub": "k", "role": "owner", "canvas": "*", "exp": time.time() + 60}, None, algorithm="none"
            )
            other = mint_token(
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if algorithm == "RS256"
                else ec.generate_private_key(ec.SECP256R1()),
                canvas="*",
                role="owner",
                user="k",
                algorithm=algorithm,
            )
            for bad in (confused, unsigned, other):
                with pytest.raises(Unauthorized) as refused:
                    auth.authenticate(bad)
                assert answer_for(refused.value).status == 401


def hs256_by_hand(claims: dict, key: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(orjson.dumps(claims))
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def test_token_claims_are_checked():
    """Tokens without sub or exp, or with a bad role or canvas claim, are refused (not crashed on).
    Secrets under 32 bytes are rejected; TTLs parse as seconds, m, h and d; a ?token= wins over a protocol token,
    and the protocol selected is canvashub when offered, else the token itself."""
    auth = Authenticator(secret=SECRET)
    now = time.time()
    for claims in (
        {"role": "owner", "canvas": "*", "exp": now + 60},  # no sub
        {"sub": "a", "role": "root", "canvas": "*", "exp": now + 60},  # not a role
        {"sub": "a", "role": ["owner"], "canvas": "*", "exp": now + 60},  # not a string: 401, not a crash
        {"sub": "a", "role": "owner", "canvas": ["*"], "exp": now + 60},
        {"sub": "a", "role": "owner", "canvas": "a/b", "exp": now + 60},
        {"sub": "a", "role": "owner", "canvas": "*"},
    ):  # no expiry
        with pytest.raises(AccessDenied):
            auth.authenticate(jwt.encode(claims, SECRET, algorithm="HS256"))
    with pytest.raises(ValueError):
        Authenticator(secret="too-short")
    assert parse_ttl("90") == 90 and parse_ttl("15m") == 900 and parse_ttl("1h") == 3600 and parse_ttl("2d") == 172800
    assert websocket_token([("token", "q")], ["canvashub", "a.b.c"]) == ("q", "canvashub")
    assert websocket_token([], ["a.b.c"]) == ("a.b.c", "a.b.c")
    assert websocket_token([], []) == (None, None)


# -- roles ---------------------------------------------------------------------------------------


async def test_viewer_updates_are_dropped_never_stored_and_told_once(server_factory):
    """A viewer sends 1,000 updates and a sync step 2: the document's state vector is unchanged, nothing
    is stored or relayed, and the viewer is told once (auth "permission denied" + a ``denied`` event)."""
    server = await server_factory(**AUTH, **UNLIMITED)
    editor = await WireClient.connect(server, "roles", token=token("roles", "editor", "ed"), sync=True)
    _, updates = key_updates(3, "base")
    for update in updates:
        await editor.send_update(update)
    await editor.wait_save(where=lambda e: e["through"] == 3)
    viewer = await WireClient.connect(server, "roles", token=token("roles", "viewer", "vi"), sync=True)
    await viewer.wait(lambda: len(viewer.elements()) == 3, 5, "viewer synced")
    access = viewer.events_of("access")[0]
    assert access["role"] == "viewer" and access["can"] == {
        "edit": False,
        "delete": False,
        "restore": False,
        "generate": False,
    }
    room = server.hub.registry.rooms["roles"]
    state_before = room.document.doc.get_state()
    stored_before = await server.hub.store.load("roles")
    editor_frames = len(editor.frames)

    viewer_doc, viewer_updates = key_updates(1000, "v")
    for update in viewer_updates:
        await viewer.send_update(update)
    await viewer.ws.send(codec.encode_sync_step2(viewer_doc.get_update()))
    await viewer.barrier()

    assert room.document.doc.get_state() == state_before
    assert [f for f in viewer.frames if f[:1] == b"\x02"] == [
        codec.encode_auth_denied("read-only: role 'viewer' may not edit this canvas")
    ]
    assert len(viewer.events_of("denied")) == 1
    await editor.barrier()
    assert not [f for f in editor.frames[editor_frames:] if f[:1] == b"\x00"]  # nothing relayed
    assert server.hub.persister.backlog_updates == 0
    stored_after = await server.hub.store.load("roles")
    assert stored_after.updates == stored_before.updates and stored_after.snapshot == stored_before.snapshot
    assert viewer.close_code is None  # the viewer stays connected and keeps receiving
    await editor.send_update(key_updates(1, "late")[1][0])
    await viewer.wait(lambda: "late0" in viewer.elements(), 5, "viewer receives later edits")
    await editor.close(), await viewer.close()


async def test_viewer_presence_is_relayed_only_if_configured(server_factory):
    """A viewer's presence reaches others only with viewer_awareness on, and then under the token's identity."""
    for relay in (False, True):
        server = await server_factory(**AUTH, viewer_awareness=relay)
        watcher = await WireClient.connect(server, "p", token=token("p", "editor", "w"))
        viewer = await WireClient.connect(server, "p", token=token("p", "viewer", "v", "Vera"))
        await viewer.ws.send(awareness_frame(4242, 1, {"cursor": {"x": 1}}))
        await viewer.barrier()
        await watcher.barrier()
        states = watcher.awareness_states()
        assert (4242 in states) is relay
        if relay:
            assert states[4242]["user"] == {"id": "v", "name": "Vera"}
        await watcher.close(), await viewer.close()


async def test_http_roles(server_factory):
    """Viewers read; editors edit; owners also delete, restore and generate (each configurable);
    401 without a valid token, 403 for another canvas or a missing role; listing needs a * token."""
    server = await server_factory(**AUTH, pattern_step_delay=0.01)
    viewer, editor, owner = (bearer(token("h", role)) for role in ("viewer", "editor", "owner"))
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        missing = await http.get("/api/canvases/h")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/api/canvases/h", headers={"Authorization": "Bearer junk"})).status_code == 401
        assert (await http.patch("/api/canvases/h/elements/e", json={"x": 1}, headers=viewer)).status_code == 403
        assert (await http.patch("/api/canvases/h/elements/e", json={"x": 1}, headers=editor)).status_code == 200
        assert (await http.get("/api/canvases/h", headers=viewer)).json()["elements"] == {"e": {"x": 1}}
        assert (await http.get("/api/canvases/other", headers=owner)).status_code == 403
        assert (await http.get("/api/canvases", headers=owner)).status_code == 403
        everything = bearer(token("*", "viewer"))
        assert [c["id"] for c in (await http.get("/api/canvases", headers=everything)).json()["canvases"]] == ["h"]
        generate = {"generator": "pattern", "prompt": "p"}
        assert (await http.post("/api/canvases/h/generations", json=generate, headers=editor)).status_code == 403
        created = await http.post("/api/canvases/h/generations", json=generate, headers=owner)
        assert created.status_code == 202
        job_id = created.json()["job"]["id"]
        assert (await http.get(f"/api/generations/{job_id}", headers=viewer)).status_code == 200
        assert (await http.get(f"/api/generations/{job_id}", headers=bearer(token("zz", "owner")))).status_code == 403
        assert (await http.post(f"/api/generations/{job_id}/cancel", headers=editor)).status_code == 403
        restore = await http.post("/api/canvases/h/versions/1/restore", headers=editor)
        assert restore.status_code == 403
        assert (await http.delete("/api/canvases/h", headers=editor)).status_code == 403
        assert (await http.delete("/api/canvases/h", headers=owner)).status_code == 204

    relaxed = await server_factory(**AUTH, role_to_generate="editor", role_to_delete="editor")
    async with httpx.AsyncClient(base_url=relaxed.http_url) as http:
        assert (
            await http.post("/api/canvases/h/generations", json={"generator": "pattern"}, headers=editor)
        ).status_code == 202
        await http.patch("/api/canvases/h/elements/e", json={"x": 1}, headers=editor)
        assert (await http.delete("/api/canvases/h", headers=editor)).status_code == 204


async def test_generation_requests_on_the_events_channel_check_the_role(server_factory):
    """An editor's generate request on the events channel is answered forbidden (generating needs owner)."""
    server = await server_factory(**AUTH)
    client = await WireClient.connect(server, "g", token=token("g", "editor"))
    await client.ws.send(
        codec.encode_event(orjson.dumps({"type": "generate", "request_id": "r1", "generator": "pattern"}))
    )
    response = await client.wait(lambda: client.events_of("response"), 5, "response")
    assert response[0]["ok"] is False and response[0]["error"]["type"] == "forbidden"
    await client.close()


async def test_events_channel_cannot_cancel_another_canvases_job(server_factory):
    """A socket on one canvas cannot cancel another canvas's job by id: not_found, and the job is untouched."""
    server = await server_factory(**AUTH, pattern_step_delay=5)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        job = (
            await http.post(
                "/api/canvases/b/generations", json={"generator": "pattern"}, headers=bearer(token("b", "owner"))
            )
        ).json()["job"]
    client = await WireClient.connect(server, "a", token=token("a", "owner"))
    await client.ws.send(
        codec.encode_event(orjson.dumps({"type": "cancel_generation", "request_id": "r", "job_id": job["id"]}))
    )
    response = await client.wait(lambda: client.events_of("response"), 5, "response")
    assert response[0]["ok"] is False and response[0]["error"]["type"] == "not_found"
    stored = await server.hub.store.get_job(job["id"])
    assert not stored.cancel_requested and stored.status != "cancelled"
    await client.close()


async def test_cross_site_writes_are_refused_even_in_open_mode(server_factory):
    """A page on another site could POST to an open-mode server its visitor reaches (a simple request
    needs no preflight): writes with a foreign Origin are 403 and change nothing."""
    server = await server_factory()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        hostile = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        refused = await http.post("/api/canvases/csrf/updates", content=key_updates(1, "x")[1][0], headers=hostile)
        assert refused.status_code == 403
        assert (
            await http.patch("/api/canvases/csrf/elements/e", json={"x": 1}, headers={"Origin": "https://evil.example"})
        ).status_code == 403
        assert (await http.get("/api/canvases/csrf")).status_code == 404
        same = {"Origin": f"http://127.0.0.1:{server.port}"}
        assert (await http.patch("/api/canvases/csrf/elements/e", json={"x": 1}, headers=same)).status_code == 200


def test_redaction_keeps_uvicorn_access_log_arguments_usable():
    """Redacting a token from a uvicorn access-log record removes it and keeps the record's args formattable."""
    import logging

    from canvashub.server.logs import RedactFilter

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/canvases/a?token=eyJhbGciOi.eyJzdWIi.c2ln", "1.1", 200),
        None,
    )
    RedactFilter().filter(record)
    assert record.args[2] == "/api/canvases/a?token=[redacted]" and record.args[4] == 200
    assert "eyJ" not in record.getMessage()


# -- awareness integrity ----------------------------------------------------------------------


async def test_awareness_for_a_foreign_client_id_is_rejected_and_identity_comes_from_the_token(server_factory):
    """Presence carries the token's user id and name, and another socket's client id cannot be written or removed.
    The claimed name is replaced, other fields kept; a hijack is dropped for current watchers and newcomers alike."""
    server = await server_factory(**AUTH)
    alice = await WireClient.connect(server, "aw", token=token("aw", "editor", "alice", "Alice"))
    bob = await WireClient.connect(server, "aw", token=token("aw", "editor", "bob", "Bob"))
    carol = await WireClient.connect(server, "aw", token=token("aw", "viewer", "carol"))
    # Alice claims to be Mallory: presence shows the token's identity, keeping her other fields.
    await alice.ws.send(awareness_frame(111, 1, {"user": {"name": "Mallory", "color": "#f00"}, "cursor": [1, 2]}))
    await alice.barrier()
    await carol.wait(lambda: 111 in carol.awareness_states(), 5, "alice's presence")
    assert carol.awareness_states()[111] == {
        "user": {"name": "Alice", "color": "#f00", "id": "alice"},
        "cursor": [1, 2],
    }
    # Bob writes (a newer clock) to Alice's client id, and tries to remove it: both rejected.
    carol_frames = len(carol.frames)
    await bob.ws.send(awareness_frame(111, 5, {"user": {"name": "Alice (hijacked)"}}))
    await bob.ws.send(codec.encode_awareness(encode_awareness_payload([AwarenessEntry(111, 6, b"null")])))
    await bob.barrier()
    await carol.barrier()
    assert not [f for f in carol.frames[carol_frames:] if f[:1] == b"\x01" and b"hijacked" in f]
    assert carol.awareness_states()[111]["user"]["name"] == "Alice"
    newcomer = await WireClient.connect(server, "aw", token=token("aw", "viewer", "dan"))
    await newcomer.wait(lambda: 111 in newcomer.awareness_states(), 5, "presence for newcomers")
    assert newcomer.awareness_states()[111]["user"] == {"name": "Alice", "color": "#f00", "id": "alice"}
    for client in (alice, bob, carol, newcomer):
        await client.close()


# -- limits ------------------------------------------------------------------------------------


async def test_message_and_byte_rates_close_1008(server_factory):
    """A socket over its message rate or its byte rate is closed 1008, after answering at most about a burst."""
    server = await server_factory(rate_messages_per_second=10, rate_messages_burst=20)
    client = await WireClient.connect(server, "rate")
    for _ in range(100):
        if client.close_code is not None:
            break
        try:
            await client.ws.send(codec.encode_query_awareness())
        except websockets.ConnectionClosed:
            break
    assert await client.wait_closed(5) == 1008
    assert sum(1 for f in client.frames if f[:1] == b"\x01") <= 30  # at most the burst (plus refill) answered

    server = await server_factory(max_frame_bytes=4096, rate_bytes_per_second=1000, rate_bytes_burst=4096)
    client = await WireClient.connect(server, "bytes")
    big = awareness_frame(7, 1, {"pad": "x" * 3000})
    for clock in range(1, 6):
        try:
            await client.ws.send(awareness_frame(7, clock, {"pad": "x" * 3000}) if clock > 1 else big)
        except websockets.ConnectionClosed:
            break
    assert await client.wait_closed(5) == 1008


async def test_oversize_frame_closes_1009_with_auth_on(server_factory):
    """A frame over max_frame_bytes closes an authenticated socket with 1009."""
    server = await server_factory(**AUTH, max_frame_bytes=64 * 1024)
    client = await WireClient.connect(server, "big", token=token("big", "editor"))
    await client.ws.send(b"\x00\x02" + b"\x00" * 100_000)
    assert await client.wait_closed(5) == 1009


async def test_connection_limits_per_ip_and_per_canvas(server_factory):
    """Past the per-address limit upgrades are refused 403 until a socket closes; a full canvas closes newcomers 1013.
    Other canvases still accept sockets while one is full."""
    server = await server_factory(max_connections_per_ip=2)
    first, second = await server.connect("ip1"), await server.connect("ip2")
    assert await upgrade_status(server, "ip3") == 403
    await first.close()
    sockets = next(r.app for r in server.app.routes if getattr(r, "path", "") == "/ws/{canvas_id}")
    await wait_until(lambda: sockets.ip_connections.counts.get("127.0.0.1") == 1, 5, "slot released")
    third = await server.connect("ip3")
    await second.close(), await third.close()

    server = await server_factory(max_connections_per_canvas=2)
    a, b = await WireClient.connect(server, "full"), await WireClient.connect(server, "full")
    c = await WireClient.connect(server, "full")
    assert await c.wait_closed(5) == 1013
    other = await WireClient.connect(server, "not-full")
    await other.barrier()
    await a.close(), await b.close(), await other.close()


async def test_document_size_cap_refuses_growth_4413_and_413(server_factory):
    """Past the cap, a socket's write is refused (close 4413, save event failed) and an HTTP write is
    413; what was accepted before the cap is stored and nothing after it."""
    cap = 20_000
    server = await server_factory(max_document_bytes=cap, **UNLIMITED)
    writer = await WireClient.connect(server, "cap", sync=True)
    doc, updates = key_updates(0, "k")
    from pycrdt import Map

    elements = doc.get("elements", type=Map)
    captured: list[bytes] = []
    doc.observe(lambda e: captured.append(e.update))
    sent = 0
    for i in range(60):
        elements[f"k{i}"] = "x" * 1000
        try:
            await writer.send_update(captured[-1])
            sent += 1
        except websockets.ConnectionClosed:
            break
    assert await writer.wait_closed(5) == 4413
    assert writer.events_of("save")[-1]["status"] == "failed"
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.patch("/api/canvases/cap/elements/more", json={"blob": "y" * 5000})
        assert response.status_code == 413 and response.json()["error"]["type"] == "too_large"
        small = await http.patch("/api/canvases/cap/elements/tiny", json={"x": 1})
        assert small.status_code == 200  # under the cap is still fine
    await server.hub.persister.flush(5)
    stored = await server.hub.store.load("cap")
    total = len(stored.snapshot or b"") + sum(len(u) for _, u in stored.updates)
    assert total <= cap + 100 and len(stored.updates) < sent


async def test_bad_origin_is_refused_403_at_upgrade(server_factory):
    """An upgrade from an Origin not allowed is refused 403; allowed, same-host and absent Origins are accepted.
    With allowed_origins "*" any Origin is accepted."""
    server = await server_factory(allowed_origins="https://app.example")
    assert await upgrade_status(server, "o", origin="https://evil.example") == 403
    for origin in (f"http://127.0.0.1:{server.port}", "https://app.example", None):
        ws = await server.connect("o", origin=origin)
        await ws.close()
    any_origin = await server_factory(allowed_origins="*")
    await (await any_origin.connect("o", origin="https://evil.example")).close()


async def test_slow_request_headers_are_dropped_after_the_preauth_timeout(server_factory):
    """A connection that never sends or never finishes its request headers is closed after preauth_timeout.
    An upgraded socket is not affected, however long it lives."""
    server = await server_factory(preauth_timeout=0.5)
    established = await WireClient.connect(server, "pre", sync=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws/pre HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert await asyncio.wait_for(silent_reader.read(), 5) == b""
    assert 0.4 < time.monotonic() - started < 3
    writer.close(), silent_writer.close()
    await established.barrier()  # an upgraded socket is not affected, however long it lives
    assert established.close_code is None
    await established.close()


# -- HTTP hardening ----------------------------------------------------------------------------


async def test_cors_is_explicit_and_json_bodies_are_bounded(server_factory):
    """CORS headers go only to listed origins, and to none by default; a JSON body over the limit is 413."""
    server = await server_factory(allowed_origins="https://app.example", max_json_body_bytes=100)
    preflight = {"Access-Control-Request-Method": "PATCH", "Access-Control-Request-Headers": "authorization"}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        ok = await http.options("/api/canvases/c", headers={"Origin": "https://app.example", **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = await http.options("/api/canvases/c", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in bad.headers
        plain = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
        big = await http.patch("/api/canvases/c/elements/e", json={"x": "y" * 200})
        assert big.status_code == 413 and big.json()["error"]["type"] == "too_large"
    default = await server_factory()
    async with httpx.AsyncClient(base_url=default.http_url) as http:
        response = await http.get("/healthz", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_tokens_never_appear_in_logs(process_server_factory, tmp_path):
    """A server at debug level sees tokens in queries, subprotocols and headers, valid, expired and
    forged; its whole log is captured and no token string appears in it."""
    log_path = str(tmp_path / "server.log")
    server = await process_server_factory(
        {"CANVASHUB_AUTH_SECRET": SECRET, "CANVASHUB_LOG_LEVEL": "debug", "CANVASHUB_DATA_DIR": str(tmp_path / "data")},
        log_path=log_path,
    )
    used = [
        token("lg", "editor", "u"),
        token("lg", "viewer", "v"),
        token("lg", "editor", ttl=-5),
        token("other", "owner"),
        mint_token("forged-" + "z" * 32, canvas="lg", role="owner", user="f"),
        token("lg", "editor", ttl=1),
    ]
    for tok in used:
        try:
            ws = await server.connect(f"lg?events=1&token={tok}")
            await ws.send(codec.encode_sync_step1(b"\x00"))
            await ws.send(codec.encode_update(key_updates(1, "x")[1][0]))
            await ws.close()
        except (websockets.InvalidStatus, websockets.ConnectionClosed):  # the ttl=1 token may expire meanwhile
            pass
        try:
            await (await server.connect("lg", subprotocols=["canvashub", tok])).close()
        except (websockets.InvalidStatus, websockets.ConnectionClosed):
            pass
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for tok in used:
            await http.get("/api/canvases/lg", headers=bearer(tok))
            await http.get(f"/api/canvases/lg?token={tok}")
            await http.patch("/api/canvases/lg/elements/e", json={"x": 1}, headers=bearer(tok))
    assert await server.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it handled after a clean shutdown
    text = await asyncio.to_thread(Path(log_path).read_text)
    assert "ws_auth_refused" in text and "ws_open" in text  # the log did see these connections
    for tok in used:
        assert tok not in text
        assert tok.split(".")[2] not in text  # not even the signature
