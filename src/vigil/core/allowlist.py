"""Which backend URLs the router may send requests to.

A member record in etcd names its node's inference URL. A record written by
a compromised or confused node, or by anyone holding an etcd credential,
must not turn the router into a proxy for cloud metadata
(http://169.254.169.254) or for a host off the cluster, which would then
receive clients' prompts and Authorization headers.

- Only http://HOST:PORT (the data plane speaks plain HTTP/1.1 to nodes).
- With `allow` entries (networks such as 10.0.0.0/8, addresses, host names):
  the host must be an address inside one of the networks, or one of the
  names exactly.
- Without (the default): the host must be an address (a name could resolve
  anywhere: list it in `allow`) inside the cluster's networks, i.e. the /24
  (IPv4) or /64 (IPv6) around an address that an authentic heartbeat of a
  known member came from (`ClusterNetworks`; loopback for a lab on one
  machine). Link-local (where cloud metadata lives), unspecified, multicast
  and broadcast addresses are refused even there.

`problem(url)` is what is wrong with a URL on its own; `outside(url, cluster)`
whether, under the default, it lies off the networks heard so far (that
answer changes as heartbeats arrive and members go).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
CLUSTER_PREFIX = {4: 24, 6: 64}  # the network around a heard address that counts as the cluster's


class ClusterNetworks:
    """The networks the cluster's heartbeats come from: for each member, the
    networks around the source addresses of its authentic heartbeats. A
    member forgotten takes its networks with it (unless another member was
    heard there too)."""

    def __init__(self) -> None:
        self._by_member: dict[str, set[Network]] = {}

    def __repr__(self) -> str:
        return f"<ClusterNetworks {', '.join(map(str, self.networks())) or 'none heard'}>"

    def networks(self) -> list[Network]:
        return sorted({n for nets in self._by_member.values() for n in nets}, key=str)

    def __contains__(self, addr: Address) -> bool:
        return any(addr in n for nets in self._by_member.values() for n in nets)

    def heard(self, member: str, source: str) -> bool:
        """`member`'s authentic heartbeat came from `source`; True when that
        adds a network the cluster did not have."""
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return False
        net = ipaddress.ip_network(f"{addr}/{CLUSTER_PREFIX[addr.version]}", strict=False)
        mine = self._by_member.setdefault(member, set())
        if net in mine:
            return False
        new = not any(net in nets for nets in self._by_member.values())
        mine.add(net)
        return new

    def forget(self, member: str) -> bool:
        """Drop `member`'s networks; True when the cluster lost one."""
        gone = self._by_member.pop(member, set())
        return any(not any(n in nets for nets in self._by_member.values()) for n in gone)


class BackendAllowlist:
    def __init__(self, allow: list[str] | None = None):
        """Raises ValueError naming an entry that is neither a network nor a name."""
        self.networks: list[Network] = []
        self.names: set[str] = set()
        self.restricted = allow is not None
        for entry in allow or []:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not entry or any(c in entry for c in "/ :@"):
                    raise ValueError(f"{entry!r} is neither a network (10.0.0.0/8), an address "
                                     "nor a host name") from None
                self.names.add(entry.lower())

    def problem(self, url: str) -> str | None:
        """What is wrong with `url` whatever the router hears; None if nothing."""
        try:
            u = urlsplit(url)
            host, port = u.hostname, u.port
        except ValueError:
            return f"{url!r} is not a URL"
        if u.scheme != "http" or not host or port is None or u.username or u.password:
            return f"{url!r} is not http://HOST:PORT"
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            if self.restricted and host.lower() not in self.names:
                return f"host {host!r} is not in backends.allow"
            if not self.restricted:
                return (f"host name {host!r}: by default the router sends only to addresses in the "
                        "cluster's networks; list the name in backends.allow to send there")
            return None
        if self.restricted:
            if not any(addr in n for n in self.networks):
                return f"{addr} is not in backends.allow"
            return None
        if addr.is_link_local or addr.is_unspecified or addr.is_multicast or \
                addr == ipaddress.IPv4Address("255.255.255.255"):
            return f"{addr} is link-local, unspecified or multicast (cloud metadata lives there)"
        return None

    def outside(self, url: str, cluster: ClusterNetworks) -> str | None:
        """Under the default (no `allow`), why `url` (one `problem` passed) is
        off the cluster's networks as heard now; None when it is inside, or
        when `allow` decides alone."""
        if self.restricted:
            return None
        try:
            addr = ipaddress.ip_address(urlsplit(url).hostname or "")
        except ValueError:
            return f"{url!r} does not name an address"
        if addr in cluster:
            return None
        heard = ", ".join(map(str, cluster.networks())) or "no heartbeat heard yet"
        return (f"{addr} is outside the cluster's networks ({heard}): by default the router sends "
                "only where its members' heartbeats come from; list other networks in backends.allow")
