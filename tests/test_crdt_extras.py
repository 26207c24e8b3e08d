"""Content ETags, server-side element edits, restores and update clocks (all sans-I/O)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pycrdt
import pytest
from pycrdt import Doc, Map, Text

from canvashub.crdt.digest import content_etag, decode_delete_set
from canvashub.crdt.edits import patch_element, restore_to
from canvashub.crdt.errors import InvalidPayload


def elements(doc: Doc) -> Map:
    return doc.get("elements", type=Map)


@contextmanager
def captured(doc: Doc) -> Iterator[list[bytes]]:
    """Collect the v1 update of every transaction committed on ``doc`` in the block."""
    updates: list[bytes] = []
    subscription = doc.observe(lambda event: updates.append(bytes(event.update)))
    try:
        yield updates
    finally:
        doc.unobserve(subscription)


def as_json(doc: Doc) -> str:
    return json.dumps(elements(doc).to_py(), sort_keys=True)


def replica(*updates: bytes) -> Doc:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def canvas(seed: int = 0, edits: int = 1000, client_id: int = 1) -> tuple[Doc, list[bytes]]:
    """A doc built from ``edits`` small transactions (sets, overwrites, deletes, text), and its updates."""
    rng = random.Random(seed)
    doc = Doc(client_id=client_id)
    els = elements(doc)
    notes = doc.get("notes", type=Text)
    with captured(doc) as updates:
        for i in range(edits):
            roll = rng.random()
            ids = list(els.keys())
            if roll < 0.3 or not ids:
                els[f"e{i}"] = Map({"type": "rect", "x": rng.randint(0, 500), "y": 0})
            elif roll < 0.6:
                els[rng.choice(ids)]["x"] = rng.randint(0, 500)
            elif roll < 0.7:
                del els[rng.choice(ids)]
            elif roll < 0.9 or len(notes) == 0:
                notes.insert(rng.randint(0, len(notes)), "ab")
            else:
                del notes[rng.randrange(len(notes))]
    return doc, updates


# --- content_etag -----------------------------------------------------------------------------


def test_etag_is_a_quoted_32_hex_strong_etag():
    """content_etag is a strong ETag: 32 lowercase hex digits in double quotes."""
    assert re.fullmatch(r'"[0-9a-f]{32}"', content_etag(Doc()))


def test_etag_equal_across_load_paths():
    """1000 small updates, one full update, merged blobs, redelivery: one content, one tag."""
    source, updates = canvas()
    assert len(updates) == 1000
    shuffled = updates[:]
    random.Random(7).shuffle(shuffled)
    half = replica(*updates[:500])
    loaded = [
        replica(*updates),
        replica(source.get_update()),
        replica(pycrdt.merge_updates(*shuffled)),
        replica(pycrdt.merge_updates(*updates[:500]), source.get_update(half.get_state())),
        replica(*updates, source.get_update(), *updates[::-1]),  # duplicates are no-ops
    ]
    expected = content_etag(source)
    for doc in loaded:
        assert elements(doc).to_py() == elements(source).to_py()
        assert content_etag(doc) == expected
    assert decode_delete_set(source)  # the history really has deletes


def test_etag_equal_for_concurrent_edits_applied_in_any_order():
    """Two writers; replicas see their (per-writer ordered) updates interleaved differently."""
    alice, alice_updates = canvas(seed=1, edits=200, client_id=11)
    bob, bob_updates = canvas(seed=2, edits=200, client_id=22)
    rng = random.Random(3)
    orders = [alice_updates + bob_updates, bob_updates + alice_updates]
    for _ in range(3):
        a, b = list(alice_updates), list(bob_updates)
        order = []
        while a or b:
            source = a if (a and (not b or rng.random() < 0.5)) else b
            order.append(source.pop(0))
        orders.append(order)
    replicas = [replica(*order) for order in orders]
    assert all(elements(r).to_py() == elements(replicas[0]).to_py() for r in replicas)
    tags = {content_etag(r) for r in replicas}
    assert len(tags) == 1
    assert tags.isdisjoint({content_etag(alice), content_etag(bob)})


def test_etag_after_a_gap_is_filled():
    """An update applied before the one it depends on: same tag once both are in."""
    source, updates = canvas(edits=20)
    reordered = updates[:5] + [updates[6], updates[5]] + updates[7:]
    doc = replica(*reordered)
    assert elements(doc).to_py() == elements(source).to_py()
    assert content_etag(doc) == content_etag(source)


@pytest.mark.xfail(
    reason="pycrdt 0.14.13 (yrs) loses a map overwrite when two updates of one client are both "
    "pending and then unblocked (cf. y-crdt/y-crdt#413); the tag rightly differs",
    strict=False,
)
def test_out_of_causal_order_delivery_converges():
    """One client's updates delivered in reverse order converge to the same content and tag (xfail: yrs)."""
    doc = Doc(client_id=5)
    with captured(doc) as updates:
        elements(doc)["a"] = 1
        elements(doc)["a"] = 2
        elements(doc)["b"] = 3
    late = replica(updates[2], updates[1], updates[0])
    assert elements(late).to_py() == elements(doc).to_py()
    assert content_etag(late) == content_etag(doc)


def test_etag_changes_on_a_delete_only_update():
    """A delete changes the tag though not the state vector; a replica that applies it gets the same tag."""
    doc = Doc(client_id=5)
    elements(doc)["a"] = Map({"x": 1})
    elements(doc)["b"] = Map({"x": 2})
    mirror = replica(doc.get_update())
    before, state_before = content_etag(doc), doc.get_state()
    with captured(doc) as updates:
        del elements(doc)["a"]
    assert doc.get_state() == state_before  # Yjs deletes do not advance the state vector
    assert content_etag(doc) != before
    mirror.apply_update(updates[0])
    assert content_etag(mirror) == content_etag(doc)


def test_etag_changes_on_insert_and_on_field_update():
    """Inserting an element, then changing one of its fields, each give a new tag."""
    doc = Doc(client_id=5)
    tags = {content_etag(doc)}
    elements(doc)["a"] = Map({"x": 1})
    tags.add(content_etag(doc))
    elements(doc)["a"]["x"] = 2
    tags.add(content_etag(doc))
    assert len(tags) == 3


def test_etag_rejects_an_unexpected_layout():
    """A document whose update has a struct layout the digest does not expect raises ValueError."""

    class Fake:
        def get_state(self) -> bytes:
            return b"\x00"

        def get_update(self, state_vector: bytes = b"\x00") -> bytes:
            return b"\x01\x01\x05\x00\x0a\x01\x00"  # one client with a struct (a Skip)

    with pytest.raises(ValueError):
        content_etag(Fake())  # type: ignore[arg-type]


# --- patch_element ---------------------------------------------------------------------------


def test_patch_element_creates_sets_and_deletes_in_one_update():
    """patch_element creates, sets and deletes (None) fields with one update per call.
    The element is a Y.Map whose values are plain JSON, and a peer applying the updates ends up equal."""
    doc = Doc()
    mirror = Doc()
    with captured(doc) as updates:
        patch_element(doc, "el-1", {"type": "rect", "x": 10, "w": 2.5, "locked": False, "style": {"dash": [1, 2]}})
    assert len(updates) == 1
    mirror.apply_update(updates[0])
    assert elements(mirror).to_py() == {
        "el-1": {"type": "rect", "x": 10, "w": 2.5, "locked": False, "style": {"dash": [1, 2]}}
    }
    assert isinstance(elements(doc)["el-1"], Map)
    assert type(elements(doc)["el-1"]["style"]) is dict  # plain JSON, not a nested Y.Map

    with captured(doc) as updates:
        patch_element(doc, "el-1", {"x": 11, "w": None, "missing": None, "fill": "#f00"})
    assert len(updates) == 1
    mirror.apply_update(updates[0])
    assert elements(mirror).to_py() == elements(doc).to_py()
    assert elements(doc).to_py() == {
        "el-1": {"type": "rect", "x": 11, "locked": False, "style": {"dash": [1, 2]}, "fill": "#f00"}
    }


def test_patch_element_with_no_fields_creates_an_empty_element():
    """patch_element with no fields creates an empty element."""
    doc = Doc()
    patch_element(doc, "a", {})
    assert elements(doc).to_py() == {"a": {}}


@pytest.mark.parametrize("element_id", ["", "x" * 65, "a b", "a/b", "é", "a\n", "a.b", 5, None])
def test_patch_element_rejects_bad_ids(element_id):
    """An element id that is not 1-64 of [A-Za-z0-9_-] is refused, and nothing is written."""
    doc = Doc()
    with captured(doc) as updates, pytest.raises(InvalidPayload):
        patch_element(doc, element_id, {"x": 1})
    assert updates == [] and elements(doc).to_py() == {}


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "fields",
    [
        {"x": object()},
        {"x": b"bytes"},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": 2**53},  # would reach JS as a BigInt
        {"x": 2**64},  # yrs panics
        {"x": {1: 2}},  # yrs panics on non-str keys
        {"x": (1, 2)},
        {"x": {1, 2}},
        {"x": "\ud800"},  # yrs panics on lone surrogates
        {"x": {"k": ["ok", b"no"]}},
        {"x": _deep(100)},
        {"": 1},
        {"k" * 257: 1},
        {5: 1},
        {"ok": 1, "bad": object()},  # nothing is written when any field is bad
    ],
)
def test_patch_element_rejects_bad_values_before_writing(fields):
    """A field yrs cannot store or JSON cannot carry is refused, and nothing of the patch is written.
    Covered: objects, bytes, NaN and infinity, ints beyond 2**53, non-string keys, tuples, sets, lone surrogates,
    100-deep nesting, empty or over-long keys."""
    doc = Doc()
    patch_element(doc, "a", {"keep": 1})
    with captured(doc) as updates, pytest.raises(InvalidPayload):
        patch_element(doc, "a", fields)
    assert updates == []
    assert elements(doc).to_py() == {"a": {"keep": 1}}


def test_patch_element_accepts_edge_values():
    """Values at the limits (256-character keys, +-(2**53 - 1), nested null, bool, float, non-ASCII) round-trip."""
    doc = Doc()
    fields = {"k" * 256: 2**53 - 1, "n": -(2**53 - 1), "nested": {"a": None, "b": [True, 0.5, "é"]}}
    patch_element(doc, "a", fields)
    assert elements(replica(doc.get_update())).to_py() == elements(doc).to_py()


@pytest.mark.parametrize("value", ["plain", None, Text("t")])
def test_patch_element_refuses_a_non_map_element(value):
    """patch_element refuses an element that is not a Y.Map (a string, null, a Y.Text) and writes nothing."""
    doc = Doc()
    elements(doc)["a"] = value
    with captured(doc) as updates, pytest.raises(InvalidPayload):
        patch_element(doc, "a", {"x": 1})
    assert updates == []


# --- restore_to -------------------------------------------------------------------------------


def _base(doc: Doc) -> None:
    with doc.transaction():
        elements(doc)["a"] = Map({"type": "rect", "x": 1, "y": 2, "fill": "#000"})
        elements(doc)["b"] = Map({"type": "ellipse", "x": 5, "locked": True})
        elements(doc)["c"] = Map({"type": "text", "z": 3})


def _add_element(doc):
    patch_element(doc, "d", {"type": "rect", "x": 9})


def _remove_element(doc):
    del elements(doc)["b"]


def _change_field(doc):
    patch_element(doc, "a", {"x": 100})


def _add_field(doc):
    patch_element(doc, "c", {"fill": "#fff"})


def _remove_field(doc):
    patch_element(doc, "a", {"fill": None})


def _bool_to_number(doc):
    patch_element(doc, "b", {"locked": 1})  # 1 == True in Python, not in JSON


def _map_to_plain(doc):
    elements(doc)["c"] = "not a map"


def _everything(doc):
    for edit in (_add_element, _remove_element, _change_field, _add_field, _remove_field, _bool_to_number):
        edit(doc)


SCENARIOS = [
    _add_element,
    _remove_element,
    _change_field,
    _add_field,
    _remove_field,
    _bool_to_number,
    _map_to_plain,
    _everything,
]


@pytest.mark.parametrize("edit", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_restore_to_reaches_the_target_with_one_update(edit):
    """restore_to undoes any kind of edit with one update, which brings a peer to the target too.
    JSON types are kept exactly: a bool is restored as a bool, not as an equal number."""
    doc = Doc()
    _base(doc)
    target = replica(doc.get_update())
    edit(doc)
    assert as_json(doc) != as_json(target)  # strict: True and 1.0 differ
    third = replica(doc.get_update())  # a peer in sync with doc before the restore
    before = content_etag(doc)

    with captured(doc) as updates:
        restore_to(doc, target)

    assert len(updates) == 1
    assert elements(doc).to_py() == elements(target).to_py()
    third.apply_update(updates[0])
    assert elements(third).to_py() == elements(target).to_py()
    assert content_etag(third) == content_etag(doc) != before
    assert type(elements(doc)["b"]["locked"]) is bool


def test_restore_to_plain_element_back_to_map_and_map_to_plain():
    """restore_to turns a plain element back into a Y.Map, and a Y.Map into a plain value, as the target has it."""
    doc = Doc()
    elements(doc)["a"] = "plain"
    elements(doc)["b"] = Map({"x": 1})
    target = Doc()
    elements(target)["a"] = Map({"x": 2})
    elements(target)["b"] = {"x": 1}  # same to_py() as the Y.Map, but a plain value
    restore_to(doc, target)
    assert isinstance(elements(doc)["a"], Map)
    assert type(elements(doc)["b"]) is dict
    assert elements(doc).to_py() == elements(target).to_py()


def test_restore_to_touches_only_differing_fields():
    """restore_to writes only the fields that differ from the target."""
    doc = Doc()
    _base(doc)
    target = replica(doc.get_update())
    _change_field(doc)
    changed: list[tuple[list, set]] = []
    els = elements(doc)  # unobserve needs the same wrapper object that observed
    subscription = els.observe_deep(lambda events: changed.extend((list(e.path), set(e.keys)) for e in events))
    restore_to(doc, target)
    els.unobserve(subscription)
    assert changed == [(["a"], {"x"})]


def test_restore_to_an_equal_doc_is_a_no_op():
    """restore_to a document with the same content commits no update."""
    doc = Doc()
    _base(doc)
    target = replica(doc.get_update())
    with captured(doc) as updates:
        restore_to(doc, target)
    assert updates == []


def test_restore_to_leaves_other_roots_alone():
    """restore_to restores the elements map only; other roots (the notes text) keep their content."""
    doc = Doc()
    _base(doc)
    target = replica(doc.get_update())
    doc.get("notes", type=Text).insert(0, "kept")
    _remove_element(doc)
    restore_to(doc, target)
    assert str(doc.get("notes", type=Text)) == "kept"
    assert elements(doc).to_py() == elements(target).to_py()


def test_restore_to_copies_bytes_and_text_values():
    """pycrdt returns bytes as bytearray, which it cannot write back; Y.Text becomes a string."""
    doc = Doc()
    target = Doc()
    elements(target)["a"] = Map({"blob": b"\x00\x01", "label": Text("hi")})
    restore_to(doc, target)
    assert elements(doc).to_py() == {"a": {"blob": b"\x00\x01", "label": "hi"}}
    with captured(doc) as updates:
        restore_to(doc, target)
    assert updates == []
