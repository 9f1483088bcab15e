"""Gratuitous ARP and the duplicate-address probe, on a raw AF_PACKET socket
(no arping needed; CAP_NET_RAW, as the agent has as root).

- `announce(ifname, address)`: an ARP request from `address` for itself,
  broadcast, so every neighbour re-maps the address to this interface's MAC
  (Linux takes a gratuitous ARP whatever its lock time: net/ipv4/arp.c).
- `probe(ifname, address, wait)`: RFC 5227's probe (sender address 0.0.0.0):
  the MAC of a host that answers for `address` within `wait` seconds, or None;
  `who_has` collects every MAC that answers (tests count holders with it).

Errors: OSError from the socket (no such interface, no permission) is left
to the caller, which turns it into a `resource_start_failed` event.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def mac_of(ifname: str) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def _frame(src_mac: bytes, op: int, sender_ip: str, target_ip: str) -> bytes:
    eth = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, src_mac,
                      ipaddress.IPv4Address(sender_ip).packed, b"\x00" * 6,
                      ipaddress.IPv4Address(target_ip).packed)
    return eth + arp


def _socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((ifname, 0))
    return s


# Closing an AF_PACKET socket waits for an RCU grace period (synchronize_net in
# packet_release): 17-26 ms measured here, on a takeover's critical path. So the
# announcing socket (protocol 0: it receives nothing) is opened once per interface
# and kept; a send that fails reopens it once (the interface was recreated).
_senders: dict[str, socket.socket] = {}


def sender(ifname: str) -> socket.socket:
    """The kept send-only socket for `ifname` (opened now if need be)."""
    s = _senders.get(ifname)
    if s is None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.bind((ifname, 0))
        except OSError:
            s.close()
            raise
        _senders[ifname] = s
    return s


def announce(ifname: str, address: str) -> None:
    """One gratuitous ARP for `address` out of `ifname` (not thread-safe: one
    caller thread, as the agent's VIP worker)."""
    frame = _frame(mac_of(ifname), 1, address, address)
    try:
        sender(ifname).send(frame)
    except OSError:
        stale = _senders.pop(ifname, None)
        if stale is not None:
            stale.close()
        sender(ifname).send(frame)


def probe(ifname: str, address: str, wait: float = 0.2) -> str | None:
    """The MAC (aa:bb:..) of another host answering for `address`, or None."""
    return next(iter(sorted(who_has(ifname, address, wait, first=True))), None)


def who_has(ifname: str, address: str, wait: float = 0.2, first: bool = False) -> set[str]:
    """The MACs of every other host answering an RFC 5227 probe for `address`
    within `wait` seconds (all of them: two means two holders)."""
    own = mac_of(ifname)
    target = ipaddress.IPv4Address(address).packed
    found: set[str] = set()
    with _socket(ifname) as s:
        s.send(_frame(own, 1, "0.0.0.0", address))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0 and not (first and found):
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                break
            pkt = s.recv(128)
            if len(pkt) < 42:
                continue
            op, sha, spa = struct.unpack("!6xH6s4s", pkt[14:32])
            if op == 2 and spa == target and sha != own:
                found.add(sha.hex(":"))
    return found
