"""Which backend URLs the router may send requests to.

A member record in etcd names its node's inference URL; a record written by
a compromised or confused node must not turn the router into a proxy for
cloud metadata (http://169.254.169.254) or anything else off the cluster.
`BackendAllowlist.problem(url)` says what is wrong with a URL, or None:

- only http://HOST:PORT (the data plane speaks plain HTTP/1.1 to nodes);
- with `allow` entries (networks such as 10.0.0.0/8, addresses, host
  names): the host must be an address inside one of the networks or one of
  the names exactly;
- without: any address but link-local (169.254.0.0/16, fe80::/10, where
  cloud metadata lives), unspecified, multicast or broadcast; names allowed.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
            return None
        if self.restricted:
            if not any(addr in n for n in self.networks):
                return f"{addr} is not in backends.allow"
            return None
        if addr.is_link_local or addr.is_unspecified or addr.is_multicast or \
                addr == ipaddress.IPv4Address("255.255.255.255"):
            return f"{addr} is link-local, unspecified or multicast (cloud metadata lives there)"
        return None
