"""Server-side edits to a canvas document (REST patches, restores from history).

The schema is ``Y.Map('elements')`` of ``Y.Map`` per element, keyed by element
id, holding JSON fields (``type, x, y, w, h, fill, z``). Only that root is
touched here; any other root of the document is left alone.

Each public function issues at most one transaction, hence at most one Yjs
update for the room to relay and store, and validates all its input *before*
opening it: a pycrdt transaction commits even when it raises (no rollback).

What pycrdt 0.14.13 does with values (measured):

* a Python ``dict`` or ``list`` assigned into a Map is stored as one Yjs
  "any" content (a plain JSON value), not as a nested ``Y.Map``/``Y.Array``;
  a stock yjs 13.6 client reads it as a plain object (``el.get('x')`` is an
  ``Object``, not a ``Y.Map``). Only an explicit ``pycrdt.Map(...)`` creates a
  shared type. So field values are assigned as-is.
* numbers come back as floats (JS semantics); an ``int`` that float64 cannot
  represent exactly (e.g. 2**53 + 1) is written as a lib0 BigInt, which yjs
  hands to JS as a ``BigInt`` (``JSON.stringify`` then throws); an int beyond
  64 bits, a non-``str`` dict key, or a string with lone surrogates makes yrs
  panic (``PanicException``, a ``BaseException``). Hence the validation below:
  integers within JS's safe range, finite floats, str keys, encodable strings.
* ``bytes`` are stored as a Uint8Array and come back as ``bytearray``, which
  pycrdt refuses to write back ("Type not supported"); they are not accepted
  in patches, and ``restore_to`` converts them to ``bytes``.
* setting a key to the value it already has still produces an update (a new
  item plus a tombstone); an empty transaction produces none.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pycrdt import Doc, Map

from .errors import InvalidPayload

ELEMENTS_ROOT = "elements"
MAX_FIELD_KEY_CHARS = 256
MAX_VALUE_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1  # JS Number.MAX_SAFE_INTEGER

_ELEMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MISSING = object()


def _elements(doc: Doc[Any]) -> Map[Any]:
    elements: Map[Any] = doc.get(ELEMENTS_ROOT, type=Map)
    return elements


def check_element_id(element_id: object) -> None:
    if not isinstance(element_id, str) or _ELEMENT_ID.fullmatch(element_id) is None:
        raise InvalidPayload("element id must match [A-Za-z0-9_-]{1,64}")


def _check_string(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPayload(f"{what} is not valid Unicode (lone surrogate)") from None


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Accept JSON-like values only: str, bool, safe int, finite float, None, list, dict."""
    if depth > MAX_VALUE_DEPTH:
        raise InvalidPayload(f"value nested deeper than {MAX_VALUE_DEPTH}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_string(value, "string value")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InvalidPayload("integer outside the JS safe range (±2**53-1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload("number must be finite")
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidPayload("object keys must be strings")
            _check_string(key, "object key")
            _check_json_value(item, depth + 1)
    else:
        raise InvalidPayload(f"unsupported value type {type(value).__name__}")


def check_fields(fields: object) -> None:
    if not isinstance(fields, dict):
        raise InvalidPayload("fields must be an object")
    for key, value in fields.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_FIELD_KEY_CHARS:
            raise InvalidPayload(f"field keys must be strings of 1..{MAX_FIELD_KEY_CHARS} characters")
        _check_string(key, "field key")
        if value is not None:
            _check_json_value(value)


def patch_element(doc: Doc[Any], element_id: str, fields: dict[str, Any]) -> None:
    """Set (or, for a ``None`` value, delete) fields of one element, in one transaction.

    The element is created as an empty ``Y.Map`` if absent, so an empty
    ``fields`` on a new id still creates it. Raises ``InvalidPayload`` (before
    touching the doc) for a bad id, bad keys or values, or when
    ``elements[element_id]`` exists but is not a ``Y.Map``. Values are stored
    as plain JSON values (see the module docstring); every non-``None`` value
    is written, even if unchanged.
    """
    check_element_id(element_id)
    check_fields(fields)
    elements = _elements(doc)
    found: object = elements[element_id] if element_id in elements else _MISSING
    if found is not _MISSING and not isinstance(found, Map):
        raise InvalidPayload(f"element {element_id!r} is not a map")
    with doc.transaction():
        if isinstance(found, Map):
            existing: Map[Any] = found
        else:
            elements[element_id] = Map()
            existing = elements[element_id]
        for key, value in fields.items():
            if value is None:
                if key in existing:
                    del existing[key]
            else:
                existing[key] = value


def _to_value(value: Any) -> Any:
    """A plain, writable value: shared types become ``to_py()``, bytearrays ``bytes``."""
    if hasattr(value, "to_py"):
        value = value.to_py()
    return _writable(value)


def _writable(value: Any) -> Any:
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_writable(item) for item in value]
    if isinstance(value, dict):
        return {key: _writable(item) for key, item in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True != 1, and NaN equals NaN (no endless re-sets)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (a != a and b != b)
    if isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _fill(element: Map[Any], fields: Map[Any]) -> None:
    for key in fields.keys():
        element[key] = _to_value(fields[key])


def restore_to(doc: Doc[Any], target: Doc[Any]) -> None:
    """Make ``doc``'s ``elements`` equal to ``target``'s (as ``to_py()`` sees them).

    Issues the minimal edits in one transaction on ``doc`` (none, and no update,
    if they are already equal): elements absent from ``target`` are deleted;
    for elements that are ``Y.Map`` in both, differing fields are set and fields
    absent from ``target`` deleted; elements absent from ``doc`` are created as
    new ``Y.Map`` with ``target``'s fields; an element that is a ``Y.Map`` on one
    side and a plain value on the other is replaced wholesale. Any other shared
    type (a ``Y.Array`` element; a ``Y.Text`` or nested ``Y.Map`` field) is
    compared by its ``to_py()`` value and, where it differs, written as that
    plain JSON value. Roots other than ``elements`` are left alone. ``target``
    is only read.
    """
    elements = _elements(doc)
    wanted = _elements(target)
    wanted_ids = list(wanted.keys())
    with doc.transaction():
        for element_id in list(elements.keys()):
            if element_id not in wanted:
                del elements[element_id]
        for element_id in wanted_ids:
            want = wanted[element_id]
            have = elements[element_id] if element_id in elements else _MISSING
            if isinstance(want, Map):
                if not isinstance(have, Map):
                    elements[element_id] = Map()
                    _fill(elements[element_id], want)
                    continue
                want_keys = list(want.keys())
                for key in list(have.keys()):
                    if key not in want:
                        del have[key]
                for key in want_keys:
                    value = _to_value(want[key])
                    if key not in have or not _same(_to_value(have[key]), value):
                        have[key] = value
            else:
                value = _to_value(want)
                if have is _MISSING or isinstance(have, Map) or not _same(_to_value(have), value):
                    elements[element_id] = value
