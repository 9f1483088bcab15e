"""Giving the VIP up on purpose (a switchover, a drain, `systemctl stop`)
without failing a request.

When the address moves, every TCP connection a client holds to it breaks:
its next packet reaches the new holder, which knows no such connection and
resets it. So before a planned resignation the leader quiesces its front
door, while it still holds the VIP:
1. new connections to the VIPs are held: an nftables rule drops their SYNs
   (not a reset: the client's kernel sends the SYN again after a second, to
   whichever machine holds the address by then);
2. the node's router is told (SIGUSR1, vigil.router.front_close.quiesce) to close
   every client connection after the answer it is working on, idle ones once
   unused 1.5 s since the quiesce (at once would race the request a busy
   client sends on each pooled connection, answered `Connection: close`);
3. the leader waits until no connection to a VIP is established, at most
   QUIESCE_MAX s and only while its role stays valid, then resigns as before.
The hold is lifted HOLD_AFTER s after the resignation (the VIP is gone from
this machine by then), at once whenever this node takes the role, and when
the agent starts (one that crashed mid-handover left it); a lift that fails
is a `front_door_hold_stuck` event. Only a planned resignation
(core.reconcile.Resign.planned: a switchover, an operator's standby or
drain, a degraded leader with a ready peer, a graceful stop) is quiesced: an
unhealthy or failed leader hands over at once.

A crash, a kill or a lost lease does none of this: there is no time to.
Every step is best effort: a missing `nft` or router costs the guarantee,
never the handover, and is said in the `front_door_quiesced` event.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

TABLE = "vigil_handover"
QUIESCE_MAX = 5.0  # s: a connection still open after this is cut by the move
HOLD_AFTER = 3.0  # s after resigning: the VIP is gone, the SYNs may pass again
TCP_ESTABLISHED = "01"
# Declaring the table first makes the delete succeed whether or not it exists.
RESET = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


def hold_rules(addresses: Iterable[str]) -> str:
    """The nftables table that drops new TCP connections to `addresses`."""
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    rules = [f"    {fam} daddr {{ {', '.join(xs)} }} tcp flags & (syn | ack) == syn drop"
             for fam, xs in (("ip", v4), ("ip6", v6)) if xs]
    # reset and made again in one transaction: a second hold replaces the first
    return (RESET + f"table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -200; policy accept;\n"
            + "\n".join(rules) + "\n  }\n}\n")


def established(addresses: Iterable[str], proc: str = "/proc/net") -> int:
    """TCP connections established to any of `addresses` in this network namespace."""
    want = {ipaddress.ip_address(a) for a in addresses}
    n = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = open(f"{proc}/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 3 and f[3] == TCP_ESTABLISHED and _local(f[1]) in want:
                n += 1
    return n


def _local(field: str) -> Any:
    """The address of a /proc/net/tcp `local_address` (hex, host byte order per 32-bit word)."""
    hexaddr = field.split(":")[0]
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    return addr.ipv4_mapped or addr if isinstance(addr, ipaddress.IPv6Address) else addr


def _nft(script: str) -> str | None:
    """Run an nft script; None, or why it failed."""
    try:
        r = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else r.stderr.strip()[:300]


class FrontDoorRelease:
    def __init__(self, addresses: list[str], router_pid: Callable[[], int | None],
                 still_leading: Callable[[], bool], record: Callable[..., Any]):
        self.addresses, self.router_pid, self.still_leading, self.record = addresses, router_pid, still_leading, record
        self._lift: asyncio.TimerHandle | None = None
        self._lifting: set[asyncio.Task] = set()  # held here: a task nobody references may vanish

    async def quiesce(self) -> None:
        """Steps 1-3 of the module docstring, before a planned resignation."""
        if not self.addresses:
            return
        t0 = time.monotonic()
        problem = await asyncio.to_thread(_nft, hold_rules(self.addresses))
        pid = self.router_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pid = None
        # /proc/net/tcp of a busy node is long: read off the event loop (heartbeats go out on it)
        left = await asyncio.to_thread(established, self.addresses)
        while left and self.still_leading() and time.monotonic() - t0 < QUIESCE_MAX:
            await asyncio.sleep(0.05)
            left = await asyncio.to_thread(established, self.addresses)
        waited = time.monotonic() - t0
        self.record("front_door_quiesced",
                    f"before handing the VIP over: new connections held ({problem or 'nftables'}), "
                    f"{'the router closing its clients' if pid else 'no router to quiesce'}; "
                    f"{left} connection(s) still open after {waited:.2f} s",
                    open=left, waited=round(waited, 3), hold_problem=problem)

    def after_resign(self) -> None:
        """Lift the hold once the VIP has left this machine."""
        if self.addresses:
            self._lift = asyncio.get_running_loop().call_later(HOLD_AFTER, self.lift_soon)

    def lift_soon(self) -> None:
        """`lift` in the background (on taking the role, at start, after a resignation)."""
        if self.addresses:
            task = asyncio.get_running_loop().create_task(self.lift())
            self._lifting.add(task)
            task.add_done_callback(self._lifting.discard)

    async def lift(self) -> None:
        if self._lift:
            self._lift.cancel()
            self._lift = None
        if self.addresses and shutil.which("nft"):  # without nft no hold was ever made
            problem = await asyncio.to_thread(_nft, RESET)
            if problem:  # left in place it would drop every new connection once this node leads again
                self.record("front_door_hold_stuck", f"the nftables hold on new connections to "
                            f"{', '.join(self.addresses)} could not be lifted: {problem}; remove it with "
                            f"`nft delete table inet {TABLE}`", problem=problem)
