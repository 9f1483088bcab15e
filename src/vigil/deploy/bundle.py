"""Every file one machine needs, rendered from the inventory and the cluster's
secrets (vigil.deploy.secrets): a Bundle maps an absolute path on the machine
to its bytes, mode and owner. `vigil init` writes each node's bundle under
OUT/NAME/, laid out as they go on the machine, plus MANIFEST (one `mode owner path` line per
file), and `vigil install-bundle` puts it in place (vigil.deploy.install).

What a node gets (paths on the machine):
- /etc/vigil/node.yaml, router.yaml (its agent and the router the agent runs),
  operator.yaml (the `--target` of operator commands on this machine);
- /etc/vigil/tls/: the CA, its own etcd client certificate, key and password,
  its router's, its agent API's server certificate, the operator's;
- /etc/vigil/keys/: its signing key, the cluster key ring, the routers'
  stream continuation key;
- an etcd voter: /etc/default/etcd (Debian's etcd-server reads it) and
  /etc/etcd/vigil/ (its server and peer certificate, owned by etcd);
- /etc/sudoers.d/vigil-operators: the `vigil-operators` group may run exactly
  the systemctl, journalctl, ipmitool and vigil commands an operator needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigil.deploy.inventory import Inventory, NodeSpec, host
from vigil.deploy.secrets import Secrets
from vigil.realtime import DEFAULT_PRIORITY

ETC = Path("/etc/vigil")
TLS, KEYS = ETC / "tls", ETC / "keys"
ETCD_TLS = Path("/etc/etcd/vigil")
UNITS = ("vigil-agent", "vigil-actuator-gateway", "vigil-haproxy-driver", "etcd")


@dataclass
class Bundle:
    node: str
    files: dict[str, tuple[bytes, int, str]] = field(default_factory=dict)  # path -> (data, mode, owner)

    def add(self, path: Path | str, data: bytes | str, mode: int = 0o600, owner: str = "root") -> None:
        self.files[str(path)] = (data.encode() if isinstance(data, str) else data, mode, owner)

    def copy(self, src: Path, dest: Path | str, mode: int = 0o600, owner: str = "root") -> None:
        self.add(dest, src.read_bytes(), mode, owner)


def _yaml(doc: Any, what: str) -> str:
    return f"# {what}: written by `vigil init`; change the inventory and run it again\n" + \
        yaml.safe_dump(doc, sort_keys=False)


def render(inv: Inventory, sec: Secrets, node: NodeSpec) -> Bundle:
    """The whole bundle of `node` (see the module docstring)."""
    b = Bundle(node.name)
    b.copy(sec.tls / "ca.pem", TLS / "ca.pem", 0o644)
    for name in (node.name, f"router-{node.name}", "operator"):
        b.copy(sec.tls / f"{name}.pem", TLS / f"{name}.pem", 0o644)
        b.copy(sec.tls / f"{name}.key", TLS / f"{name}.key")
        b.copy(sec.passwords / f"{name}.password", TLS / f"{name}.password")
    b.copy(sec.tls / f"{node.name}-api.pem", TLS / "api.pem", 0o644)
    b.copy(sec.tls / f"{node.name}-api.key", TLS / "api.key")
    token = (sec.tokens / "operator.api-token").read_text().strip()
    b.add(TLS / "api-tokens.yaml", f"operator: {token}\n")
    b.add(TLS / "operator.api-token", token + "\n")
    b.copy(sec.keys / f"{node.name}.key", KEYS / f"{node.name}.key")
    b.copy(sec.keys / "cluster.keyring", KEYS / "cluster.keyring", 0o644)
    b.copy(sec.keys / "continue.key", KEYS / "continue.key")
    b.add(ETC / "node.yaml", _yaml(node_config(inv, node), f"agent of {node.name}"))
    b.add(ETC / "router.yaml", _yaml(router_config(inv, node), f"router of {node.name}"))
    b.add(ETC / "operator.yaml", _yaml(operator_target(inv), "operator commands on this machine"))
    if node.etcd and not inv.etcd_endpoints:
        b.add("/etc/default/etcd", etcd_default(inv, node), 0o644)
        b.copy(sec.tls / "ca.pem", ETCD_TLS / "ca.pem", 0o644, "etcd")
        b.copy(sec.tls / f"etcd-{node.name}.pem", ETCD_TLS / "server.pem", 0o644, "etcd")
        b.copy(sec.tls / f"etcd-{node.name}.key", ETCD_TLS / "server.key", 0o600, "etcd")
    for o in _fenced_by(inv, node):
        b.add(ETC / "bmc" / f"{o.name}.password", Path(o.bmc.password_file).read_bytes())
    b.add("/etc/sudoers.d/vigil-operators", sudoers(inv, node), 0o440)
    return b


def _fenced_by(inv: Inventory, node: NodeSpec) -> list[NodeSpec]:
    """The other nodes with a BMC: `node` may power them off (never itself)."""
    return [o for o in inv.nodes if o.bmc and o.name != node.name]


def _etcd_block(inv: Inventory, user: str, local: str | None = None) -> dict[str, Any]:
    eps = inv.endpoints()
    if local:  # the voter on this machine first: a leading agent moves raft leadership off it
        mine = next(e for e in eps if f"//{host(inv.node(local).address)}:" in e)
        eps = [mine] + [e for e in eps if e != mine]
    return {"endpoints": eps, "ca_file": str(TLS / "ca.pem"), "cert_file": str(TLS / f"{user}.pem"),
            "key_file": str(TLS / f"{user}.key"), "user": user, "password_file": str(TLS / f"{user}.password"),
            **({"local_member": local} if local else {})}


def node_config(inv: Inventory, node: NodeSpec) -> dict[str, Any]:
    p = inv.ports
    cfg: dict[str, Any] = {
        "cluster": inv.cluster, "node": node.name, "priority": node.priority, "data_dir": "/var/lib/vigil",
        "api": {"host": node.address, "port": p["api"], "cert_file": str(TLS / "api.pem"),
                "key_file": str(TLS / "api.key"), "tokens_file": str(TLS / "api-tokens.yaml")},
        "etcd": _etcd_block(inv, node.name, node.name if node.etcd and not inv.etcd_endpoints else None),
        "heartbeat": {"addresses": [node.address], "port": p["heartbeat"],
                      "signing_key_file": str(KEYS / f"{node.name}.key"),
                      "keyring_file": str(KEYS / "cluster.keyring"),
                      "peers": [{"name": o.name, "addresses": [o.address], "port": p["heartbeat"]}
                                for o in inv.nodes if o.name != node.name],
                      "observers": [{"address": o.address, "port": p["router_heartbeat"]} for o in inv.nodes],
                      # The heartbeat thread at SCHED_FIFO 10, memory locked (vigil.realtime):
                      # a busy node's heartbeats still leave on time.
                      "realtime": {"priority": DEFAULT_PRIORITY, "lock_memory": True}},
        "timing": dict(inv.timing),
        "watchdog": {"mode": "automatic"},
        "router": {"config": str(ETC / "router.yaml")},
    }
    if inv.vips:
        cfg["vips"] = [dict(v) for v in inv.vips]
    if inv.inference:
        cfg["inference"] = _inference(inv.inference, node)
    fencing = {o.name: [{"type": "ipmi", "host": o.bmc.address, "user": o.bmc.user,
                         "password_file": str(ETC / "bmc" / f"{o.name}.password")}]
               for o in _fenced_by(inv, node)}
    if fencing:
        cfg["fencing"] = {"topology": fencing}
    return cfg


def _inference(spec: dict[str, Any], node: NodeSpec) -> dict[str, Any]:
    def fill(s: str) -> str:
        return s.replace("{address}", node.address).replace("{node}", node.name)
    out: dict[str, Any] = {k: v for k, v in spec.items() if k not in ("url", "command", "user")}
    out["url"] = fill(spec["url"])
    if spec.get("command"):
        out["command"] = [fill(c) for c in spec["command"]]
        out["user"] = spec["user"]
    return out


def router_config(inv: Inventory, node: NodeSpec) -> dict[str, Any]:
    p = inv.ports
    return {"cluster": inv.cluster, "name": f"router-{node.name}",
            "listen": {"host": "0.0.0.0", "port": p["router"]},  # the VIP's traffic arrives on any address
            "admin": {"host": node.address, "port": p["router_admin"], "cert_file": str(TLS / "api.pem"),
                      "key_file": str(TLS / "api.key"), "tokens_file": str(TLS / "api-tokens.yaml")},
            "etcd": _etcd_block(inv, f"router-{node.name}"),
            "heartbeat": {"address": node.address, "port": p["router_heartbeat"],
                          "keyring_file": str(KEYS / "cluster.keyring")},
            "retry": {"per_try_timeout": 3.0, "max_attempts": 3,
                      "continue_key_file": str(KEYS / "continue.key")}}


def operator_target(inv: Inventory) -> dict[str, Any]:
    return {"cluster": inv.cluster, "etcd": _etcd_block(inv, "operator"),
            "api_token_file": str(TLS / "operator.api-token")}


def etcd_default(inv: Inventory, node: NodeSpec) -> str:
    p = inv.ports
    peers = ",".join(f"{v.name}=https://{host(v.address)}:{p['etcd_peer']}" for v in inv.voters)
    me = host(node.address)
    env = {"ETCD_NAME": node.name, "ETCD_DATA_DIR": "/var/lib/etcd/vigil",
           "ETCD_LISTEN_CLIENT_URLS": f"https://{me}:{p['etcd_client']},https://127.0.0.1:{p['etcd_client']}",
           "ETCD_ADVERTISE_CLIENT_URLS": f"https://{me}:{p['etcd_client']}",
           "ETCD_LISTEN_PEER_URLS": f"https://{me}:{p['etcd_peer']}",
           "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"https://{me}:{p['etcd_peer']}",
           "ETCD_INITIAL_CLUSTER": peers, "ETCD_INITIAL_CLUSTER_STATE": "new",
           "ETCD_INITIAL_CLUSTER_TOKEN": f"vigil-{inv.cluster}",
           "ETCD_CERT_FILE": str(ETCD_TLS / "server.pem"), "ETCD_KEY_FILE": str(ETCD_TLS / "server.key"),
           "ETCD_TRUSTED_CA_FILE": str(ETCD_TLS / "ca.pem"), "ETCD_CLIENT_CERT_AUTH": "true",
           "ETCD_PEER_CERT_FILE": str(ETCD_TLS / "server.pem"), "ETCD_PEER_KEY_FILE": str(ETCD_TLS / "server.key"),
           "ETCD_PEER_TRUSTED_CA_FILE": str(ETCD_TLS / "ca.pem"), "ETCD_PEER_CLIENT_CERT_AUTH": "true",
           # Vigil's leases are seconds long: etcd must notice a dead raft leader well within one
           "ETCD_HEARTBEAT_INTERVAL": "100", "ETCD_ELECTION_TIMEOUT": "1000"}
    return "# etcd voter of Vigil cluster " + inv.cluster + ": written by `vigil init`\n" + \
        "".join(f"{k}=\"{v}\"\n" for k, v in env.items())


def sudoers(inv: Inventory, node: NodeSpec) -> str:
    """The `vigil-operators` group's commands, every argument spelt out: sudo matches a
    listed command's arguments exactly, and a wildcard would let `--target` name any
    root file or `journalctl` rotate and vacuum the journal (operators read logs
    through the systemd-journal group instead)."""
    target = f"--target {ETC / 'operator.yaml'}"
    lines = [f"/usr/bin/systemctl {verb} {unit}.service" for unit in UNITS
             for verb in ("start", "stop", "restart", "reload", "status")]
    lines += [f"/usr/bin/vigil status {target}", f"/usr/bin/vigil status {target} --json",
              f"/usr/bin/vigil events {target}"]
    for n in inv.nodes:
        lines += [f"/usr/bin/vigil drain {n.name} --wait {target}", f"/usr/bin/vigil standby {n.name} {target}",
                  f"/usr/bin/vigil resume {n.name} {target}", f"/usr/bin/vigil switchover --to {n.name} {target}"]
    for n in _fenced_by(inv, node):
        lines += [f"/usr/bin/ipmitool -I lanplus -H {n.bmc.address} -U {n.bmc.user} "
                  f"-f /etc/vigil/bmc/{n.name}.password chassis power {verb}"
                  for verb in ("status", "on", "off", "cycle")]
    body = ", \\\n    ".join(_sudo_escape(line) for line in lines)
    return ("# Written by `vigil init`: what members of vigil-operators may run as root, each\n"
            "# command with all its arguments (no wildcards). Check with `visudo -cf` before editing.\n"
            f"Cmnd_Alias VIGIL_OPS = {body}\n%vigil-operators ALL = (root) NOPASSWD: VIGIL_OPS\n")


def _sudo_escape(command: str) -> str:
    """sudoers gives `,` `:` `=` and `\\` a meaning in a command's arguments (an IPv6 BMC's colons)."""
    return "".join("\\" + ch if ch in ",:=\\" else ch for ch in command)
