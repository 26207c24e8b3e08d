"""Content digests of a document, for HTTP caching.

The CRDT content of a Yjs document is fully determined by two things: which
structs it has integrated (its state vector: every client's clock upper bound)
and which of them are deleted (its delete set). Deletes do not advance the
state vector, so the state vector alone misses a delete-only change; the bytes
of ``doc.get_update()`` cannot be hashed either, because they depend on how the
document was loaded (measured: a doc loaded from its source's full update
encodes differently from the source; pending structs are included too). ``content_etag`` hashes
a canonical encoding of both parts instead:

    doc.get_state()                   varUint n, n x (varUint client, varUint clock)
    doc.get_update(doc.get_state())   varUint 0 (no client has structs past its own
                                      state vector), then the delete set:
                                      varUint numClients, per client: varUint client,
                                      varUint numRanges, numRanges x (varUint clock,
                                      varUint len)

Measured with pycrdt 0.14.13: the "no structs" diff is exactly that layout
(``00 00`` for a doc without deletes); structs and deletes still waiting for a
missing dependency ("pending") appear in neither part, and yrs reports such a
client as a state-vector entry with clock 0, which the canonical form drops.

Limit (yrs, measured): a map entry that arrives *past a clock gap* (its
client's earlier update not yet received) is already visible in ``to_py()``
although the state vector stops at the gap, so until the gap is filled such a
document can show content its tag does not cover. A document that received each
client's updates in order, or was loaded from a ``get_update()``, has no gaps.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pycrdt import Doc

from .codec import Reader, write_var_uint
from .errors import InvalidPayload, MalformedFrame
from .update import decode_state_vector

# Every state-vector entry and every delete-set client header takes at least two
# one-byte varints, and so does every delete range: a count larger than that is
# rejected before looping, so decoding stays linear in the input.
_MIN_PAIR_BYTES = 2

# blake2b personalisation: domain separation and a format version in one.
_PERSON = b"canvashub.etag1"


def _checked_count(reader: Reader, what: str) -> int:
    count = reader.var_uint()
    if count * _MIN_PAIR_BYTES > reader.remaining:
        raise ValueError(f"{what}: claims {count} entries in {reader.remaining} bytes")
    return count


def _read_delete_set(reader: Reader) -> dict[int, list[tuple[int, int]]]:
    """Read a v1 delete set, normalised: sorted, merged ranges, no empty clients."""
    delete_set: dict[int, list[tuple[int, int]]] = {}
    for _ in range(_checked_count(reader, "delete set")):
        client = reader.var_uint()
        ranges = delete_set.setdefault(client, [])
        for _ in range(_checked_count(reader, "delete set ranges")):
            clock = reader.var_uint()
            length = reader.var_uint()
            if length:
                ranges.append((clock, length))
    normalised: dict[int, list[tuple[int, int]]] = {}
    for client in sorted(delete_set):
        merged: list[tuple[int, int]] = []
        for clock, length in sorted(delete_set[client]):
            if merged and clock <= merged[-1][0] + merged[-1][1]:
                start, prev_length = merged[-1]
                merged[-1] = (start, max(prev_length, clock + length - start))
            else:
                merged.append((clock, length))
        if merged:
            normalised[client] = merged
    return normalised


def decode_delete_set(doc: Doc[Any]) -> dict[int, list[tuple[int, int]]]:
    """The document's delete set as ``{client: [(clock, len), ...]}``, normalised.

    Read from ``doc.get_update(doc.get_state())``; raises ``ValueError`` if that
    update unexpectedly carries structs or is malformed.
    """
    diff = doc.get_update(doc.get_state())
    reader = Reader(diff)
    try:
        clients_with_structs = reader.var_uint()
        if clients_with_structs != 0:
            raise ValueError(f"diff against the doc's own state vector has structs for {clients_with_structs} clients")
        delete_set = _read_delete_set(reader)
        reader.expect_end()
    except MalformedFrame as exc:
        raise ValueError(f"delete set: {exc.reason}") from None
    return delete_set


def content_etag(doc: Doc[Any]) -> str:
    """A strong ETag (quotes included) for the CRDT content of ``doc``.

    Equal for two documents with the same integrated structs and deletes however
    they were loaded (update by update, from one full update, in any order);
    different when content was inserted or deleted. 32 hex characters of
    blake2b-128 over the sorted state vector and the normalised delete set.

    It identifies CRDT content, not bytes: if an endpoint serves
    ``doc.get_update()`` under this tag, note those bytes may still differ
    between two documents with equal tags (e.g. pending structs are included
    there but not here).
    """
    try:
        clocks = decode_state_vector(doc.get_state())
    except InvalidPayload as exc:
        raise ValueError(exc.reason) from None
    delete_set = decode_delete_set(doc)
    out = bytearray()
    write_var_uint(out, len(clocks))
    for client in sorted(clocks):
        write_var_uint(out, client)
        write_var_uint(out, clocks[client])
    write_var_uint(out, len(delete_set))
    for client, ranges in delete_set.items():  # already sorted by client
        write_var_uint(out, client)
        write_var_uint(out, len(ranges))
        for clock, length in ranges:
            write_var_uint(out, clock)
            write_var_uint(out, length)
    digest = hashlib.blake2b(bytes(out), digest_size=16, person=_PERSON).hexdigest()
    return f'"{digest}"'
