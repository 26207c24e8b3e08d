"""Drive a stock y-websocket client (tests/js/client.mjs, one Node process each) from asyncio.

Commands go to the process's stdin as JSON lines and are answered by id; every
other stdout line is an event, kept in order so a test can wait for one that
has already happened (``since`` = a position from ``mark()``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .support import skip_or_fail

JS_DIR = Path(__file__).resolve().parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
HOCUSPOCUS_SCRIPT = JS_DIR / "hocuspocus_client.mjs"  # @hocuspocus/provider, several documents per socket
STDOUT_LIMIT = 64 * 1024 * 1024  # a "read" reply may carry a large text


def require_node() -> str:
    """Path of ``node``; skip (or fail when CI=true) if node or the npm packages are missing."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed (the Yjs interop tests need it)")
    if not (JS_DIR / "node_modules" / "y-websocket").is_dir():
        skip_or_fail(f"run `npm ci` in {JS_DIR} (node_modules missing)")
    return node  # type: ignore[return-value]


class JsClientError(RuntimeError):
    """The Node process failed a command, did not answer, or exited."""


class JsClient:
    """One ``node client.mjs`` process: a WebsocketProvider on its own Y.Doc."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.noise: list[str] = []  # stdout lines that were not JSON
        self.client_id: int | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._changed = asyncio.Event()
        self._eof = False
        self._tasks = [
            asyncio.get_running_loop().create_task(self._read_stdout()),
            asyncio.get_running_loop().create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls,
        ws_base: str,
        room: str,
        *,
        name: str = "client",
        connect: bool = True,
        events: bool = False,
        timeout: float = 10.0,
        token: str | None = None,
        protocols: list[str] | None = None,
        script: Path = CLIENT_SCRIPT,
        **extra: Any,
    ) -> JsClient:
        """``script``: ``HOCUSPOCUS_SCRIPT`` runs @hocuspocus/provider instead (``ws_base`` is then the
        endpoint's URL and ``room`` a comma-separated list of documents); ``extra`` goes into its options."""
        node = require_node()
        if script == HOCUSPOCUS_SCRIPT and not (JS_DIR / "node_modules" / "@hocuspocus" / "provider").is_dir():
            skip_or_fail(f"run `npm ci` in {JS_DIR} (@hocuspocus/provider missing)")
        options = {"connect": connect, "events": events, "token": token, "protocols": protocols, **extra}
        proc = await asyncio.create_subprocess_exec(
            node,
            str(script),
            ws_base,
            room,
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(JS_DIR),
            limit=STDOUT_LIMIT,
        )
        client = cls(proc, name)
        ready = await client.wait_event("ready", timeout=timeout)
        client.client_id = ready.get("clientID")
        return client

    # -- reading -------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.noise.append(line.decode(errors="replace").rstrip())
                    continue
                if "event" in msg:
                    self.events.append(msg)
                    self._notify()
                else:
                    fut = self._pending.pop(msg.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        finally:
            self._eof = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(JsClientError(f"{self.name} exited: {self.diagnostics()}"))
            self._pending.clear()
            self._notify()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr.append(line.decode(errors="replace").rstrip())

    def diagnostics(self) -> str:
        return f"returncode={self.proc.returncode} stderr={self.stderr[-20:]!r} noise={self.noise[-5:]!r}"

    # -- commands ------------------------------------------------------------

    async def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        """Send one command; return its result or raise ``JsClientError``."""
        if self._eof:
            raise JsClientError(f"{self.name} is not running: {self.diagnostics()}")
        request_id = self._next_id
        self._next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise JsClientError(f"{self.name}: no reply to {cmd!r} within {timeout}s; {self.diagnostics()}") from None
        if not reply.get("ok"):
            raise JsClientError(f"{self.name}: {cmd!r} failed: {reply.get('error')}")
        return reply.get("result")

    async def read(self, digest: bool = False) -> dict[str, Any]:
        state = await self.call("read", digest=digest)
        state["stateVector"] = base64.b64decode(state["stateVector"])
        state["sv"] = {int(k): v for k, v in state["sv"].items()}
        return state

    # -- events --------------------------------------------------------------

    def mark(self) -> int:
        """Position in the event log: pass as ``since`` to wait only for later events."""
        return len(self.events)

    async def wait_event(
        self, name: str, timeout: float = 5.0, *, since: int = 0, where: Callable[[dict[str, Any]], Any] | None = None
    ) -> dict[str, Any]:
        """The first event named ``name`` at or after ``since`` for which ``where`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pos = since
        while True:
            changed = self._changed
            while pos < len(self.events):
                event = self.events[pos]
                pos += 1
                if event["event"] == name and (where is None or where(event)):
                    return event
            if self._eof:
                raise JsClientError(f"{self.name} exited while waiting for {name!r}: {self.diagnostics()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: timed out after {timeout}s waiting for event {name!r}; "
                    f"last events {self.events[-8:]!r}; {self.diagnostics()}"
                )
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "error"]

    # -- lifecycle -----------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL: the socket dies with the process, nothing is said to the server."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the process to exit, kill it if it does not, and reap it."""
        if self.proc.returncode is None and not self._eof:
            with contextlib.suppress(Exception):
                await self.call("exit", timeout=2.0)
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout)


def decode_state_vector(data: bytes) -> dict[int, int]:
    """varUint(n), then n x (varUint client, varUint clock): the yjs/yrs state vector encoding."""
    pos = 0

    def var_uint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    return {var_uint(): var_uint() for _ in range(var_uint())}


__all__ = ["JsClient", "JsClientError", "decode_state_vector", "require_node", "JS_DIR", "HOCUSPOCUS_SCRIPT"]
