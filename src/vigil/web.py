"""aiohttp routes for Vigil's small HTTP servers (agent API, actuator
gateway, model server) that survive hostile requests.

aiohttp's default Expect handler echoes the header into its 417 answer and
fails with a 500 when the value is not UTF-8 (found by tests/fuzz); ours
answers 417 without echoing anything. It also runs for paths no route
matches, so `finish(app)` adds a last route that answers every other path
404 through ours.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11


async def expect_continue(request: web.Request) -> None:
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return
    raise web.HTTPExpectationFailed(text="only 'Expect: 100-continue' is understood")


def route(method: str, path: str, handler: Any) -> web.RouteDef:
    """`method` `path` served by `handler` (a GET answers HEAD too, as aiohttp's)."""
    if method == "GET":
        return web.get(path, handler, expect_handler=expect_continue)
    return web.route(method, path, handler, expect_handler=expect_continue)


def finish(app: web.Application) -> None:
    """Call after the last route: unknown paths get 404 (and safe Expect handling)."""
    async def unknown(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such endpoint"}, status=404)
    app.router.add_route("*", "/{tail:.*}", unknown, expect_handler=expect_continue)
