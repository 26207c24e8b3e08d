"""The demo's save indicator says "Saved" only for what is in the database (issue 12, item 3).

The server runs as a child process (so it can be killed with SIGKILL) on
Postgres behind a TCP proxy the test cuts. Every wait is a condition with a
timeout.
"""

from __future__ import annotations

import secrets
import signal

import httpx
import pytest

from .test_demo import TIMEOUT_MS, browser, canvas_url, draw, element_ids, no_page_errors, open_user  # noqa: F401

try:
    from playwright.async_api import expect
except ImportError:  # pragma: no cover - the browser fixture reports it
    expect = None

pytestmark = pytest.mark.timeout(120)

# Records every state the indicator shows, from the first script on: a "Saved" flash is caught too.
RECORD_STATES = """
window.__saveStates = []
new MutationObserver(() => {
  const el = document.querySelector('[data-testid="save-status"]')
  const s = el && el.dataset.state
  if (s && window.__saveStates[window.__saveStates.length - 1] !== s) window.__saveStates.push(s)
}).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'], childList: true })
"""


async def test_reload_during_outage_is_not_saved_until_stored(process_server_factory, pg_proxy, browser):
    """Edits made while the database is unreachable: after a reload the indicator does not say
    "Saved" (the server holds them only in memory); once the database is back it does, and after
    kill -9 and a restart everything it called saved is there."""
    proxy, dsn, _ = pg_proxy
    env = {
        "DATABASE_URL": dsn,
        "CANVASHUB_STORE_TIMEOUT": "2",
        "CANVASHUB_DB_ACQUIRE_TIMEOUT": "1",
        "CANVASHUB_RETRY_MAX_DELAY": "0.3",
        "CANVASHUB_COMMIT_INTERVAL": "0.005",
        "CANVASHUB_JOB_WORKERS": "0",
    }
    server = await process_server_factory(env)
    canvas_id = "e2e-" + secrets.token_hex(4)
    context, page = await open_user(browser, canvas_url(server, canvas_id), "Alice")
    status = page.get_by_test_id("save-status")
    await draw(page, "r", 100, 100)
    await expect(status).to_have_attribute("data-state", "saved")

    proxy.cut()
    await draw(page, "o", 400, 200)
    await draw(page, "n", 200, 400)
    await expect(page.get_by_test_id("element")).to_have_count(3)
    await expect(status).to_have_attribute("data-state", "retrying")

    await context.add_init_script(RECORD_STATES)
    await page.reload()
    await expect(page.get_by_test_id("element")).to_have_count(3)
    await expect(status).to_have_attribute("data-state", "retrying")
    await expect(status).to_contain_text("Retrying")
    assert "saved" not in await page.evaluate("window.__saveStates")

    proxy.restore()
    await expect(status).to_have_attribute("data-state", "saved", timeout=30_000)
    saved = await element_ids(page)
    assert len(saved) == 3
    await context.close()

    assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
    again = await process_server_factory(env)
    async with httpx.AsyncClient(base_url=again.http_url, timeout=TIMEOUT_MS / 1000) as http:
        res = await http.get(f"/api/canvases/{canvas_id}")
    assert res.status_code == 200, res.text
    assert saved <= set(res.json()["elements"]), "called saved, lost after kill -9"
    no_page_errors(page)
