"""JSON Schemas of the HTTP API's JSON request bodies, checked with ``jsonschema``.

A body that is not JSON is 400; JSON of the wrong shape is 422 with one entry
per problem: ``{"error": {"type": "invalid", "message", "errors": [{"path", "message"}]}}``.
The same schemas are listed in docs/protocol.md.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

MAX_PROMPT_CHARS = 4000
MAX_PARAMS_BYTES = 16 * 1024
MAX_PATCH_FIELDS = 256

ELEMENT_PATCH = {
    "type": "object",
    "description": "fields to set on one element; null deletes a field",
    "maxProperties": MAX_PATCH_FIELDS,
    "propertyNames": {"minLength": 1, "maxLength": 64},
}

COORDINATE = {"type": "number", "minimum": -1e9, "maximum": 1e9}

GENERATION_REQUEST = {
    "type": "object",
    "required": ["generator"],
    "properties": {
        "generator": {"type": "string", "minLength": 1, "maxLength": 64},
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "params": {
            "type": ["object", "null"],
            "properties": {"x": COORDINATE, "y": COORDINATE, "width": COORDINATE, "height": COORDINATE},
        },
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200},
        # accepted on the events channel, where requests carry these two as well
        "type": {"type": "string"},
        "request_id": {},
    },
    "additionalProperties": False,
}

DISCONNECT_REQUEST = {
    "type": "object",
    "description": "whom to disconnect: one user (every socket of theirs), or everyone if absent",
    "properties": {"user_id": {"type": "string", "minLength": 1, "maxLength": 200}},
    "additionalProperties": False,
}

_validators: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    """Compiled once per schema object (schemas are module-level or generator constants)."""
    found = _validators.get(id(schema))
    if found is None or found[0] is not schema:
        Draft202012Validator.check_schema(schema)
        found = _validators[id(schema)] = (schema, Draft202012Validator(schema))
    return found[1]


class SchemaViolation(ValueError):
    """``errors``: [{"path": "params.x", "message": "..."}], in a stable order."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        first = errors[0]
        super().__init__(f"{first['path'] or 'body'}: {first['message']}" if first["path"] else first["message"])
        self.errors = errors


def check(schema: dict[str, Any], value: Any, at: str = "") -> None:
    """Raise ``SchemaViolation`` listing every way ``value`` breaks ``schema``; ``at``: the path of
    ``value`` inside the request body (e.g. ``params``), prefixed to each problem's path."""
    problems = sorted(_validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if problems:
        raise SchemaViolation(
            [
                {"path": ".".join([at] * bool(at) + [str(p) for p in e.absolute_path]), "message": e.message[:300]}
                for e in problems[:20]
            ]
        )


def contains_nul(value: Any) -> bool:
    """A NUL character in any string or key of a JSON value (PostgreSQL text cannot store one).
    Iterative: JSON may nest deeper than Python's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return True
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return False
