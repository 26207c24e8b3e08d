"""Extension hooks: how an application plugs into canvashub without forking it.

An extension is any object with some of these async methods (all optional; a
missing method is simply not called):

=================  =========================================================================
``authenticate``   ``(AuthRequest) -> Principal | None``: who the caller is. The first
                   extension returning a principal wins; ``None`` passes to the next one, then
                   to the built-in token check. Raising ``Unauthorized``/``Forbidden`` refuses.
``load``           ``(LoadRequest) -> bytes | None``: a Yjs update seeding a canvas that has
                   nothing stored. The first non-empty answer is applied and stored.
``change``         ``(ChangeEvent)``: a canvas changed; debounced per canvas.
``saved``          ``(SavedEvent)``: changes of a canvas were committed to the store.
``generation``     ``(GenerationEvent)``: a generation job changed state.
``connect``        ``(SessionEvent)``: a socket joined a canvas.
``disconnect``     ``(SessionEvent)``: it left (``code`` says how).
``deleted``        ``(DeletedEvent)``: a canvas was deleted.
``stateless``      ``(StatelessEvent)``: an application message from a client.
=================  =========================================================================

Bounded, always: every call has a timeout (``hook_timeout``). The two questions
(``authenticate``, ``load``) are awaited by the socket or load that asked,
never by a room. Notifications go through one queue per extension, in order, of
at most ``hook_queue`` events; a full queue drops the event (logged once per
episode and counted). An extension that raises or hangs is logged and counted
and never breaks a room, a socket or a save: for ``authenticate`` it means the
caller is refused with "unavailable" (fail closed), for ``load`` that the
canvas starts empty, for notifications that the event is lost for that
extension only.

Extensions come from ``CANVASHUB_EXTENSIONS=package.module:factory,...`` (each
factory is called with no arguments and returns the extension) and, for
applications that embed canvashub, from ``create_app(settings, extensions=[...])``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from .auth import Principal
from .errors import ExtensionUnavailable, Forbidden, Unauthorized
from .logs import FailureLog, log

NOTIFICATIONS = ("change", "saved", "generation", "connect", "disconnect", "deleted", "stateless")
QUESTIONS = ("authenticate", "load")
HOOKS = QUESTIONS + NOTIFICATIONS


@dataclasses.dataclass(frozen=True, slots=True)
class AuthRequest:
    """What a caller presented: ``protocol`` is ``y-websocket``, ``hocuspocus`` or ``http``."""

    protocol: str
    canvas_id: str | None
    token: str | None
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    client_ip: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LoadRequest:
    canvas_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeEvent:
    """What changed on a canvas since the last ``change`` event: element ids (keys of the
    ``elements`` map), the user ids of whoever changed them (``None`` for an anonymous
    caller) and the origins (``client``, ``http``, ``job``, ``peer``, ``extension``)."""

    canvas_id: str
    elements: tuple[str, ...]
    users: tuple[str | None, ...]
    origins: tuple[str, ...]
    updates: int
    first_at: float  # epoch seconds of the first and last change in this event
    last_at: float
    elements_truncated: bool = False  # more elements changed than an event lists (``max_elements``)
    created: bool = False  # the first change of a canvas that had nothing stored


@dataclasses.dataclass(frozen=True, slots=True)
class SavedEvent:
    canvas_id: str
    seq: int  # the highest log sequence number committed for the canvas
    updates: int  # how many of its updates this commit made durable


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationEvent:
    job_id: str
    canvas_id: str
    status: str  # queued, running, succeeded, failed, cancelled
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEvent:
    canvas_id: str
    session_id: str
    user_id: str | None
    name: str | None
    role: str
    protocol: str
    client_ip: str | None
    code: int | None = None  # disconnect: the close code
    seconds: float | None = None  # disconnect: how long the session lasted


@dataclasses.dataclass(frozen=True, slots=True)
class DeletedEvent:
    canvas_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class StatelessEvent:
    canvas_id: str
    session_id: str
    user_id: str | None
    payload: str


class Notifier(Protocol):
    """What a part that reports events needs of the extensions (``Extensions`` provides it)."""

    def notify(self, hook: str, event: object) -> None: ...

    def has(self, hook: str) -> bool: ...


class Hooks(Notifier, Protocol):
    """What the transports need of the extensions: notifications and the ``authenticate`` question."""

    async def authenticate(self, request: AuthRequest) -> Principal | None: ...


class ExtensionConfigError(ValueError):
    """``CANVASHUB_EXTENSIONS`` names something that cannot be loaded: a startup error."""


def load_extensions(spec: str) -> list[object]:
    """Import and build the extensions of ``package.module:factory,...`` (empty: none)."""
    extensions: list[object] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        module_name, sep, attr = item.partition(":")
        if not sep or not module_name or not attr:
            raise ExtensionConfigError(f"extension {item!r}: expected package.module:factory")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ExtensionConfigError(f"extension {item!r}: cannot import {module_name}: {exc}") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ExtensionConfigError(f"extension {item!r}: {module_name} has no callable {attr}")
        try:
            extension = factory()
        except Exception as exc:
            raise ExtensionConfigError(f"extension {item!r}: its factory failed: {exc!r}") from exc
        check_extension(extension, item)
        extensions.append(extension)
    return extensions


def check_extension(extension: object, name: str) -> None:
    """An extension must have at least one hook, and every hook it has must be a coroutine function."""
    found = False
    for hook in HOOKS:
        method = getattr(extension, hook, None)
        if method is None:
            continue
        if not asyncio.iscoroutinefunction(method):
            raise ExtensionConfigError(f"extension {name}: {hook} must be an async method")
        found = True
    if not found:
        raise ExtensionConfigError(f"extension {name}: it has none of the hooks {', '.join(HOOKS)}")


def extension_name(extension: object) -> str:
    return getattr(extension, "name", None) or type(extension).__qualname__


class _Lane:
    """One extension's ordered, bounded queue of notifications and the task that delivers them."""

    def __init__(self, extension: object, owner: Extensions) -> None:
        self.extension = extension
        self.name = extension_name(extension)
        self.owner = owner
        self.queue: deque[tuple[str, object]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()  # set while nothing is queued or running
        self.idle.set()
        self.dropping = False

    def put(self, hook: str, event: object) -> None:
        if len(self.queue) >= self.owner.max_queue:
            self.owner.count(hook, "dropped")
            if not self.dropping:
                self.dropping = True
                log(logging.WARNING, "hook_queue_full", extension=self.name, hook=hook, queued=len(self.queue))
            return
        self.dropping = False
        self.queue.append((hook, event))
        self.idle.clear()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name=f"hooks:{self.name}")
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            while not self.queue:
                self.idle.set()
                self.wakeup.clear()
                await self.wakeup.wait()
            hook, event = self.queue.popleft()
            method = getattr(self.extension, hook)
            await self.owner.call(self.name, hook, method, event)


class Extensions:
    """The configured extensions, called with bounds (see the module docstring)."""

    def __init__(
        self,
        extensions: Sequence[object],
        *,
        timeout: float,
        max_queue: int,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.extensions = list(extensions)
        self.timeout = timeout
        self.max_queue = max_queue
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (hook, ok|error|timeout|dropped) -> calls
        self._on_outcome = on_outcome
        self._lanes: dict[str, list[_Lane]] = {}
        self._all_lanes: list[_Lane] = []
        self._failures: dict[tuple[str, str], FailureLog] = {}
        for extension in self.extensions:
            check_extension(extension, extension_name(extension))
        self._has = {hook: [e for e in self.extensions if getattr(e, hook, None) is not None] for hook in HOOKS}

    def has(self, hook: str) -> bool:
        """Whether any extension listens to ``hook`` (callers skip building events nobody reads)."""
        return bool(self._has[hook])

    def count(self, hook: str, outcome: str) -> None:
        self.outcomes[(hook, outcome)] += 1
        if self._on_outcome is not None:
            self._on_outcome(hook, outcome)

    def notify(self, hook: str, event: object) -> None:
        """Queue ``event`` for every extension with ``hook``; never blocks, never raises."""
        listeners = self._has[hook]
        if not listeners:
            return
        lanes = self._lanes.get(hook)
        if lanes is None:
            lanes = self._lanes[hook] = [self._lane(extension) for extension in listeners]
        for lane in lanes:
            lane.put(hook, event)

    def _lane(self, extension: object) -> _Lane:
        for lane in self._all_lanes:
            if lane.extension is extension:
                return lane
        lane = _Lane(extension, self)
        self._all_lanes.append(lane)
        return lane

    async def call(self, name: str, hook: str, method: Callable[[Any], Awaitable[Any]], event: object) -> Any:
        """One bounded call; returns its answer, or raises what it raised (timeouts as TimeoutError)
        after logging and counting. Notification lanes swallow the error."""
        failure = self._failures.get((name, hook))
        if failure is None:
            failure = self._failures[(name, hook)] = FailureLog("hook")
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(method(event), self.timeout)
        except (Unauthorized, Forbidden):
            failure.recovered(extension=name, hook=hook)
            self.count(hook, "refused")
            raise
        except TimeoutError:
            self.count(hook, "timeout")
            failure.failed(f"no answer within {self.timeout} s", extension=name, hook=hook)
            if hook in QUESTIONS:
                raise
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.count(hook, "error")
            failure.failed(repr(exc), extension=name, hook=hook)
            if hook in QUESTIONS:
                raise
            return None
        failure.recovered(extension=name, hook=hook)
        self.count(hook, "ok")
        elapsed = time.monotonic() - started
        if elapsed > self.timeout / 2:
            log(logging.WARNING, "hook_slow", extension=name, hook=hook, seconds=round(elapsed, 3))
        return answer

    async def authenticate(self, request: AuthRequest) -> Principal | None:
        """The first principal an extension vouches for; None when none does (the built-in check
        then decides). An extension's ``Unauthorized``/``Forbidden`` refuses; its failure or
        timeout refuses too, as ``ExtensionUnavailable`` (fail closed)."""
        for extension in self._has["authenticate"]:
            name = extension_name(extension)
            try:
                principal = await self.call(name, "authenticate", extension.authenticate, request)  # type: ignore[attr-defined]
            except (Unauthorized, Forbidden):
                raise
            except Exception as exc:
                raise ExtensionUnavailable("authentication is unavailable, try again") from exc
            if principal is not None:
                if not isinstance(principal, Principal):
                    self.count("authenticate", "error")
                    log(
                        logging.ERROR,
                        "hook_bad_answer",
                        extension=name,
                        hook="authenticate",
                        answer=type(principal).__name__,
                    )
                    raise ExtensionUnavailable("authentication is unavailable, try again")
                return principal
        return None

    async def load(self, canvas_id: str) -> bytes | None:
        """The seed of an empty canvas: the first non-empty update an extension returns, or None.
        A failing or hanging extension is skipped (the canvas starts empty)."""
        request = LoadRequest(canvas_id)
        for extension in self._has["load"]:
            name = extension_name(extension)
            try:
                seed = await self.call(name, "load", extension.load, request)  # type: ignore[attr-defined]
            except Exception:
                continue
            if seed is None:
                continue
            if not isinstance(seed, bytes | bytearray):
                self.count("load", "error")
                log(logging.ERROR, "hook_bad_answer", extension=name, hook="load", answer=type(seed).__name__)
                continue
            if seed:
                return bytes(seed)
        return None

    def pending(self) -> int:
        return sum(len(lane.queue) for lane in self._all_lanes)

    async def stop(self, grace: float) -> None:
        """Let queued notifications run for up to ``grace`` seconds, then cancel what is left."""
        waits = [asyncio.ensure_future(lane.idle.wait()) for lane in self._all_lanes]
        if waits:
            _done, not_done = await asyncio.wait(waits, timeout=grace)
            for wait in not_done:
                wait.cancel()
        for lane in self._all_lanes:
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in self._all_lanes if lane.task is not None), return_exceptions=True)
        left = self.pending()
        if left:
            log(logging.WARNING, "hook_events_abandoned", events=left)


class ChangeCollector:
    """Changes of each canvas made on this process, folded into one ``change`` event per canvas:
    sent ``wait`` seconds after its last change, and at most ``max_wait`` seconds after the first
    one not yet sent. ``note`` is synchronous and cheap (rooms call it per change)."""

    def __init__(self, hooks: Notifier, *, wait: float, max_wait: float, max_elements: int = 1000) -> None:
        self.hooks = hooks
        self.wait = wait
        self.max_wait = max(max_wait, wait)
        self.max_elements = max_elements
        self._pending: dict[str, _Changes] = {}

    @property
    def wanted(self) -> bool:
        return self.hooks.has("change")

    def note(self, canvas_id: str, elements: set[str], user: str | None, origin: str, created: bool = False) -> None:
        loop = asyncio.get_running_loop()
        changes = self._pending.get(canvas_id)
        if changes is None:
            changes = self._pending[canvas_id] = _Changes(loop.time(), time.time())
        changes.add(elements, user, origin, created, self.max_elements)
        fire_at = min(loop.time() + self.wait, changes.first_loop + self.max_wait)
        if changes.timer is not None:
            changes.timer.cancel()
        changes.timer = loop.call_at(fire_at, self._fire, canvas_id)

    def _fire(self, canvas_id: str) -> None:
        changes = self._pending.pop(canvas_id, None)
        if changes is not None:
            self.hooks.notify("change", changes.event(canvas_id))

    def flush(self) -> None:
        """Send every pending event now (at shutdown)."""
        for canvas_id in list(self._pending):
            timer = self._pending[canvas_id].timer
            if timer is not None:
                timer.cancel()
            self._fire(canvas_id)


class _Changes:
    __slots__ = (
        "first_loop",
        "first_at",
        "last_at",
        "elements",
        "truncated",
        "users",
        "origins",
        "updates",
        "created",
        "timer",
    )

    def __init__(self, first_loop: float, first_at: float) -> None:
        self.first_loop = first_loop
        self.first_at = self.last_at = first_at
        self.elements: set[str] = set()
        self.truncated = False
        self.users: dict[str | None, None] = {}
        self.origins: dict[str, None] = {}
        self.updates = 0
        self.created = False
        self.timer: asyncio.TimerHandle | None = None

    def add(self, elements: set[str], user: str | None, origin: str, created: bool, max_elements: int) -> None:
        self.last_at = time.time()
        self.updates += 1
        self.created = self.created or created
        if len(self.users) < 100:
            self.users[user] = None
        self.origins[origin] = None
        room = max_elements - len(self.elements)
        if len(elements) <= room:
            self.elements |= elements
        else:
            self.truncated = True
            self.elements.update(list(elements)[:room])

    def event(self, canvas_id: str) -> ChangeEvent:
        return ChangeEvent(
            canvas_id,
            tuple(sorted(self.elements)),
            tuple(self.users),
            tuple(self.origins),
            self.updates,
            self.first_at,
            self.last_at,
            self.truncated,
            self.created,
        )
