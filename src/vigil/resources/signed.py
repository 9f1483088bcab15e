"""Signed commands: a node's request to a resource gateway carries who sent
it, which of its keys signed, when, and an Ed25519 signature over all of
that plus the method, path and body (vigil.identity), so a gateway knows
which node speaks and that nobody changed or replayed the command.

Headers: X-Vigil-Node, X-Vigil-Key-Id, X-Vigil-Signed-At (Unix seconds),
X-Vigil-Signature (hex). `RequestVerifier.verify` raises `Unauthorised`
naming what is wrong; it refuses a request signed more than `max_skew`
seconds from the verifier's clock, and the same signature twice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from vigil.errors import VigilError, WireError
from vigil.identity import KeyRing, SigningKeys

NODE, KEY_ID, SIGNED_AT, SIGNATURE = ("X-Vigil-Node", "X-Vigil-Key-Id", "X-Vigil-Signed-At",
                                      "X-Vigil-Signature")
_CONTEXT = b"vigil-command-v1"


class Unauthorised(VigilError):
    """The request's signature is missing, wrong, stale or replayed."""


def _message(method: str, path: str, node: str, key_id: int, signed_at: str, body: bytes) -> bytes:
    return b"\n".join([_CONTEXT, method.upper().encode(), path.encode(), node.encode(),
                       str(key_id).encode(), signed_at.encode(), body])


def sign_request(signer: SigningKeys, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    at = f"{now:.6f}"
    sig = signer.sign(_message(method, path, signer.node, signer.send, at, body))
    return {NODE: signer.node, KEY_ID: str(signer.send), SIGNED_AT: at, SIGNATURE: sig.hex()}


class RequestVerifier:
    def __init__(self, ring: KeyRing, max_skew: float = 5.0, remember: int = 4096):
        self.ring, self.max_skew, self.remember = ring, max_skew, remember
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
            self.ring.verify(node, key_id, _message(method, path, node, key_id, at, body), sig)
        except WireError as e:
            raise Unauthorised(str(e)) from None
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
