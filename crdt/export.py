"""A document's ``elements`` root as plain JSON, numbers as JavaScript writes them (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map

MAX_SAFE_INTEGER = 2**53  # JavaScript's Number.MAX_SAFE_INTEGER + 1: every integer up to it is exact


class NotExportable(ValueError):
    """The document cannot be exported as JSON (e.g. a client made ``elements`` something other than a map)."""


def document_json(doc: Doc[Any]) -> dict[str, Any]:
    """The ``elements`` root map as plain JSON (nested Y.Maps become objects), numbers as JSON has them."""
    try:
        elements = doc.get("elements", type=Map)
        return {"elements": js_numbers(elements.to_py() or {})}
    except Exception as exc:
        raise NotExportable(str(exc)) from None


def js_numbers(value: Any) -> Any:
    """Yjs numbers are JS numbers, and pycrdt reads them all as floats: a whole number within JS's safe
    range goes out as a JSON integer (``10``, not ``10.0``), like ``JSON.stringify`` writes it.
    In place and iterative (client data may nest deeper than Python's recursion limit)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER else value
    stack = [value]
    while stack:
        container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in list(items):
            if isinstance(item, float):
                if item.is_integer() and abs(item) <= MAX_SAFE_INTEGER:
                    container[key] = int(item)
            elif isinstance(item, (dict, list)):
                stack.append(item)
    return value
