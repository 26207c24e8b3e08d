"""The v1 update splitter (crdt/split.py): slices applied in order give the same document as the whole.

Random documents are built by several pycrdt clients editing concurrently (maps, arrays, formatted
text with embeds and surrogate pairs, nested types, XML, binary, subdocs, deletes) and syncing now and
then; each merged state is split at several sizes and applied slice by slice to a fresh Doc, which
must end with the same state vector and content as a Doc that applied the update whole. Seeded:
a failure names its seed.
"""

from __future__ import annotations

import base64
import random
import subprocess
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, merge_updates

from canvashub.crdt.split import SplitRefused, _read_delete_set, _read_structs, split_update
from canvashub.crdt.update import decode_state_vector

from .js_client import JS_DIR, require_node

SIZES = (1, 16, 100, 1024, 64 * 1024)
ALPHABET = "ab ZéßЖ中😀🎨\u0301\n"  # ASCII, 2- and 3-byte UTF-8, surrogate pairs, a combining mark


def text(rng: random.Random, longest: int = 8) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest)))


def any_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return rng.randint(-(2**31), 2**31)
    if kind == 1:
        return rng.choice([0.5, -1e300, 3.25, float(rng.randint(0, 10**6))])
    if kind == 2:
        return text(rng, 20)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if kind == 5:
        return rng.randint(2**40, 2**52)
    if kind == 6:
        return "x" * rng.randint(100, 400)  # multi-byte length varints
    if kind == 7:
        return [any_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(rng, 4): any_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def containers(doc: Doc) -> tuple[list[Map], list[Array], list[Text]]:
    """Every map, array and text reachable from the document's roots."""
    maps: list[Map] = [doc.get("m", type=Map)]
    arrays: list[Array] = [doc.get("a", type=Array)]
    texts: list[Text] = [doc.get("t", type=Text)]
    index = 0
    seen = maps + arrays
    while index < len(seen):
        node = seen[index]
        index += 1
        values = [node[key] for key in sorted(node.keys())] if isinstance(node, Map) else list(node)
        for value in values:
            if isinstance(value, Map):
                maps.append(value)
                seen.append(value)
            elif isinstance(value, Array):
                arrays.append(value)
                seen.append(value)
            elif isinstance(value, Text):
                texts.append(value)
    return maps, arrays, texts


def offsets(target: Text) -> list[int]:
    """Indices between characters (pycrdt counts UTF-8 bytes; an embed counts one)."""
    found = [0]
    for chunk, *_ in target.diff():
        for char in chunk if isinstance(chunk, str) else [None]:
            found.append(found[-1] + (1 if char is None else len(char.encode())))
    return found


def edit(doc: Doc, rng: random.Random, subdocs: bool) -> None:
    """One random change to ``doc``."""
    maps, arrays, texts = containers(doc)
    op = rng.randrange(12)
    if op <= 2:
        target = rng.choice(maps)
        key = rng.choice(["k", "é", "😀", "long-" + "k" * 200, str(rng.randrange(20))])
        nested = rng.randrange(8)
        if nested == 0:
            target[key] = Map({"x": any_value(rng)})
        elif nested == 1:
            target[key] = Array([any_value(rng) for _ in range(rng.randint(0, 3))])
        elif nested == 2:
            target[key] = Text(text(rng))
        elif nested == 3 and subdocs:
            target[key] = Doc()
        else:
            target[key] = any_value(rng)
    elif op == 3:
        target = rng.choice(maps)
        keys = sorted(target.keys())
        if keys:
            del target[rng.choice(keys)]
    elif op <= 5:
        array = rng.choice(arrays)
        values = [any_value(rng) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.2:
            values.append(Map({"in": text(rng)}))
        at = rng.randint(0, len(array))
        for offset, value in enumerate(values):
            array.insert(at + offset, value)
    elif op == 6:
        array = rng.choice(arrays)
        if len(array):
            start = rng.randrange(len(array))
            del array[start : min(len(array), start + rng.randint(1, 4))]
    elif op <= 8:
        target_text = rng.choice(texts)
        attrs = rng.choice([None, None, {"bold": True}, {"color": "#f00", "size": 3}])
        target_text.insert(rng.choice(offsets(target_text)), text(rng) or "x", attrs)
    elif op == 9:
        target_text = rng.choice(texts)
        between = offsets(target_text)
        if len(between) > 1:
            first = rng.randrange(len(between) - 1)
            start, stop = between[first], between[min(len(between) - 1, first + rng.randint(1, 5))]
            if rng.random() < 0.5:
                del target_text[start:stop]
            else:
                target_text.format(start, stop, {"italic": rng.choice([True, None])})
    elif op == 10:
        target_text = rng.choice(texts)
        target_text.insert_embed(rng.choice(offsets(target_text)), {"image": text(rng)})
    else:
        fragment = doc.get("x", type=XmlFragment)
        if len(fragment.children) and rng.random() < 0.3:
            del fragment.children[rng.randrange(len(fragment.children))]
        else:
            fragment.children.append(XmlElement("p", {"class": text(rng)}, [XmlText(text(rng))]))


def random_update(seed: int, subdocs: bool = False) -> bytes:
    """The merged state of 1-6 clients that edited concurrently and synced now and then."""
    rng = random.Random(seed)
    clients: list[Doc[Any]] = [Doc(client_id=rng.randrange(1, 2**32)) for _ in range(rng.randint(1, 6))]
    for _ in range(rng.randint(20, 250)):
        doc = rng.choice(clients)
        with doc.transaction():
            for _ in range(rng.randint(1, 3)):
                edit(doc, rng, subdocs)
        if rng.random() < 0.3:
            other = rng.choice(clients)
            other.apply_update(doc.get_update(other.get_state()))
    merged: Doc[Any] = Doc()
    for doc in clients:
        merged.apply_update(doc.get_update())
    return merged.get_update()


def plain(value: Any) -> Any:
    """``to_py`` output with subdocuments as their guid (a Doc compares by identity)."""
    if isinstance(value, Doc):
        return ("doc", value.guid)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def content(doc: Doc) -> dict[str, Any]:
    """What a reader sees: every root as plain data, text with its formatting runs."""
    return {
        "m": plain(doc.get("m", type=Map).to_py()),
        "a": plain(doc.get("a", type=Array).to_py()),
        "t": [(str(chunk), attrs) for chunk, *attrs in doc.get("t", type=Text).diff()],
        "x": str(doc.get("x", type=XmlFragment)),
    }


def layout(doc: Doc) -> tuple[list[tuple[int, list[int]]], list[tuple[int, list[tuple[int, int]]]]]:
    """The document's structs (client, clock of each) and its delete set, as its full update encodes
    them (the bytes themselves are not comparable: yrs writes an Any object's keys in hash order)."""
    update = doc.get_update()
    blocks, end = _read_structs(update)
    return sorted((block.client, block.clocks) for block in blocks), sorted(_read_delete_set(update, end))


def assert_slices_rebuild(update: bytes, sizes: tuple[int, ...] = SIZES) -> None:
    whole: Doc = Doc()
    whole.apply_update(update)
    for size in sizes:
        slices = split_update(update, size)
        if size >= len(update):
            assert slices == [update]
        rebuilt: Doc = Doc()
        for piece in slices:
            rebuilt.apply_update(piece)
        assert decode_state_vector(rebuilt.get_state()) == decode_state_vector(whole.get_state()), size
        assert content(rebuilt) == content(whole), f"content differs at {size} bytes"
        assert layout(rebuilt) == layout(whole), f"structs or deletes differ at {size} bytes"
        for piece in slices:  # over the size only if it holds one struct (structs are never cut)
            if len(piece) > size >= 100:  # (below 100 bytes, one delete-set range may not fit)
                blocks, _ = _read_structs(piece)
                lengths = [b.clocks[i + 1] - b.clocks[i] for b in blocks for i in range(b.count)]
                assert len([n for n in lengths if n]) == 1, f"a slice of {len(piece)} bytes at {size}"


@pytest.mark.parametrize("seed", range(60))
def test_random_documents_split_and_rebuild(seed):
    """Slices of a random multi-client document, applied in order, rebuild it exactly at every size."""
    assert_slices_rebuild(random_update(seed))


@pytest.mark.parametrize("seed", range(8))
def test_documents_with_subdocs_split_and_rebuild(seed):
    """Subdocuments (Doc content) split and rebuild like any struct."""
    update = random_update(1000 + seed, subdocs=True)
    assert_slices_rebuild(update)


def test_slices_keep_to_their_size_and_need_no_pending_structs():
    """A 2,000-element canvas cut into 16 KB slices: each slice at most 16 KB, and every slice applies
    completely (no struct waits for a later one)."""
    doc: Doc = Doc()
    elements = doc.get("elements", type=Map)
    for start in range(0, 2000, 500):
        with doc.transaction():
            for i in range(start, start + 500):
                elements[f"e{i}"] = Map({"type": "rect", "x": float(i), "label": f"é{i}😀"})
    update = doc.get_update()
    slices = split_update(update, 16 * 1024)
    assert len(slices) > 5 and max(map(len, slices)) <= 16 * 1024
    rebuilt: Doc = Doc()
    for piece in slices:
        before = rebuilt.get_state()
        rebuilt.apply_update(piece)
        assert rebuilt.get_state() != before or piece.startswith(b"\x00"), "a slice left structs pending"
    assert rebuilt.get_update() == update


def test_what_it_does_not_read_is_refused():
    """Skip structs (a merged update with a gap) and garbage are refused, never mis-split."""
    doc: Doc = Doc(client_id=7)
    values = doc.get("m", type=Map)
    values["k1"] = "v" * 300
    first = doc.get_update()
    values["k2"] = "w" * 300
    middle = doc.get_state()
    values["k3"] = "x" * 300
    gap = merge_updates(first, doc.get_update(middle))  # client 7's clocks with a hole: a Skip struct
    for bad in (gap, b"\xff" * 100, first[:-5] + b"\xff" * 5 + b"x" * 200, first[:40] + b"\x00" * 100):
        with pytest.raises(SplitRefused):
            split_update(bad, 16)


YJS_SCRIPT = r"""
import * as Y from 'yjs'
const docs = [1, 2, 3].map(id => { const d = new Y.Doc(); d.clientID = id * 1000003; return d })
const sync = () => { for (const a of docs) for (const b of docs) if (a !== b) Y.applyUpdate(b, Y.encodeStateAsUpdate(a, Y.encodeStateVector(b))) }
let n = 0
for (let round = 0; round < 40; round++) {
  for (const [i, d] of docs.entries()) {
    d.transact(() => {
      const t = d.getText('t')
      t.insert(Math.min(t.length, (round * 7 + i) % (t.length + 1)), 'y😀é' + round, round % 3 ? null : { bold: true })
      if (t.length > 6 && round % 4 === 1) t.delete(2, 3)
      if (t.length > 4 && round % 5 === 2) t.format(1, 3, { italic: true })
      if (round % 6 === 3) t.insertEmbed(0, { image: 'i' + round })
      const m = d.getMap('m')
      m.set('k' + (n++ % 13), { n: round, s: 'ß'.repeat(round), b: new Uint8Array([1, 2, round]), f: round / 3 })
      if (round % 3 === 0) m.delete('k' + (round % 13))
      const a = d.getArray('a')
      a.insert(0, [round, 'x', null, true, [1, { z: 2 }]])
      if (a.length > 10 && round % 2) a.delete(3, 4)
      const inner = new Y.Map(); inner.set('deep', new Y.Text('nested ' + round)); m.set('nested' + (round % 4), inner)
      const x = d.getXmlFragment('x'); const el = new Y.XmlElement('p'); el.setAttribute('c', 'v' + round)
      el.insert(0, [new Y.XmlText('xml ' + round)]); x.insert(0, [el])
    })
  }
  if (round % 3 === 2) sync()
}
sync()
process.stdout.write(Buffer.from(Y.encodeStateAsUpdate(docs[0])).toString('base64'))
"""


def test_a_yjs_generated_update_splits_and_rebuilds():
    """An update encoded by Yjs itself (three clients, formatted text with surrogate pairs and embeds,
    maps, arrays, XML, deletes) splits and rebuilds in pycrdt like pycrdt's own."""
    node = require_node()
    result = subprocess.run(
        [node, "--input-type=module", "-e", YJS_SCRIPT], cwd=JS_DIR, capture_output=True, timeout=60, check=True
    )
    update = base64.b64decode(result.stdout)
    assert len(update) > 10_000
    assert_slices_rebuild(update)
