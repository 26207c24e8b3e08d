"""The error table (server/errors.py): every server error has one answer, over HTTP and on a socket."""

from __future__ import annotations

import inspect

from canvashub.crdt.errors import FrameTooBig, InvalidPayload, MalformedFrame, PolicyViolation
from canvashub.server import errors
from canvashub.server.errors import CloseCode, ServerError, answer_for


def server_errors() -> list[type[ServerError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ServerError) and cls is not ServerError
    ]


def test_every_server_error_has_a_row():
    """Each error class the server defines resolves to an HTTP status, a JSON type and a close code."""
    for cls in server_errors():
        answer = answer_for(cls.__new__(cls))
        assert answer is not None, cls
        assert 400 <= answer.status < 600 and answer.error_type and answer.close_code in set(CloseCode), cls


def test_protocol_errors_close_with_their_own_code_and_are_400_over_http():
    """A protocol error keeps the close code it carries; over HTTP it is a 400 ``invalid``."""
    for exc, code in [
        (MalformedFrame("x"), 1002),
        (InvalidPayload("x"), 1007),
        (PolicyViolation("x"), 1008),
        (FrameTooBig("x"), 1009),
    ]:
        answer = answer_for(exc)
        assert answer is not None and (answer.status, answer.error_type, answer.close_code) == (400, "invalid", code)


def test_answers_mirror_http_where_a_socket_meets_them():
    """Errors a socket meets close with the code that mirrors their HTTP answer."""
    assert answer_for(errors.Unauthorized("x")).close_code == 4401
    assert answer_for(errors.CanvasDeleted("x")).close_code == 4404
    assert answer_for(errors.CanvasTooLarge("x")).close_code == 4413
    assert answer_for(errors.Overloaded("x")).close_code == 1013
    assert answer_for(errors.Overloaded("x")).retry_after and answer_for(errors.StoreUnavailable("x")).status == 503


def test_unknown_exceptions_have_no_row():
    """A bug is not an answer: exceptions outside the table are left to the framework (500, logged)."""
    assert answer_for(RuntimeError("bug")) is None and answer_for(KeyError("k")) is None
