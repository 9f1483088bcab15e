"""aiohttp routes for Vigil's small HTTP servers (agent API, actuator
gateway, model server) that survive hostile requests.

aiohttp's default Expect handler echoes the header into its 417 answer and
fails with a 500 when the value is not UTF-8 (found by tests/fuzz); ours
answers 417 without echoing anything. It also runs for paths no route
matches, so `finish(app)` adds a last route that answers every other path
404 through ours.
"""

from __future__ import annotations

import hmac
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from vigil.errors import ConfigError


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


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 at least). Raises ConfigError naming the files."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("api.cert_file", cert_file, f"cannot load the certificate and key ({e})") from None
    return ctx


def bearer_holder(authorization: str | None, tokens: dict[str, str]) -> str | None:
    """The name whose token `Authorization: Bearer <token>` carries, or None
    (compared in constant time; any header value, even undecodable, is a no)."""
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return next((n for n, t in tokens.items() if hmac.compare_digest(given, f"Bearer {t}".encode())), None)


def bearer_tokens(tokens: dict[str, str], open_paths: frozenset[str]) -> Any:
    """A middleware: every path but `open_paths` needs `Authorization: Bearer
    <token>` with one of `tokens` (name -> token; compared in constant time);
    the caller's name is request["operator"]. 401 otherwise, naming no token."""
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in open_paths:
            name = bearer_holder(request.headers.get("Authorization"), tokens)
            if name is None:
                return web.json_response({"error": "this endpoint needs Authorization: Bearer <token> "
                                                   "(api.tokens_file); health endpoints need none"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
            request["operator"] = name
        return await handler(request)
    return check


def load_tokens(path: str, field: str) -> dict[str, str]:
    """name -> token from a root-only YAML file. Raises ConfigError."""
    import yaml

    from vigil.files import read_secret

    try:
        doc = yaml.safe_load(read_secret(path, field))
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict) or not doc or not all(
            isinstance(n, str) and isinstance(t, str) and len(t) >= 16 for n, t in doc.items()):
        raise ConfigError(field, path, "must map names to tokens of 16+ characters "
                                       "(`operator: <python3 -c 'import secrets; print(secrets.token_hex(16))'>`)")
    return doc
