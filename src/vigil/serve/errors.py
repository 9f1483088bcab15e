"""The model server's errors: OpenAI-style bodies {"error": {message, type,
param, code}}, and the exception a request validator raises."""

from __future__ import annotations

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
