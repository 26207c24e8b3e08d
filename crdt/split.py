"""Cutting one Yjs v1 update into smaller v1 updates that apply, in order, to the same document.

Why: a cold load applies a canvas's merged state to the room's fresh ``Doc`` on the event loop
(the document lives there), and pycrdt applies an update in one call that holds the GIL: ~0.14 s
for 3.4 MB. Applied as ~64 KB slices with a yield between them, no single call stalls the loop
for more than a few ms. pycrdt offers no way to encode a struct range, so this module reads the v1
format itself (lib0 / Yjs ``updates.js``, ``encoding.js``, ``structs/*``) and copies each struct's
bytes verbatim: a v1 struct is self-contained except for its clock, which is the client block's
start clock plus the lengths of the structs before it, and each slice's blocks start where their
first struct is.

The v1 layout read here::

    update     = varUint(#blocks) block* deleteSet
    block      = varUint(#structs) varUint(client) varUint(clock of first struct) struct*
    struct     = info:u8 ...; info & 0x1F: 0 GC(varUint len), 10 Skip(varUint len), else an Item:
                 [origin id if info & 0x80] [right origin id if info & 0x40]
                 [if neither: varUint(1) string(root name) | varUint(0) id(parent), then
                  string(parent key) if info & 0x20] content
    content    = 1 Deleted(varUint len) | 2 JSON(varUint n, n strings) | 3 Binary(bytes)
               | 4 String(string: its UTF-16 length is the struct's length) | 5 Embed(string)
               | 6 Format(string key, string json) | 7 Type(varUint ref [string name for 3, 5])
               | 8 Any(varUint n, n lib0 Any) | 9 Doc(string guid, Any options)
    deleteSet  = varUint(#clients) (varUint client, varUint #ranges, (varUint clock, varUint len)*)*

Slices are ordered so each struct comes after the structs it refers to (origin, right origin,
parent: the order yrs would integrate them in), so no slice leaves structs pending in yrs; the
delete set comes last. Anything this reader does not know (Skip structs, weak links, move content,
a malformed byte) raises ``SplitRefused``: the caller then applies the update whole. Bounded work:
one pass over the bytes, a few list entries per struct; Any nesting is capped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

DEFAULT_SLICE_BYTES = 64 * 1024
MAX_ANY_DEPTH = 64

_ORIGIN = 0x80
_RIGHT_ORIGIN = 0x40
_PARENT_SUB = 0x20


class SplitRefused(ValueError):
    """The update uses something this reader does not handle (or is malformed): apply it whole."""


def _var(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varUint at ``pos``: (value, position after it)."""
    try:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        value = byte & 0x7F
        shift = 7
        pos += 1
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift > 63:
                raise SplitRefused("varint longer than 10 bytes")
    except IndexError:
        raise SplitRefused("truncated update") from None


def _skip_var(data: bytes, pos: int) -> int:
    """Skip a varUint or a lib0 varInt (both end at the first byte below 0x80)."""
    end = pos + 10
    while pos < end:
        if pos >= len(data):
            raise SplitRefused("truncated update")
        if data[pos] < 0x80:
            return pos + 1
        pos += 1
    raise SplitRefused("varint longer than 10 bytes")


def _skip_bytes(data: bytes, pos: int) -> int:
    """Skip a varUint length + that many bytes (a lib0 string or byte array)."""
    length, pos = _var(data, pos)
    pos += length
    if pos > len(data):
        raise SplitRefused("truncated update")
    return pos


def _skip_any(data: bytes, pos: int, depth: int = 0) -> int:
    """Skip one lib0 Any value (lib0 ``encoding.writeAny``)."""
    if depth > MAX_ANY_DEPTH:
        raise SplitRefused("Any nested too deep")
    if pos >= len(data):
        raise SplitRefused("truncated update")
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # varInt
        return _skip_var(data, pos)
    if tag == 123 or tag == 122:  # float64, bigint64
        pos += 8
    elif tag == 124:  # float32
        pos += 4
    elif tag == 119 or tag == 116:  # string, Uint8Array
        return _skip_bytes(data, pos)
    elif tag == 118:  # object: n x (string key, Any value)
        count, pos = _var(data, pos)
        if count > len(data) - pos:
            raise SplitRefused("Any object longer than the update")
        for _ in range(count):
            pos = _skip_any(data, _skip_bytes(data, pos), depth + 1)
    elif tag == 117:  # array
        count, pos = _var(data, pos)
        if count > len(data) - pos:
            raise SplitRefused("Any array longer than the update")
        for _ in range(count):
            pos = _skip_any(data, pos, depth + 1)
    else:
        raise SplitRefused(f"unknown Any tag {tag}")
    if pos > len(data):
        raise SplitRefused("truncated update")
    return pos


def _utf16_length(data: bytes, start: int, end: int) -> int:
    """UTF-16 code units of the UTF-8 string ``data[start:end]`` (Yjs counts string clocks in them)."""
    raw = data[start:end]
    if raw.isascii():
        return end - start
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SplitRefused("string content is not UTF-8") from None
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


class _Block:
    """One client's structs in the update: where each starts (bytes, then the block's end), its clock
    (then the block's end clock) and, for structs that refer to another client, those ids."""

    __slots__ = ("client", "starts", "clocks", "deps")

    def __init__(self, client: int) -> None:
        self.client = client
        self.starts: list[int] = []
        self.clocks: list[int] = []
        self.deps: dict[int, tuple[tuple[int, int], ...]] = {}  # struct index -> other clients' ids

    @property
    def count(self) -> int:
        return len(self.starts) - 1


def _read_structs(data: bytes) -> tuple[list[_Block], int]:
    """Parse the struct section: the client blocks and the position of the delete set.

    The hot loop of a cold load (one pass per struct, ~160,000 for a canvas of 20,000 elements), so
    the common cases are inlined: one-byte varUints, map entries holding one Any value."""
    size = len(data)
    count, pos = _var(data, 0)
    if count * 3 > size:
        raise SplitRefused(f"claims {count} client blocks in {size} bytes")
    blocks: list[_Block] = []
    seen: set[int] = set()
    var = _var
    skip_any = _skip_any
    try:
        for _ in range(count):
            structs, pos = var(data, pos)
            client, pos = var(data, pos)
            clock, pos = var(data, pos)
            if structs > size - pos:
                raise SplitRefused(f"claims {structs} structs in {size - pos} bytes")
            if client in seen:
                raise SplitRefused(f"client {client} has two blocks")
            seen.add(client)
            block = _Block(client)
            starts, clocks, deps = block.starts, block.clocks, block.deps
            own = _uint(client)
            own_size = len(own)
            for index in range(structs):
                starts.append(pos)
                clocks.append(clock)
                info = data[pos]
                pos += 1
                ref = info & 0x1F
                if ref == 0:  # GC
                    length, pos = var(data, pos)
                    if length <= 0:
                        raise SplitRefused("empty struct")
                    clock += length
                    continue
                if ref == 10:
                    raise SplitRefused("skip struct")  # merged updates with gaps: not ours to slice
                refs: list[tuple[int, int]] | None = None
                if info & 0xC0:
                    if info & _ORIGIN:
                        other, pos = var(data, pos)
                        at, pos = var(data, pos)
                        if other != client:
                            refs = [(other, at)]
                    if info & _RIGHT_ORIGIN:
                        other, pos = var(data, pos)
                        at, pos = var(data, pos)
                        if other != client:
                            refs = [(other, at)] if refs is None else [*refs, (other, at)]
                else:
                    named = data[pos]
                    pos += 1
                    if named == 0:
                        if data.startswith(own, pos):  # the parent is this client's: no dependency
                            pos += own_size
                            while data[pos] & 0x80:
                                pos += 1
                            pos += 1
                        else:
                            other, pos = var(data, pos)
                            at, pos = var(data, pos)
                            refs = [(other, at)]
                    elif named == 1:
                        length = data[pos]
                        pos = pos + 1 + length if length < 0x80 else _skip_bytes(data, pos)  # root name
                    else:
                        raise SplitRefused(f"parent info {named}")
                    if info & _PARENT_SUB:
                        length = data[pos]
                        pos = pos + 1 + length if length < 0x80 else _skip_bytes(data, pos)  # key
                if refs is not None:
                    deps[index] = tuple(refs)
                if ref == 8:  # Any (the most common: map values)
                    length = data[pos]
                    if length == 1:
                        tag = data[pos + 1]
                        if tag == 123:  # float64
                            pos += 10
                        elif tag == 125:  # an integer (varInt)
                            pos += 2
                            while data[pos] & 0x80:
                                pos += 1
                            pos += 1
                        elif tag == 119 and data[pos + 2] < 0x80:  # a short string
                            pos += 3 + data[pos + 2]
                        else:
                            pos = skip_any(data, pos + 1)
                    else:
                        length, pos = var(data, pos)
                        if length > size - pos:
                            raise SplitRefused("Any content longer than the update")
                        for _ in range(length):
                            pos = skip_any(data, pos)
                elif ref == 4:  # String
                    text_size, text = var(data, pos)
                    pos = text + text_size
                    length = _utf16_length(data, text, pos)
                elif ref == 7:  # Type
                    type_ref, pos = var(data, pos)
                    if type_ref == 3 or type_ref == 5:  # XmlElement, XmlHook: a name
                        pos = _skip_bytes(data, pos)
                    elif type_ref > 6:
                        raise SplitRefused(f"type ref {type_ref}")
                    length = 1
                elif ref == 1:  # Deleted
                    length, pos = var(data, pos)
                elif ref == 2:  # JSON
                    length, pos = var(data, pos)
                    if length > size - pos:
                        raise SplitRefused("JSON content longer than the update")
                    for _ in range(length):
                        pos = _skip_bytes(data, pos)
                elif ref == 3 or ref == 5:  # Binary, Embed
                    pos = _skip_bytes(data, pos)
                    length = 1
                elif ref == 6:  # Format: key, value
                    pos = _skip_bytes(data, _skip_bytes(data, pos))
                    length = 1
                elif ref == 9:  # Doc: guid, options
                    pos = skip_any(data, _skip_bytes(data, pos))
                    length = 1
                else:
                    raise SplitRefused(f"content ref {ref}")
                # A string may be empty (length 0): yrs writes a split inside a surrogate pair as the
                # whole character, then an empty string; its decoder counts them so, and so do we.
                clock += length
            if pos > size:
                raise SplitRefused("truncated update")
            starts.append(pos)
            clocks.append(clock)
            if structs:
                blocks.append(block)
    except IndexError:
        raise SplitRefused("truncated update") from None
    return blocks, pos


def _read_delete_set(data: bytes, pos: int) -> list[tuple[int, list[tuple[int, int]]]]:
    count, pos = _var(data, pos)
    if count * 2 > len(data) - pos + 1:
        raise SplitRefused(f"delete set claims {count} clients")
    clients: list[tuple[int, list[tuple[int, int]]]] = []
    for _ in range(count):
        client, pos = _var(data, pos)
        ranges_count, pos = _var(data, pos)
        if ranges_count * 2 > len(data) - pos:
            raise SplitRefused(f"delete set claims {ranges_count} ranges")
        ranges = []
        for _ in range(ranges_count):
            clock, pos = _var(data, pos)
            length, pos = _var(data, pos)
            ranges.append((clock, length))
        clients.append((client, ranges))
    if pos != len(data):
        raise SplitRefused("bytes after the delete set")
    return clients


def _order(blocks: list[_Block]) -> list[tuple[_Block, int, int]]:
    """Every struct once, as runs ``(block, first, end)``, each struct after the structs of this update
    it refers to (yrs' integration order: follow a missing dependency to its client's block, like
    Yjs ``integrateStructs``)."""
    if len(blocks) == 1:
        return [(blocks[0], 0, blocks[0].count)]
    by_client = {block.client: block for block in blocks}
    next_index = {block.client: 0 for block in blocks}
    order: list[tuple[_Block, int, int]] = []
    for first in blocks:
        stack = [first]
        on_stack = {first.client}
        while stack:
            block = stack[-1]
            index = start = next_index[block.client]
            end = block.count
            deps = block.deps
            waiting = None
            while index < end:
                refs = deps.get(index)
                if refs is not None:
                    for c, k in refs:
                        other = by_client.get(c)
                        if other is None or c in on_stack:
                            continue  # not in this update (yrs has it or will wait), or a cycle: no help
                        done = next_index[c]
                        if done < other.count and other.clocks[done] <= k < other.clocks[-1]:
                            waiting = other
                            break
                    if waiting is not None:
                        break
                index += 1
            if waiting is not None and block.clocks[index] == block.clocks[index + 1]:
                # yrs panics on a slice that starts with an empty struct (see ``_read_structs``)
                raise SplitRefused("an empty struct waits for another client")
            if index > start:
                order.append((block, start, index))
                next_index[block.client] = index
            if waiting is not None:
                stack.append(waiting)
                on_stack.add(waiting.client)
            else:
                on_stack.discard(stack.pop().client)
    return order


def _uint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_structs(data: bytes, runs: dict[_Block, list[int]]) -> bytearray:
    """The struct section of a slice: per client, its contiguous structs ``[first, end)``."""
    out = bytearray(_uint(len(runs)))
    for block, (first, end) in runs.items():
        out += _uint(end - first)
        out += _uint(block.client)
        out += _uint(block.clocks[first])
        out += data[block.starts[first] : block.starts[end]]
    return out


def _encode_delete_set(clients: Sequence[tuple[int, Sequence[tuple[int, int]]]]) -> bytes:
    out = bytearray(_uint(len(clients)))
    for client, ranges in clients:
        out += _uint(client)
        out += _uint(len(ranges))
        for clock, length in ranges:
            out += _uint(clock)
            out += _uint(length)
    return bytes(out)


BLOCK_HEADER_BYTES = 30  # worst case of three varUints (structs, client, clock)


def split_update(update: bytes, max_bytes: int = DEFAULT_SLICE_BYTES) -> list[bytes]:
    """``update`` (Yjs v1) as updates of at most ``max_bytes`` each (a single struct larger than that
    gets a slice of its own) whose in-order application gives the same document: same state vector,
    same content. Raises ``SplitRefused`` for what this reader does not handle."""
    if len(update) <= max_bytes:
        return [update]
    blocks, ds_start = _read_structs(update)
    delete_set = _read_delete_set(update, ds_start)
    slices: list[bytes] = []
    runs: dict[_Block, list[int]] = {}
    size = 2
    for block, first, end in _order(blocks):
        starts = block.starts
        while first < end:
            run = runs.get(block)
            room = max_bytes - size - (0 if run is not None else BLOCK_HEADER_BYTES)
            # The structs from ``first`` that fit in ``room`` bytes (at least one in an empty slice).
            last = bisect.bisect_right(starts, starts[first] + room, first, end + 1) - 1
            if last <= first:
                if runs:
                    slices.append(bytes(_encode_structs(update, runs) + b"\x00"))
                    runs, size = {}, 2
                    continue
                last = first + 1
            while last < end and block.clocks[last] == block.clocks[last + 1]:
                last += 1  # an empty struct stays with the one before it: yrs panics on one alone
            if run is None:
                runs[block] = [first, last]
                size += BLOCK_HEADER_BYTES
            else:
                run[1] = last
            size += starts[last] - starts[first]
            first = last
    # The delete set last (its targets are all integrated by then), cut by client and range.
    pending: list[tuple[int, list[tuple[int, int]]]] = []
    ds_size = 1
    for client, ranges in delete_set:
        for clock, length in ranges:
            if size + ds_size + 40 > max_bytes and (pending or runs):
                head = _encode_structs(update, runs) if runs else bytearray(b"\x00")
                slices.append(bytes(head + _encode_delete_set(pending)))
                runs, size, pending, ds_size = {}, 1, [], 1
            if not pending or pending[-1][0] != client:
                pending.append((client, []))
                ds_size += 2 * len(_uint(client))
            pending[-1][1].append((clock, length))
            ds_size += len(_uint(clock)) + len(_uint(length))
    if runs or pending:
        head = _encode_structs(update, runs) if runs else bytearray(b"\x00")
        slices.append(bytes(head + _encode_delete_set(pending)))
    return slices
