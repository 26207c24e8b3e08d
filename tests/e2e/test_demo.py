"""End-to-end tests of the demo page (client-demo/dist) in headless Chromium, two users on one canvas.

Playwright drives the system Chromium (``CANVASHUB_CHROMIUM``, default
``/usr/bin/chromium``; Playwright's own browser download is never used). The
server runs in this event loop (``server_factory``), so everything here is
async. Every wait is a condition with a timeout, never a fixed sleep.

Screenshots land in ``tests/e2e/artifacts/`` (gitignored). With
``CANVASHUB_UPDATE_DEMO_IMAGE=1`` the two-user screenshot also replaces
``docs/images/demo.png``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Map

from canvashub.server.jobs import new_job_id

from ..support import skip_or_fail

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
except ImportError:  # pragma: no cover - reported by the fixture
    async_playwright = None

CHROMIUM = os.environ.get("CANVASHUB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
DEMO_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo.png"
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.timeout(60)
if async_playwright is not None:
    expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        skip_or_fail("playwright is not installed (make test installs it: pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CANVASHUB_CHROMIUM)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def open_user(browser: Browser, url: str, name: str, state: str = "saved") -> tuple[BrowserContext, Page]:
    """A fresh browser profile (own IndexedDB, storage) named ``name``, with the editor open and its save
    indicator in ``state``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    await context.add_init_script(f"localStorage.setItem('canvashub.user.name', {name!r})")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", state)
    return context, page


async def draw(page: Page, tool_key: str, x: float, y: float, w: float = 140, h: float = 100) -> None:
    """Pick a tool by its shortcut and drag out a shape at viewport-relative (x, y)."""
    box = await page.get_by_test_id("viewport").bounding_box()
    assert box is not None
    await page.keyboard.press(tool_key)
    await page.mouse.move(box["x"] + x, box["y"] + y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + x + w, box["y"] + y + h, steps=4)
    await page.mouse.up()


async def hover(page: Page, x: float, y: float) -> None:
    box = await page.get_by_test_id("viewport").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + x, box["y"] + y, steps=3)


async def element_ids(page: Page) -> set[str]:
    return set(await page.evaluate("[...window.canvashub.elements.keys()]"))


def shot(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / f"{name}.png")


def canvas_url(server, canvas_id: str) -> str:
    return f"{server.http_url}/c/{canvas_id}"


def no_page_errors(*pages: Page) -> None:
    for page in pages:
        assert page.errors == [], page.errors  # type: ignore[attr-defined]


async def test_two_users_shapes_cursors_presence_undo(server_factory, browser):
    """Two browsers share shapes, cursors, presence, selection and save state; undo touches only one's own edits.
    Redo brings the undone shape back for both."""
    server = await server_factory()
    url = canvas_url(server, "e2e-" + secrets.token_hex(4))
    _, alice = await open_user(browser, url, "Alice")
    _, bob = await open_user(browser, url, "Bob")

    # both are listed as present
    for page in (alice, bob):
        await expect(page.get_by_test_id("presence-user")).to_have_count(2)
    await expect(bob.locator('[data-testid="presence-user"][data-name="Alice"]')).to_be_visible()

    # a shape drawn by one appears for the other, and the other way round
    await draw(alice, "r", 120, 120)
    await expect(bob.get_by_test_id("element")).to_have_count(1)
    alice_rect = (await element_ids(alice)).pop()
    await expect(bob.locator(f'[data-testid="element"][data-id="{alice_rect}"]')).to_have_attribute("data-type", "rect")
    await draw(bob, "o", 420, 160)
    await expect(alice.get_by_test_id("element")).to_have_count(2)
    bob_ellipse = (await element_ids(bob) - {alice_rect}).pop()

    # each sees the other's cursor, labelled with the name
    await hover(alice, 300, 420)
    await hover(bob, 640, 360)
    await expect(bob.locator('[data-testid="remote-cursor"][data-name="Alice"]')).to_be_visible()
    await expect(bob.get_by_test_id("remote-cursor")).to_contain_text("Alice")
    await expect(alice.locator('[data-testid="remote-cursor"][data-name="Bob"]')).to_be_visible()

    # the save indicator reaches "Saved" for both writers
    for page in (alice, bob):
        status = page.get_by_test_id("save-status")
        await expect(status).to_have_attribute("data-state", "saved")
        await expect(status).to_contain_text("Saved")

    # Bob's selection is highlighted for Alice
    bobs_shape_for_alice = alice.locator(f'[data-testid="element"][data-id="{bob_ellipse}"]')
    await expect(bobs_shape_for_alice).to_have_class(re.compile(r"\bremote-selected\b"))

    ARTIFACTS.mkdir(exist_ok=True)
    await alice.screenshot(path=shot("two-users-alice"))
    await bob.screenshot(path=shot("two-users-bob"))

    # undo in Alice's tab removes only Alice's rectangle, everywhere; Bob's ellipse stays
    await alice.keyboard.press("Escape")
    await alice.keyboard.press("Control+z")
    for page in (alice, bob):
        await expect(page.get_by_test_id("element")).to_have_count(1)
        await expect(page.locator(f'[data-testid="element"][data-id="{bob_ellipse}"]')).to_be_visible()
    # nothing left for Alice to undo (Bob's change is not hers); redo brings her rectangle back
    await expect(alice.get_by_test_id("undo")).to_be_disabled()
    await alice.get_by_test_id("redo").click()
    await expect(bob.locator(f'[data-testid="element"][data-id="{alice_rect}"]')).to_be_visible()
    await expect(alice.get_by_test_id("save-status")).to_have_attribute("data-state", "saved")
    no_page_errors(alice, bob)


async def test_generation_progress_and_image_for_everyone(server_factory, browser):
    """A generation started in one browser shows progress and its image in both; failures and cancels reach both."""
    server = await server_factory(pattern_step_delay=0.2)
    canvas_id = "e2e-" + secrets.token_hex(4)
    url = canvas_url(server, canvas_id)
    _, alice = await open_user(browser, url, "Alice")
    _, bob = await open_user(browser, url, "Bob")
    await draw(bob, "n", 80, 80, 180, 150)
    await bob.keyboard.type("Ideas for the launch")
    await bob.keyboard.press("Escape")
    await draw(alice, "r", 80, 300, 160, 110)

    await alice.get_by_test_id("generate-prompt").fill("ocean waves")
    await alice.get_by_test_id("generate-button").click()

    # both see the job make progress (events reach every opted-in client), with a placeholder on the canvas
    for page in (alice, bob):
        card = page.get_by_test_id("generation")
        await expect(card).to_have_count(1)
        await expect(card).to_have_attribute("data-status", "running")
        await expect(card).not_to_have_attribute("data-progress", "0")
        await expect(page.get_by_test_id("generation-placeholder")).to_be_visible()
    # the result is an image element, loaded, in both
    for page in (alice, bob):
        await expect(page.get_by_test_id("generation")).to_have_attribute("data-status", "succeeded")
        image = page.get_by_test_id("image")
        await expect(image).to_have_count(1)
        await expect(image).to_have_js_property("complete", True)
        assert await image.evaluate("img => img.naturalWidth") > 0
        await expect(page.get_by_test_id("generation-placeholder")).to_have_count(0)

    await alice.keyboard.press("Escape")
    await hover(alice, 700, 520)
    await hover(bob, 500, 140)
    await expect(alice.get_by_test_id("remote-cursor")).to_be_visible()
    await expect(bob.get_by_test_id("remote-cursor")).to_be_visible()
    await alice.screenshot(path=shot("generation-alice"))
    await bob.screenshot(path=shot("generation-bob"))
    if os.environ.get("CANVASHUB_UPDATE_DEMO_IMAGE"):
        DEMO_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot("generation-alice"), DEMO_IMAGE)

    # a failing job shows its reason to everyone. POST refuses bad params (422), so the job is written
    # straight to the store, like one queued before its generator's params schema tightened.
    await server.hub.store.create_job(new_job_id(), canvas_id, "pattern", "bad", {"palette": "nope"}, None, 1)
    for page in (alice, bob):
        failed = page.locator('[data-testid="generation"][data-status="failed"]')
        await expect(failed).to_have_count(1)
        await expect(failed.get_by_test_id("generation-error")).to_contain_text("palette")

    # a running job can be cancelled by anyone; everyone sees it stop
    await alice.get_by_test_id("generate-prompt").fill("slow stripes")
    await alice.get_by_test_id("generate-button").click()
    running = bob.locator('[data-testid="generation"][data-status="running"]')
    await expect(running).to_have_count(1)
    await running.get_by_test_id("generation-cancel").click()
    for page in (alice, bob):
        await expect(page.locator('[data-testid="generation"][data-status="cancelled"]')).to_have_count(1)
    await expect(alice.get_by_test_id("image")).to_have_count(1)
    no_page_errors(alice, bob)


async def test_offline_edit_survives_reload_and_syncs_on_reconnect(server_factory, browser):
    """An edit made offline survives a reload (service worker, IndexedDB) and reaches the other user on reconnect."""
    server = await server_factory()
    url = canvas_url(server, "e2e-" + secrets.token_hex(4))
    alice_ctx, alice = await open_user(browser, url, "Alice")
    _, bob = await open_user(browser, url, "Bob")
    await draw(alice, "r", 100, 100)
    await expect(bob.get_by_test_id("element")).to_have_count(1)
    # the service worker has cached the app shell (so the page can reload offline)
    await alice.evaluate("navigator.serviceWorker.ready.then(() => true)")

    await alice_ctx.set_offline(True)
    status = alice.get_by_test_id("save-status")
    await expect(status).to_have_attribute("data-state", "offline")
    await expect(status).to_contain_text("Offline")

    await draw(alice, "o", 400, 250)
    await expect(alice.get_by_test_id("element")).to_have_count(2)
    offline_ids = await element_ids(alice)

    # a reload while offline keeps the edit (service worker shell + IndexedDB)
    await alice.reload()
    await expect(alice.get_by_test_id("element")).to_have_count(2)
    await expect(status).to_have_attribute("data-state", "offline")
    await expect(bob.get_by_test_id("element")).to_have_count(1)

    await alice_ctx.set_offline(False)
    await expect(bob.get_by_test_id("element")).to_have_count(2)
    assert await element_ids(bob) == offline_ids
    await expect(status).to_have_attribute("data-state", "saved")
    await expect(bob.get_by_test_id("presence-user")).to_have_count(2)
    no_page_errors(alice, bob)


async def test_viewer_token_is_read_only(server_factory, browser):
    """With tokens required, a viewer sees everything live but cannot change it: the UI is read-only,
    and a change forced through the page's own Yjs document is refused by the server, never reaching
    the editor or storage."""
    from canvashub.server.auth import mint_token

    secret = "e2e-secret-" + "s" * 32
    server = await server_factory(auth_secret=secret)
    canvas_id = "e2e-" + secrets.token_hex(4)
    url = canvas_url(server, canvas_id)
    editor = mint_token(secret, canvas=canvas_id, role="editor", user="alice", name="Alice")
    viewer = mint_token(secret, canvas=canvas_id, role="viewer", user="bob", name="Bob")
    _, alice = await open_user(browser, f"{url}#token={editor}", "Alice")
    _, bob = await open_user(browser, f"{url}#token={viewer}", "Bob")
    await expect(bob.get_by_test_id("view-only")).to_be_visible()
    await expect(alice.get_by_test_id("view-only")).to_be_hidden()

    await draw(alice, "r", 150, 150)
    await expect(bob.get_by_test_id("element")).to_have_count(1)
    rect = (await element_ids(alice)).pop()
    x_before = await alice.evaluate(f"window.canvashub.elements.get({rect!r}).get('x')")

    # the UI offers nothing: dragging the shape and pressing Delete change nothing
    shape = bob.locator(f'[data-testid="element"][data-id="{rect}"]')
    box = await shape.bounding_box()
    assert box is not None
    await bob.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await bob.mouse.down()
    await bob.mouse.move(box["x"] + 300, box["y"] + 200, steps=5)
    await bob.mouse.up()
    await bob.keyboard.press("Delete")
    assert await bob.evaluate(f"window.canvashub.elements.get({rect!r}).get('x')") == x_before

    # forcing a change through the page's Yjs document: the server refuses it (and says so)
    await bob.evaluate(f"window.canvashub.elements.get({rect!r}).set('x', 9999)")
    await expect(bob.get_by_test_id("save-status")).to_have_attribute("data-state", "refused")
    await draw(alice, "o", 500, 300)  # a later change by the editor still reaches the viewer
    await expect(bob.get_by_test_id("element")).to_have_count(2)
    assert await alice.evaluate(f"window.canvashub.elements.get({rect!r}).get('x')") == x_before
    room = server.hub.registry.rooms[canvas_id]
    assert room.document.doc.get("elements", type=Map)[rect]["x"] == x_before
    await bob.screenshot(path=shot("viewer-bob"))
    no_page_errors(alice, bob)


async def test_api_reference_page_renders_offline(browser, live_server) -> None:
    """/docs renders the server's OpenAPI document with no request leaving the server (works offline)."""
    context = await browser.new_context()
    outside: list[str] = []

    async def only_this_server(route) -> None:
        if route.request.url.startswith(live_server.http_url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_this_server)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{live_server.http_url}/docs")
    await expect(page.get_by_text("List canvases (ordered by id)")).to_be_visible()
    await expect(page.get_by_text("/api/canvases/{canvas_id}/generations").first).to_be_visible()
    assert outside == [] and errors == []
    await context.close()


async def test_protocol_switch_hocuspocus_and_y_websocket_edit_together(server_factory, browser):
    """The settings switch moves one tab to the Hocuspocus protocol (/hocuspocus); it and a y-websocket
    tab share shapes and presence, and its save indicator (the provider's durable SyncStatus) reaches
    "saved"."""
    from canvashub.server.hocuspocus import DocumentSession

    server = await server_factory()
    canvas_id = "e2e-" + secrets.token_hex(4)
    url = canvas_url(server, canvas_id)
    _, alice = await open_user(browser, url, "Alice")
    _, bob = await open_user(browser, url, "Bob")

    # Alice switches to Hocuspocus in the settings (the Token popover): the editor reloads with it
    await alice.get_by_test_id("token-toggle").click()
    async with alice.expect_navigation():
        await alice.get_by_test_id("protocol-select").select_option("hocuspocus")
    await expect(alice.locator("body")).to_have_attribute("data-protocol", "hocuspocus")
    await expect(alice.get_by_test_id("save-status")).to_have_attribute("data-state", "saved")
    assert await bob.evaluate("window.canvashub.protocol") == "y-websocket"
    room = server.hub.registry.rooms[canvas_id]
    await expect(bob.get_by_test_id("presence-user")).to_have_count(2)
    assert sum(isinstance(peer, DocumentSession) for peer in room.connections) == 1

    await draw(alice, "r", 120, 120)
    await expect(bob.get_by_test_id("element")).to_have_count(1)
    await draw(bob, "o", 420, 160)
    await expect(alice.get_by_test_id("element")).to_have_count(2)
    await hover(alice, 300, 420)
    await expect(bob.locator('[data-testid="remote-cursor"][data-name="Alice"]')).to_be_visible()
    await hover(bob, 640, 360)
    await expect(alice.locator('[data-testid="remote-cursor"][data-name="Bob"]')).to_be_visible()
    await expect(alice.get_by_test_id("save-status")).to_have_attribute("data-state", "saved")
    assert len(room.document.doc.get("elements", type=Map)) == 2
    await alice.screenshot(path=shot("hocuspocus-alice"))
    no_page_errors(alice, bob)
