"""Fencing: tokens that resources check, and devices that power a node off.

`TokenGuard` is the small library a resource uses to reject commands from a
deposed leader: every command carries the leader's fencing token (the leader
key's create revision), and the guard refuses any token lower than the
highest it has seen.
"""

from vigil.fencing.guard import StaleToken, TokenGuard

TOKEN_HEADER = "X-Vigil-Fencing-Token"

__all__ = ["StaleToken", "TokenGuard", "TOKEN_HEADER"]
