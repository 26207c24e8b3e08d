"""One canvas's document and presence, as a pure state machine.

``RoomDocument`` takes a frame from a peer and returns ``Effects``: frames to
send back to that peer, frames to send to every other peer, and the Yjs update
that changed the document (for storage). It never awaits and never touches a
socket, so the server can call it synchronously and add a newcomer to the
broadcast set in the same step that answers its handshake (no gap).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pycrdt import Doc, Map, Subscription, merge_updates

from . import codec
from .awareness import AwarenessRegistry, encode_awareness_payload, parse_awareness, with_identity
from .codec import (
    EMPTY_UPDATE,
    AuthDenied,
    AwarenessFrame,
    EventRequest,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
)
from .errors import InvalidPayload, MalformedFrame, ProtocolError
from .update import check_state_vector, check_update, decode_state_vector


@dataclass(slots=True)
class Effects:
    reply: list[bytes] = field(default_factory=list)
    broadcast: list[bytes] = field(default_factory=list)
    update: bytes | None = None
    awareness_refused: int = 0
    presence: bool = False  # ``broadcast`` holds awareness frames (other processes get them too)


_NOTHING = Effects()


class PartiallyApplied(InvalidPayload):
    """The update was refused, but yrs had integrated part of it: ``effects`` carries that part, which
    the server must relay and store like any change before closing the sender's socket."""

    def __init__(self, reason: str, effects: Effects) -> None:
        super().__init__(reason)
        self.effects = effects


MAX_REMOTE_AWARENESS_IDS = 100_000  # per other process
EMPTY_STATE_VECTOR = b"\x00"  # what a client with an empty document sends in sync step 1
SMALL_DOCUMENT_BYTES = 256 * 1024  # re-encoded whole for joiners: under ~2 ms (measured: 4 MB in ~30 ms)
T = TypeVar("T")


def _yrs_call(what: str, fn: Callable[[bytes], T], arg: bytes) -> T:
    """Call into yrs with untrusted bytes; any failure becomes ``InvalidPayload``.

    yrs can panic on some mutated updates; pyo3's ``PanicException`` derives
    from ``BaseException``, so ``except Exception`` would miss it. The calls are
    synchronous, so no ``CancelledError`` can surface here. The document stays
    usable after a failed apply (measured).
    """
    try:
        return fn(arg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - see docstring
        raise InvalidPayload(f"{what} rejected by yrs: {type(exc).__name__}") from None


def apply_update_safely(doc: Doc[Any], update: bytes) -> None:
    """Check an untrusted update's header, then apply it."""
    check_update(update)
    _yrs_call("update", doc.apply_update, update)


class RoomDocument:
    """The CRDT document and awareness of one canvas."""

    def __init__(
        self,
        doc: Doc[Any] | None = None,
        *,
        max_awareness_state_bytes: int = 8192,
        max_awareness_ids_per_peer: int = 8,
    ) -> None:
        self._captured: list[bytes] = []  # updates yrs integrated in the current call (see ``doc``)
        # The join cache (see ``full_state_parts``): a full update and its state vector, its sync step 2
        # frame, and whether the document changed since.
        self._full: tuple[bytes, bytes, bytes] | None = None
        self._stale = False
        self.full_encodes = 0  # full-state encodes done on this document (observability and tests)
        self._doc: Doc[Any] | None = None
        self._subscription: Subscription | None = None
        # Element ids changed since ``take_changed_elements`` (only once ``track_elements`` was called).
        self._tracking_elements = False
        self._elements_subscription: tuple[Map[Any], Subscription] | None = None
        self._changed_elements: set[str] = set()
        self.doc = doc if doc is not None else Doc()
        self.awareness = AwarenessRegistry(max_awareness_ids_per_peer)
        self.max_awareness_state_bytes = max_awareness_state_bytes
        self.identities: dict[Hashable, dict[str, str]] = {}  # peer -> verified user fields for presence
        self.remote_seen: dict[int, float] = {}  # client id -> when another process last relayed its state

    @property
    def doc(self) -> Doc[Any]:
        return self._doc  # type: ignore[return-value]

    @doc.setter
    def doc(self, doc: Doc[Any]) -> None:
        """Observe every transaction: what is relayed and stored is what yrs integrated, re-encoded by
        yrs, never the client's raw bytes. A malformed update can raise after integrating part of
        itself (yrs has no rollback); that part is then relayed and stored too, so the stored log
        always replays to exactly the live document."""
        if self._doc is not None and self._subscription is not None:
            self._doc.unobserve(self._subscription)
        self._doc = doc
        self._full = None
        self._subscription = doc.observe(self._observe)
        if self._elements_subscription is not None:
            root, subscription = self._elements_subscription
            root.unobserve(subscription)
            self._elements_subscription = None
        if self._tracking_elements:
            self._observe_elements()

    def track_elements(self) -> None:
        """From now on, note which element ids (keys of the ``elements`` map) each change touches
        (``take_changed_elements``): a deep observer, paid per change only once asked for."""
        self._tracking_elements = True
        if self._elements_subscription is None:
            self._observe_elements()

    def _observe_elements(self) -> None:
        try:
            root = self.doc.get("elements", type=Map)
        except Exception:  # a client made ``elements`` something else: nothing to name
            return
        self._elements_subscription = (root, root.observe_deep(self._note_elements))

    def _note_elements(self, events: list[Any]) -> None:
        changed = self._changed_elements
        for event in events:
            path = event.path
            if path:
                changed.add(str(path[0]))  # a field inside one element
            else:
                changed.update(str(key) for key in event.keys)  # elements added, replaced or removed

    def take_changed_elements(self) -> set[str]:
        changed = self._changed_elements
        self._changed_elements = set()
        return changed

    def _observe(self, event: Any) -> None:
        self._captured.append(event.update)
        self._stale = True

    def _integrate(self, update: bytes) -> Effects:
        captured = self._captured
        captured.clear()
        try:
            apply_update_safely(self.doc, update)
        except ProtocolError as exc:
            if captured:
                raise PartiallyApplied(exc.reason, self._take_captured()) from None
            raise
        return self._take_captured()

    def _take_captured(self) -> Effects:
        captured = self._captured
        if not captured:
            return _NOTHING
        update = captured[0] if len(captured) == 1 else merge_updates(*captured)
        captured.clear()
        if update == EMPTY_UPDATE:
            return _NOTHING
        return Effects(broadcast=[codec.encode_update(update)], update=update)

    def set_identity(self, peer: Hashable, identity: dict[str, str] | None) -> None:
        """Presence states ``peer`` announces will show ``identity`` as their ``user`` (id, name)."""
        if identity:
            self.identities[peer] = identity

    def join(self, peer: Hashable) -> list[bytes]:
        """Frames a newcomer gets first: our sync step 1, then everyone's presence."""
        frames = [codec.encode_sync_step1(self.doc.get_state())]
        live = self.awareness.live_entries()
        if live:
            frames.append(codec.encode_awareness(encode_awareness_payload(live)))
        return frames

    def leave(self, peer: Hashable) -> list[bytes]:
        """Frames for the remaining peers: removal of the leaver's awareness states."""
        self.identities.pop(peer, None)
        removals = self.awareness.release(peer)
        if not removals:
            return []
        return [codec.encode_awareness(encode_awareness_payload(removals))]

    def receive(self, peer: Hashable, frame: bytes) -> Effects:
        """Handle one binary frame from ``peer``; raise ``ProtocolError`` if it is bad."""
        return self.handle(peer, codec.parse_frame(frame))

    def handle(self, peer: Hashable, message: Message) -> Effects:
        """Handle one parsed message from ``peer``; raise ``ProtocolError`` if it is bad."""
        if type(message) is SyncUpdate or type(message) is SyncStep2:
            return self._integrate(message.update)
        if type(message) is AwarenessFrame:
            return self._awareness(peer, message.payload)
        if type(message) is SyncStep1:
            if message.state_vector == EMPTY_STATE_VECTOR:  # a new client: the whole document
                diffs = self.full_state_parts()[1:]
                assert self._full is not None  # cached by full_state_parts
                return Effects(reply=[self._full[2], *map(codec.encode_update, diffs)])
            check_state_vector(message.state_vector)
            diff = _yrs_call("state vector", self.doc.get_update, message.state_vector)
            return Effects(reply=[codec.encode_sync_step2(diff)])
        kind = type(message)
        if kind is QueryAwareness:
            live = self.awareness.live_entries()
            return Effects(reply=[codec.encode_awareness(encode_awareness_payload(live))])
        if kind is AuthDenied:
            # Only servers send "permission denied"; a client sending it is harmless noise.
            return _NOTHING
        if kind is EventRequest:
            # Answered by the server for sockets that opted in (?events=1); for the others (and for
            # the document) type 100 is as unknown as any other type.
            raise MalformedFrame(f"unknown message type {codec.MSG_EVENT}")
        raise AssertionError(f"unhandled message {message!r}")  # pragma: no cover

    # -- the join cache ------------------------------------------------------------------------
    def full_state_parts(self) -> list[bytes]:
        """The whole document as updates applied in order: a cached full update, then (if the document
        changed since) one diff against its state vector. A joiner with an empty state vector gets
        them as sync step 2 + an update, so ten joins of a big canvas cost one full encode (~30 ms at
        4 MB, on the loop) and ten small diffs. Re-encoded when the document is small (one frame is
        simpler for clients and costs under a millisecond) or the diff has grown large."""
        if self._full is not None and not self._stale:
            return [self._full[0]]
        if self._full is not None and len(self._full[0]) > SMALL_DOCUMENT_BYTES:
            diff = self.doc.get_update(self._full[1])
            if len(diff) <= max(SMALL_DOCUMENT_BYTES, len(self._full[0]) // 4):
                return [self._full[0], diff]
        self.full_encodes += 1
        update = self.doc.get_update()
        self.seed_full_state(update, self.doc.get_state(), exact=True)
        return [update]

    def seed_full_state(self, update: bytes, state: bytes, *, exact: bool) -> None:
        """Cache ``update`` (a full state, e.g. what the replay worker merged) for joiners. The caller
        guarantees the document contains it (see ``contains_state``); ``exact``: it is the document
        (just encoded from it, or the document was just built from it). Otherwise joiners also get the
        diff since ``state``, which carries every delete (a delete does not move a state vector)."""
        self._full = (update, state, codec.encode_sync_step2(update))
        self._stale = not exact

    def contains_state(self, state: bytes) -> bool:
        """Every struct ``state`` counts is integrated in the document (clock by clock)."""
        ours = decode_state_vector(self.doc.get_state())
        return all(ours.get(client, 0) >= clock for client, clock in decode_state_vector(state).items())

    # -- other processes (see server/cluster.py) ------------------------------------------
    def remote_awareness(self, node: str, payload: bytes, now: float) -> Effects:
        """Presence relayed by another process: kept (newcomers get it) under that process's ownership,
        and broadcast to every local peer. Its echoes from local clients are then ignored as foreign."""
        entries = parse_awareness(payload, self.max_awareness_state_bytes)
        accepted, _ = self.awareness.apply(("node", node), entries, max_ids=MAX_REMOTE_AWARENESS_IDS)
        if not accepted:
            return _NOTHING
        for entry in accepted:
            if entry.removed:
                self.remote_seen.pop(entry.client_id, None)
            else:
                self.remote_seen[entry.client_id] = now
        return Effects(broadcast=[codec.encode_awareness(encode_awareness_payload(accepted))], presence=True)

    def expire_remote(self, before: float) -> list[bytes]:
        """Remove presence relayed by other processes and not renewed since ``before`` (a process
        died or lost its connection): frames for local peers. Clients renew every 15 s."""
        stale = [client_id for client_id, seen in self.remote_seen.items() if seen < before]
        removals = []
        for client_id in stale:
            del self.remote_seen[client_id]
            removal = self.awareness.expire(client_id)
            if removal is not None:
                removals.append(removal)
        return [codec.encode_awareness(encode_awareness_payload(removals))] if removals else []

    def local_presence(self, peers: Iterable[Hashable]) -> bytes | None:
        """An awareness payload of the live states ``peers`` own (what a process tells the others)."""
        live = self.awareness.owned_live(peers)
        return encode_awareness_payload(live) if live else None

    def apply_update(self, update: bytes) -> Effects:
        """Apply an untrusted update that did not come over a socket (HTTP import, a job, a peer node)."""
        return self._integrate(update)

    def transact(self, edit: Callable[[Doc[Any]], None]) -> Effects:
        """Run ``edit(doc)`` in one transaction and return the update it made (if any) for relaying and storage.

        The update is captured by the document's observer; ``edit`` must not await
        (it cannot: it is a plain function) and may raise ``ProtocolError`` before
        writing anything. yrs has no rollback, so validate before the first write.
        """
        self._captured.clear()
        with self.doc.transaction():
            edit(self.doc)
        # One outermost transaction gives one update; merged defensively if yrs ever splits it.
        return self._take_captured()

    def check_awareness(self, payload: bytes) -> None:
        """Validate a presence payload that will not be applied (raise ``ProtocolError`` if it is bad)."""
        parse_awareness(payload, self.max_awareness_state_bytes)

    def _awareness(self, peer: Hashable, payload: bytes) -> Effects:
        entries = parse_awareness(payload, self.max_awareness_state_bytes)
        accepted, refused = self.awareness.apply(peer, entries)
        if not accepted:
            return Effects(awareness_refused=refused)
        identity = self.identities.get(peer)
        if identity is not None:
            accepted = [with_identity(entry, identity) for entry in accepted]
            self.awareness.replace(accepted)
        elif len(accepted) == len(entries):
            # The payload parsed canonically (crdt/codec.py), so this is byte for byte what the peer sent.
            return Effects(broadcast=[codec.encode_awareness(payload)], presence=True)
        return Effects(
            broadcast=[codec.encode_awareness(encode_awareness_payload(accepted))],
            awareness_refused=refused,
            presence=True,
        )
