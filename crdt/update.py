"""Cheap sanity checks on Yjs payloads before yrs decodes them.

yrs pre-allocates from the counts in a payload's header: a 5-byte update that
claims 2**28 clients, or a state vector that claims 2**28 entries, allocates
~500 MB and burns ~0.8 s before failing (measured, see shared/NOTES.md). Every
client block of a v1 update takes at least 3 bytes (struct count, client id,
clock) and every state-vector entry at least 2 (client id, clock), so a count
larger than that is a lie we can reject in O(1).
"""

from __future__ import annotations

from .codec import Reader
from .errors import InvalidPayload, MalformedFrame

MIN_CLIENT_BLOCK_BYTES = 3
MIN_STATE_VECTOR_ENTRY_BYTES = 2


def _claimed_count(payload: bytes, what: str) -> tuple[int, int]:
    reader = Reader(payload)
    try:
        count = reader.var_uint()
    except MalformedFrame as exc:
        raise InvalidPayload(f"{what}: {exc.reason}") from None
    return count, reader.remaining


def check_update(update: bytes) -> None:
    """Reject a v1 update whose header cannot be true for its length."""
    if len(update) < 2:
        raise InvalidPayload("update: too short (an empty update is 2 bytes)")
    clients, remaining = _claimed_count(update, "update")
    if clients * MIN_CLIENT_BLOCK_BYTES > remaining:
        raise InvalidPayload(f"update: claims {clients} clients in {remaining} bytes")


def check_state_vector(state_vector: bytes) -> None:
    """Reject a state vector whose entry count cannot be true for its length."""
    if not state_vector:
        raise InvalidPayload("state vector: empty")
    entries, remaining = _claimed_count(state_vector, "state vector")
    if entries * MIN_STATE_VECTOR_ENTRY_BYTES > remaining:
        raise InvalidPayload(f"state vector: claims {entries} entries in {remaining} bytes")


def decode_state_vector(state_vector: bytes) -> dict[int, int]:
    """Decode a v1 state vector into ``{client: clock}``; clock-0 entries are dropped.

    Layout: varUint n, then n x (varUint client, varUint clock). Bounded like
    ``check_state_vector``; raises ``InvalidPayload`` on malformed or trailing
    bytes. A repeated client keeps its largest clock.
    """
    check_state_vector(state_vector)
    reader = Reader(state_vector)
    clocks: dict[int, int] = {}
    try:
        for _ in range(reader.var_uint()):
            client = reader.var_uint()
            clock = reader.var_uint()
            if clock > clocks.get(client, 0):
                clocks[client] = clock
        reader.expect_end()
    except MalformedFrame as exc:
        raise InvalidPayload(f"state vector: {exc.reason}") from None
    return clocks
