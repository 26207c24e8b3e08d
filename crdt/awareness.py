"""Awareness (presence) without pycrdt: parse, validate, own and re-encode states.

Payload (y-protocols awareness.js): varUint(n), then n x (varUint clientID,
varUint clock, varString(JSON)). JSON ``null`` means the client left. A state
is applied only if its clock is newer, or equal and the update is a removal.

The server keeps each state as the raw JSON bytes it received (validated once),
so relaying never re-serialises JSON, and re-encodes lengths in UTF-8 *bytes*.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import orjson

from .codec import Reader, write_var_bytes, write_var_uint
from .errors import FrameTooBig, InvalidPayload, MalformedFrame, PolicyViolation

NULL_STATE = b"null"
MIN_ENTRY_BYTES = 3  # client id, clock, string length: one byte each at least


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: bytes  # raw JSON; b"null" for a removal

    @property
    def removed(self) -> bool:
        return self.state == NULL_STATE


def parse_awareness(payload: bytes, max_state_bytes: int) -> list[AwarenessEntry]:
    """Decode and validate an awareness update; raise a ``ProtocolError`` if it is bad."""
    reader = Reader(payload)
    try:
        count = reader.var_uint()
        if count * MIN_ENTRY_BYTES > reader.remaining:
            raise MalformedFrame(f"awareness claims {count} entries in {reader.remaining} bytes")
        entries = []
        for _ in range(count):
            client_id = reader.var_uint()
            clock = reader.var_uint()
            state = reader.var_bytes()
            if len(state) > max_state_bytes:
                raise FrameTooBig(f"awareness state of {len(state)} bytes exceeds {max_state_bytes}")
            entries.append(AwarenessEntry(client_id, clock, state))
        reader.expect_end()
    except MalformedFrame as exc:
        raise MalformedFrame(f"awareness: {exc.reason}") from None
    return entries


def validate_state(state: bytes) -> None:
    """JSON is checked only for states the server will keep and relay (not for ignored echoes)."""
    if state != NULL_STATE:
        try:
            orjson.loads(state)
        except orjson.JSONDecodeError:
            raise InvalidPayload("awareness state is not valid UTF-8 JSON") from None


def with_identity(entry: AwarenessEntry, identity: dict[str, str]) -> AwarenessEntry:
    """The entry with ``user`` fields from ``identity`` (the verified token) over what the client claimed."""
    if entry.removed:
        return entry
    state = orjson.loads(entry.state)
    if not isinstance(state, dict):
        state = {"state": state}
    user = state.get("user")
    state["user"] = {**(user if isinstance(user, dict) else {}), **identity}
    return AwarenessEntry(entry.client_id, entry.clock, orjson.dumps(state))


def encode_awareness_payload(entries: Iterable[AwarenessEntry]) -> bytes:
    items = list(entries)
    out = bytearray()
    write_var_uint(out, len(items))
    for entry in items:
        write_var_uint(out, entry.client_id)
        write_var_uint(out, entry.clock)
        write_var_bytes(out, entry.state)
    return bytes(out)


class AwarenessRegistry:
    """The room's awareness states and which connection owns each client id.

    A connection owns the ids it announces first; it may update or remove only
    those. When it leaves, ``release`` produces removals for everything it owned,
    so other clients drop its cursor at once instead of after the 30 s timeout.

    Stock providers re-broadcast every awareness change they receive, removals
    included, so every departure comes back as echoes from the remaining
    clients. A tombstone (the removal's clock) per released id makes those
    echoes no-ops: an unowned id can be claimed only by a live state at least
    as new as its tombstone, which only the original client can send (echoes
    carry older clocks). Echoes are ignored silently; only a *newer* entry for
    someone else's id counts as refused.
    """

    MAX_TOMBSTONES = 4096

    def __init__(self, max_ids_per_owner: int) -> None:
        self.max_ids_per_owner = max_ids_per_owner
        self._entries: dict[int, AwarenessEntry] = {}
        self._owner: dict[int, Hashable] = {}
        self._owned: dict[Hashable, set[int]] = {}
        self._tombstones: dict[int, int] = {}  # client id -> clock of its removal (insertion-ordered)

    def owned_by(self, owner: Hashable) -> frozenset[int]:
        return frozenset(self._owned.get(owner, ()))

    def live_entries(self) -> list[AwarenessEntry]:
        return [entry for entry in self._entries.values() if not entry.removed]

    def apply(
        self, owner: Hashable, entries: list[AwarenessEntry], max_ids: int | None = None
    ) -> tuple[list[AwarenessEntry], int]:
        """Apply what ``owner`` may change; return (accepted entries, count of foreign ids refused).
        ``max_ids`` overrides the per-owner id cap (another process owns all of its clients' ids)."""
        limit = self.max_ids_per_owner if max_ids is None else max_ids
        accepted: list[AwarenessEntry] = []
        refused = 0
        owned = self._owned.setdefault(owner, set())
        for entry in entries:
            client_id = entry.client_id
            current_owner = self._owner.get(client_id)
            current = self._entries.get(client_id)
            if current_owner is None:
                tombstone = self._tombstones.get(client_id)
                if entry.removed or (tombstone is not None and entry.clock < tombstone):
                    continue  # an echo of a departure, or the removal of an unknown id
                if len(owned) >= limit:
                    raise PolicyViolation(f"a connection may announce at most {limit} awareness client ids")
                self._tombstones.pop(client_id, None)
                self._owner[client_id] = owner
                owned.add(client_id)
            elif current_owner != owner:
                if current is None or entry.clock > current.clock:
                    refused += 1
                continue  # older or equal clocks are echoes of what we relayed
            if (
                current is None
                or current.clock < entry.clock
                or (current.clock == entry.clock and entry.removed and not current.removed)
            ):
                validate_state(entry.state)
                self._entries[client_id] = entry
                accepted.append(entry)
        return accepted, refused

    def expire(self, client_id: int) -> AwarenessEntry | None:
        """End a live state now (its owner went silent): the removal entry to broadcast, if it was live."""
        entry = self._entries.get(client_id)
        if entry is None or entry.removed:
            return None
        removal = AwarenessEntry(client_id, entry.clock + 1, NULL_STATE)
        self._entries[client_id] = removal
        return removal

    def owned_live(self, owners: Iterable[Hashable]) -> list[AwarenessEntry]:
        """Live states of the given owners (a process's own clients, for a peer that asks)."""
        out = []
        for owner in owners:
            for client_id in self._owned.get(owner, ()):
                entry = self._entries.get(client_id)
                if entry is not None and not entry.removed:
                    out.append(entry)
        return out

    def replace(self, entries: list[AwarenessEntry]) -> None:
        """Store rewritten versions of entries ``apply`` just accepted (same ids and clocks)."""
        for entry in entries:
            if entry.client_id in self._entries:
                self._entries[entry.client_id] = entry

    def release(self, owner: Hashable) -> list[AwarenessEntry]:
        """Forget ``owner``; return removal entries for the states it still had."""
        removals = []
        for client_id in self._owned.pop(owner, ()):
            del self._owner[client_id]
            entry = self._entries.pop(client_id, None)
            clock = 0 if entry is None else entry.clock
            if entry is not None and not entry.removed:
                clock += 1
                removals.append(AwarenessEntry(client_id, clock, NULL_STATE))
            self._tombstones[client_id] = clock
            if len(self._tombstones) > self.MAX_TOMBSTONES:
                del self._tombstones[next(iter(self._tombstones))]
        return removals
