"""One virtual IP on this node's interface, through netlink (pyroute2).

Thin: `core.vip` decides the lifetime; this performs it. Every call is
synchronous and short (netlink), except `check` (and `start`), which probe
for a duplicate address for `probe_wait` seconds (run them in a thread).

Errors: `VipError(cause)` names what is wrong in the operator's words: no
such interface, the address answered by another host (its MAC), no
permission. The caller reports it as a `resource_start_failed` event.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vigil.errors import VigilError
from vigil.resources import arp


class VipError(VigilError):
    """The VIP cannot be held here; the message is the cause."""


@dataclass(frozen=True)
class VipConfig:
    address: str  # the IPv4 address, without the prefix
    prefixlen: int
    interface: str
    announce_count: int = 3  # gratuitous ARPs on taking the address (keepalived sends 5)
    announce_interval: float = 0.2  # between them (IPaddr2's arp_interval)
    refresh_announce: float = 10.0  # one more every this many seconds while held (0: never)
    probe_wait: float = 0.2  # the duplicate-address probe waits this long for an answer

    @property
    def label(self) -> str:
        return f"{self.address}/{self.prefixlen} on {self.interface}"


class Vip:
    def __init__(self, cfg: VipConfig):
        self.cfg = cfg

    def _index(self, ipr) -> int:
        found = ipr.link_lookup(ifname=self.cfg.interface)
        if not found:
            raise VipError(f"no interface {self.cfg.interface} on this node (check `vips[].interface`)")
        return found[0]

    def check(self) -> None:
        """The interface exists and no other host answers for the address (an
        RFC 5227 probe, `probe_wait` seconds; skipped while we hold it).
        Raises VipError."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            self._index(ipr)
            if self._held(ipr):
                return  # ours already (a restart within its lifetime)
        try:
            other = arp.probe(self.cfg.interface, self.cfg.address, self.cfg.probe_wait)
        except OSError as e:
            raise VipError(f"cannot probe for {self.cfg.address} on {self.cfg.interface}: "
                           f"{e.strerror} (the agent needs CAP_NET_RAW)") from None
        if other:
            raise VipError(f"{self.cfg.address} is in use by another host (MAC {other}): two holders "
                           "would split the clients; find it with `ip neigh` and remove it")

    def start(self, lifetime: int) -> None:
        """`check`, then add the address for `lifetime` seconds. Raises VipError."""
        self.check()
        self.refresh(lifetime)

    def refresh(self, lifetime: int) -> None:
        """Add or re-add the address, to expire `lifetime` seconds from now. Raises VipError."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                ipr.addr("replace", index=self._index(ipr), address=self.cfg.address,
                         prefixlen=self.cfg.prefixlen, valid_lft=lifetime, preferred_lft=lifetime)
        except NetlinkError as e:
            raise VipError(f"cannot add {self.cfg.label}: {e} (the agent needs CAP_NET_ADMIN)") from None

    def held(self) -> bool:
        """The address is on the interface now."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=self.cfg.interface)) and self._held(ipr)

    def _held(self, ipr) -> bool:
        return any(a.get_attr("IFA_ADDRESS") == self.cfg.address
                   for a in ipr.get_addr(index=self._index(ipr)))

    def remove(self) -> None:
        """Take the address off (nothing if it is not there). Never raises."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.cfg.interface)
                if found and self._held(ipr):
                    ipr.addr("del", index=found[0], address=self.cfg.address, prefixlen=self.cfg.prefixlen)
        except (NetlinkError, OSError):
            pass

    def announce(self) -> None:
        """One gratuitous ARP (OSError on a missing interface or permission)."""
        arp.announce(self.cfg.interface, self.cfg.address)


def parse_vip(v: object, where: str) -> VipConfig:
    """One `vips[]` entry: {address: A.B.C.D/N, interface: NAME}. Raises ConfigError."""
    from vigil.errors import ConfigError
    from vigil.fields import check_mapping

    d = check_mapping(v, where, {"address", "interface", "announce_count", "refresh_announce"})
    try:
        iface = ipaddress.IPv4Interface(str(d.get("address")))
    except ValueError:
        raise ConfigError(f"{where}.address", d.get("address"), "must be an IPv4 address with its "
                                                                "prefix, e.g. 10.0.0.100/24") from None
    name = d.get("interface")
    if not isinstance(name, str) or not name or "/" in name or len(name) > 15:
        raise ConfigError(f"{where}.interface", name, "must be the interface name, e.g. eth0")
    count = d.get("announce_count", 3)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 20:
        raise ConfigError(f"{where}.announce_count", count, "must be 1..20 gratuitous ARPs")
    refresh = d.get("refresh_announce", 10.0)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 0 <= refresh <= 3600:
        raise ConfigError(f"{where}.refresh_announce", refresh, "must be 0 (never) to 3600 seconds")
    return VipConfig(str(iface.ip), iface.network.prefixlen, name, count, 0.2, float(refresh))


def parse_vips(v: object) -> tuple[VipConfig, ...]:
    """The `vips:` list of a node's configuration. Raises ConfigError."""
    from vigil.errors import ConfigError

    if not isinstance(v, list):
        raise ConfigError("vips", v, "must be a list of {address: A.B.C.D/N, interface: NAME}")
    out = tuple(parse_vip(x, f"vips[{i}]") for i, x in enumerate(v))
    if len({x.address for x in out}) != len(out):
        raise ConfigError("vips", [x.address for x in out], "each VIP may be listed once")
    return out
