"""A real webhook receiver for tests: ``http.server`` in a thread, verifying every request's signature
with the ``standardwebhooks`` package (as a receiver would), able to go down and come back up on
the same port."""

from __future__ import annotations

import asyncio
import base64
import collections
import http.server
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

import standardwebhooks


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Receiver:
    """Records verified deliveries (``deliveries``: (webhook-id, body) in arrival order).

    ``mode``: ``ok`` answers 204, ``fail`` answers 503; ``stop()`` closes the listening socket (the
    sender sees connection refused), ``start()`` listens again on the same port."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or new_secret()
        self.verifier = standardwebhooks.Webhook(self.secret)
        self.mode = "ok"
        self.port = 0
        self.deliveries: list[tuple[str, dict[str, Any]]] = []  # verified and answered 2xx
        self.attempts: collections.Counter[str] = collections.Counter()  # every request, by webhook-id
        self.bad_signatures = 0
        self._cond = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def endpoint(self, name: str = "app", events: list[str] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "url": self.url, "secret": self.secret}
        if events is not None:
            entry["events"] = events
        return entry

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                try:
                    payload = receiver.verifier.verify(body, headers)
                except standardwebhooks.WebhookVerificationError:
                    with receiver._cond:
                        receiver.bad_signatures += 1
                        receiver._cond.notify_all()
                    self.send_response(401)
                    self.end_headers()
                    return
                webhook_id = headers.get("webhook-id") or headers.get("Webhook-Id") or ""
                with receiver._cond:
                    receiver.attempts[webhook_id] += 1
                    ok = receiver.mode == "ok"
                    if ok:
                        receiver.deliveries.append((webhook_id, payload))
                    receiver._cond.notify_all()
                self.send_response(204 if ok else 503)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def unique(self) -> dict[str, dict[str, Any]]:
        """Deliveries deduplicated by webhook-id, as a receiver keeps them."""
        with self._cond:
            return {webhook_id: body for webhook_id, body in self.deliveries}

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float, what: str) -> None:
        """Wait (in a thread, on the receiver's condition) until ``predicate(self)`` holds."""

        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: predicate(self), timeout)

        if not await asyncio.to_thread(wait):
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; got {json.dumps(self.deliveries)[:2000]}"
            )
