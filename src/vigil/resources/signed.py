"""Signed commands: a node's request to a resource gateway carries who sent
it, which of its keys signed, when, and an Ed25519 signature over all of
that plus the gateway it is for, the method, path and body
(vigil.identity), so a gateway knows which node speaks and that nobody
changed or replayed the command, nor sent it on to another gateway that
trusts the same key ring.

The gateway a command is for is named by `gateway_name(url)`: the
`host:port` of the URL the node sends it to (controller.gateway), in lower
case, the port spelled out. A gateway verifies against its own configured
name, never against the request's Host header (which the sender chooses).

Headers: X-Vigil-Node, X-Vigil-Key-Id, X-Vigil-Signed-At (Unix seconds),
X-Vigil-Signature (hex). `RequestVerifier.verify` raises `Unauthorised`
naming what is wrong; it refuses a request signed more than `max_skew`
seconds from the verifier's clock, and the same signature twice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping
from urllib.parse import urlsplit

from vigil.errors import VigilError, WireError
from vigil.identity import KeyRing, SigningKeys

NODE, KEY_ID, SIGNED_AT, SIGNATURE = ("X-Vigil-Node", "X-Vigil-Key-Id", "X-Vigil-Signed-At",
                                      "X-Vigil-Signature")
_CONTEXT = b"vigil-command-v2"  # v2: the gateway's name is signed


class Unauthorised(VigilError):
    """The request's signature is missing, wrong, stale or replayed."""


def gateway_name(url: str) -> str:
    """`host:port` of a gateway URL (the port spelled out, lower case). Raises VigilError."""
    try:
        u = urlsplit(url)
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    except ValueError as e:
        raise VigilError(f"gateway URL {url!r} is malformed: {e}") from None
    if not u.hostname or port is None:
        raise VigilError(f"gateway URL {url!r} has no host, or a scheme other than http/https and no port")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{host.lower()}:{port}"


def _message(gateway: str, method: str, path: str, node: str, key_id: int, signed_at: str,
             body: bytes) -> bytes:
    return b"\n".join([_CONTEXT, gateway.encode(), method.upper().encode(), path.encode(), node.encode(),
                       str(key_id).encode(), signed_at.encode(), body])


def sign_request(signer: SigningKeys, gateway: str, method: str, path: str, body: bytes,
                 now: float) -> dict[str, str]:
    """Headers signing a command for the gateway named `gateway` (see gateway_name)."""
    at = f"{now:.6f}"
    sig = signer.sign(_message(gateway, method, path, signer.node, signer.send, at, body))
    return {NODE: signer.node, KEY_ID: str(signer.send), SIGNED_AT: at, SIGNATURE: sig.hex()}


class RequestVerifier:
    def __init__(self, ring: KeyRing, gateway: str, max_skew: float = 5.0, remember: int = 4096):
        """`gateway`: this gateway's name, as the nodes' controller.gateway URL gives it."""
        self.ring, self.gateway, self.max_skew, self.remember = ring, gateway, max_skew, remember
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> signed at

    def verify(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
               now: float) -> str:
        """The node that signed this request. Raises Unauthorised."""
        try:
            node, key_id, at = headers[NODE], int(headers[KEY_ID]), headers[SIGNED_AT]
            sig, signed_at = bytes.fromhex(headers[SIGNATURE]), float(at)
        except (KeyError, ValueError):
            raise Unauthorised(f"unsigned or malformed request: send {NODE}, {KEY_ID}, {SIGNED_AT} "
                               f"and {SIGNATURE} (the agent's controller does)") from None
        if not abs(signed_at - now) <= self.max_skew:
            raise Unauthorised(f"signed {signed_at - now:+.1f} s from this gateway's clock (window "
                               f"{self.max_skew:g} s): a replay, or unsynchronised clocks")
        try:
            self.ring.verify(node, key_id, _message(self.gateway, method, path, node, key_id, at, body), sig)
        except WireError as e:
            hint = (f" (or it was signed for another gateway than {self.gateway}: the node's "
                    "controller.gateway URL must name this one)") if e.reason == "forged" else ""
            raise Unauthorised(f"{e}{hint}") from None
        self._forget(now)
        if sig in self._seen:
            raise Unauthorised("this exact signed request was already received: a replay")
        self._seen[sig] = signed_at
        return node

    def _forget(self, now: float) -> None:
        # Signatures older than the window can never verify again; keep the rest, bounded.
        while self._seen and (len(self._seen) >= self.remember
                              or next(iter(self._seen.values())) < now - self.max_skew):
            self._seen.popitem(last=False)
