"""The model server's errors: OpenAI-style bodies {"error": {message, type,
param, code}}, and the exception a request validator raises."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param,
                                        "code": code}}, status=status)


class BadRequest(Exception):
    """A request the server refuses with 400; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


async def json_body(request: web.Request) -> Any:
    """The request's body parsed as JSON, or BadRequest naming why not: not UTF-8,
    not JSON, or nested deeper than the parser recurses (a client's body is
    anything: a RecursionError must be a 400, not the 500 of a crashed handler)."""
    try:
        return await request.json()
    except (ValueError, RecursionError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise BadRequest("the request body is not valid JSON (or is nested too deeply)") from None


def check_unicode(texts: list[str], param: str) -> None:
    """BadRequest unless every text encodes as UTF-8: JSON may escape a lone surrogate
    ("\\ud800"), which a tokenizer's encode() then raises on (a 500, and the router
    would take this node out of rotation a while for a client's bad body)."""
    for t in texts:
        try:
            t.encode()
        except UnicodeError:
            raise BadRequest(f"'{param}' holds text that is not valid Unicode (a lone surrogate)", param) from None
