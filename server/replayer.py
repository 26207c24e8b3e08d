"""Replaying stored canvases in a worker process, off the event loop.

Replaying a canvas (its snapshot, then its log rows) is CPU work proportional
to its history: ~0.35 s for a canvas of 20,000 element maps, and pycrdt never
releases the GIL, so a thread would stall the loop all the same (NOTES). The
``Replayer`` sends the stored bytes to a small ``ProcessPoolExecutor`` (spawned
processes: nothing of the server's loop, sockets or threads is inherited) and
gets back the merged update and its state vector (for a load, also cut into slices
the loop applies one at a time: crdt/split.py), or a rendered export. Canvases
of at most ``INLINE_MAX_BYTES`` stored bytes are replayed inline (a few ms).

The pool's processes start with the pool (at server start), without re-running
the server's main script (see ``_without_main_script``): a worker is up ~0.3 s
after start instead of ~1.2 s, so the first load after start finds it warm.

Bounded: ``workers`` processes, at most ``max_in_flight`` jobs submitted (the
others wait), each job (waiting included) under ``timeout``; a job past its
timeout or a crashed worker gets the pool replaced. ``workers=0`` replays inline
on the loop (tests, tiny deployments).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import orjson

from canvashub.crdt.digest import content_etag
from canvashub.crdt.export import NotExportable, document_json
from canvashub.crdt.replay import replay_parts
from canvashub.crdt.split import SplitRefused, split_update

from .logs import log

T = TypeVar("T")
Parts = Sequence[tuple[str, bytes]]


@dataclasses.dataclass(frozen=True)
class Merged:
    update: bytes  # the document's full state, one Yjs update
    state: bytes  # its state vector
    skipped: list[tuple[str, str]]  # parts that did not apply (non-strict only): (label, error)
    # ``update`` cut into updates of at most SLICE_BYTES that rebuild it in order (loads only; empty:
    # apply ``update`` whole), and why it could not be cut (crdt/split.py refused it).
    slices: list[bytes] = dataclasses.field(default_factory=list)
    split_refused: str = ""


@dataclasses.dataclass(frozen=True)
class Exported:
    etag: str  # content ETag (crdt/digest.py)
    body: bytes | None  # the full update (binary), b'{"elements":{...}}' (JSON), or None: not exportable
    error: str  # why not exportable
    skipped: list[tuple[str, str]]


class ReplayFailed(Exception):
    """The worker process timed out or died; the job was not done."""


# -- run in the worker process (top-level functions: pickled by name) ----------------------------
def merge_job(parts: Parts, strict: bool) -> Merged:
    doc, skipped = replay_parts(parts, strict=strict)
    return Merged(doc.get_update(), doc.get_state(), skipped)


def load_job(parts: Parts, slice_bytes: int) -> Merged:
    """``merge_job`` for a room's cold load: also the merged state in slices the loop applies one by one
    (crdt/split.py), so no single apply stalls it for long."""
    merged = merge_job(parts, False)
    if len(merged.update) <= slice_bytes:
        return merged
    try:
        slices = split_update(merged.update, slice_bytes)
    except SplitRefused as exc:
        return dataclasses.replace(merged, split_refused=str(exc))
    return dataclasses.replace(merged, slices=slices)


def export_job(parts: Parts, binary: bool) -> Exported:
    doc, skipped = replay_parts(parts, strict=False)
    body: bytes | None
    error = ""
    if binary:
        body = doc.get_update()
    else:
        try:
            body = orjson.dumps(document_json(doc))
        except NotExportable as exc:
            body, error = None, str(exc)
    return Exported(content_etag(doc), body, error, skipped)


def _ready() -> bool:
    return True


def _worker_init() -> None:
    """A worker leaves interrupts to the server: Ctrl-C (or a SIGINT to the process group) makes the
    server drain and then stop its workers, instead of killing a replay halfway with a traceback.
    (It starts with SIGINT ignored already, see ``_new_pool``; this keeps it so.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- the server side ------------------------------------------------------------------------------
class Replayer:
    def __init__(self, workers: int, timeout: float, max_in_flight: int = 8) -> None:
        self.workers = workers
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.jobs = 0  # jobs done by a worker process (observability and tests)

    def start(self) -> None:
        if self.workers > 0 and self._pool is None:
            self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # Workers start with SIGINT ignored (an ignored signal stays ignored across exec, and Python
        # then keeps it so): one arriving while a worker's interpreter boots would otherwise kill it
        # with a fatal error on stderr. Spawning takes milliseconds; a SIGINT to the server in that
        # window is dropped (called on the main thread: ``start`` and ``_replace`` run on the loop).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
            )
            with _without_main_script():
                for _ in range(self.workers):
                    pool.submit(_ready)  # start the processes now (in ``submit``), not on the first load
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        return pool

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process (inline when there are no workers)."""
        if self._pool is None:
            return fn(*args)
        try:
            return await asyncio.wait_for(self._submit(fn, *args), self.timeout)
        except TimeoutError:
            self._replace("timed out")
            raise ReplayFailed(f"replay took over {self.timeout} s") from None
        except BrokenProcessPool:
            self._replace("worker died")
            raise ReplayFailed("replay worker died") from None

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            pool = self._pool
            if pool is None:
                raise ReplayFailed("replayer stopped")
            result = await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            self.jobs += 1
            return result

    def _replace(self, why: str) -> None:
        log(logging.WARNING, "replay_worker_replaced", reason=why)
        old = self._pool
        if old is not None:
            _kill(old)
            old.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    async def merge(self, parts: Parts, *, strict: bool) -> Merged:
        if _small(parts):
            return merge_job(parts, strict)
        return await self.run(merge_job, list(parts), strict)

    async def load(self, parts: Parts, slice_bytes: int) -> Merged:
        """A stored canvas merged for a room's load (corrupt parts skipped), cut into slices."""
        if _small(parts):
            return merge_job(parts, False)
        return await self.run(load_job, list(parts), slice_bytes)

    async def export(self, parts: Parts, binary: bool) -> Exported:
        if _small(parts):
            return export_job(parts, binary)
        return await self.run(export_job, list(parts), binary)


INLINE_MAX_BYTES = 32 * 1024  # replayed on the loop: a few ms at most, less than a round trip to a worker


def _small(parts: Parts) -> bool:
    return sum(len(update) for _, update in parts) <= INLINE_MAX_BYTES


@contextlib.contextmanager
def _without_main_script() -> Iterator[None]:
    """Hide the parent's main *script* from ``spawn`` while workers start (they start synchronously in
    ``ProcessPoolExecutor.submit``). ``spawn`` re-runs that script in every child ("safe importing of
    the main module"); for the ``canvashub`` console script that imports the whole server (~0.8 s of
    a ~1.2 s start), and a worker needs only this module. A main run with ``-m`` is never re-run by
    ``spawn`` (its name ends in ``.__main__``), so there is nothing to hide then."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool's processes now (a stuck replay would otherwise run to its end)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
