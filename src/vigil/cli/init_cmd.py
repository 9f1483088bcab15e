"""`vigil init` (every machine's files from one inventory) and `vigil
install-bundle` (put one machine's files in place). docs/deployment.md walks
through both."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from vigil.errors import ConfigError
from vigil.files import write_atomic

AGENT_FILES = ("/etc/vigil/node.yaml", "/etc/vigil/router.yaml", "/etc/vigil/keys/cluster.keyring")


def register(sub) -> None:
    p = sub.add_parser("init", help="from one inventory, every machine's files: certificates, keys, etcd "
                                    "users, node.yaml, router.yaml, etcd's configuration (docs/deployment.md)")
    p.add_argument("--inventory", required=True, help="the cluster's inventory (YAML)")
    p.add_argument("--out", required=True, help="where secrets/, NAME/ (one bundle per machine) and admin/ go (root only; "
                                                "keep it: later runs add and remove nodes from it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--add-node", metavar="NAME", help="NAME is new in the inventory: make its bundle and "
                                                      "the others' updates (key ring, peers)")
    g.add_argument("--remove-node", metavar="NAME", help="NAME is gone from the inventory: retire its "
                                                         "secrets and update the others")
    p.set_defaults(func=run_init)
    i = sub.add_parser("install-bundle", help="put this machine's bundle (from `vigil init`) in place")
    i.add_argument("bundle", help="the bundle directory (OUT/NAME, copied to this machine)")
    i.add_argument("--root", default="/", help="install under this directory instead of / (image builds)")
    i.add_argument("--reload", action="store_true",
                   help="reload a running vigil-agent if its files changed (systemctl reload: no restart)")
    i.set_defaults(func=run_install)


def run_init(args) -> int:
    from vigil.deploy.bundle import render
    from vigil.deploy.install import write_bundle
    from vigil.deploy.inventory import load_inventory
    from vigil.deploy.secrets import Secrets

    inv = load_inventory(args.inventory)
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    sec = Secrets(out / "secrets")
    _check_growth(args, inv, sec)
    if args.remove_node:
        moved = sec.retire(args.remove_node)
        shutil.rmtree(out / args.remove_node, ignore_errors=True)
        print(f"{args.remove_node}: retired {len(moved)} file(s) to {sec.root / 'retired' / args.remove_node}")
    sec.ensure(inv)
    for node in inv.nodes:
        changed = write_bundle(render(inv, sec, node), out / node.name)
        print(f"{node.name}: {out / node.name} ({len(changed)} file(s) changed"
              + (f": {', '.join(changed)}" if changed and len(changed) <= 6 else "") + ")")
    _write_admin(inv, sec, out / "admin")
    _next_steps(args, out)
    return 0


def _check_growth(args, inv, sec) -> None:
    """Growth is said, never guessed: a node appears or goes only with its flag."""
    known, listed = sec.known_nodes(), {n.name for n in inv.nodes}
    if not known:
        if args.add_node or args.remove_node:
            raise ConfigError("--out", str(sec.root.parent), "holds no cluster yet: run `vigil init` without "
                                                              "--add-node/--remove-node first")
        return
    new, gone = listed - known, known - listed
    expect_new = {args.add_node} if args.add_node else set()
    expect_gone = {args.remove_node} if args.remove_node else set()
    if args.add_node and inv.node(args.add_node).etcd:
        raise ConfigError("--add-node", args.add_node, "is marked `etcd: true`: add workers to a running "
                                                       "cluster; growing etcd's voters is `etcdctl member add` "
                                                       "first (docs/deployment.md, Growth)")
    if new != expect_new or gone != expect_gone:
        raise ConfigError("--inventory", args.inventory,
                          f"lists {sorted(listed)} but {sec.root} holds {sorted(known)}: say the change, "
                          f"`--add-node NAME` for a node new in the inventory or `--remove-node NAME` for one "
                          f"taken out of it (one at a time)")
    voters, wanted = sec.voters(), {n.name for n in inv.voters}
    if not inv.etcd_endpoints and voters != wanted:
        # A running etcd's members change with `etcdctl member add/remove` first; a bundle that
        # said ETCD_INITIAL_CLUSTER_STATE=new to a new voter would make it a cluster of its own.
        raise ConfigError("nodes.etcd", sorted(wanted), f"etcd's voters are {sorted(voters)}: `vigil init` does not "
                                                        "change the voters of a running etcd; keep them (add and "
                                                        "remove workers), and see docs/deployment.md, Growth")


def _write_admin(inv, sec, admin: Path) -> None:
    """What the person setting the cluster up keeps: etcd's users (and root's password)."""
    admin.mkdir(mode=0o700, parents=True, exist_ok=True)
    users = {u: {"kind": k, "password_file": str((sec.passwords / f"{u}.password").resolve())}
             for u, k in sec.users(inv).items()}
    doc = {"cluster": inv.cluster, "endpoints": inv.endpoints(), "ca_file": str((sec.tls / "ca.pem").resolve()),
           "cert_file": str((sec.tls / "operator.pem").resolve()),
           "key_file": str((sec.tls / "operator.key").resolve()),
           "root_password_file": str((sec.passwords / "root.password").resolve()),
           # every node ever retired, not only this run's: a run in between must not forget one
           "users": users, "remove": [u for n in sec.retired() for u in (n, f"router-{n}") if u not in users]}
    write_atomic(admin / "etcd-users.yaml", yaml.safe_dump(doc, sort_keys=False), 0o600)


def _next_steps(args, out: Path) -> None:
    users = out / "admin" / "etcd-users.yaml"
    if args.add_node or args.remove_node:
        print(f"next: `vigil etcd-auth apply --users {users}`, then on every machine "
              "`vigil install-bundle BUNDLE --reload` (its bundle copied there)"
              + (f", and on {args.add_node} `systemctl enable --now vigil-agent`" if args.add_node else ""))
    else:
        print(f"next: copy {out}/NAME to each machine, `vigil install-bundle BUNDLE`, start etcd on the "
              f"voters, `vigil etcd-auth apply --users {users}`, then `systemctl enable --now vigil-agent`")


def run_install(args) -> int:
    from vigil.deploy.install import install

    changed = install(Path(args.bundle), Path(args.root))
    for path in changed:
        print(f"installed {path}")
    print(f"{len(changed)} file(s) changed")
    if args.reload and set(changed) & set(AGENT_FILES) and _active("vigil-agent"):
        subprocess.run(["systemctl", "reload", "vigil-agent"], check=True, timeout=30)
        print("vigil-agent reloaded (SIGHUP): keys, peers and observers taken live")
    return 0


def _active(unit: str) -> bool:
    if not shutil.which("systemctl"):
        return False
    return subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=30).returncode == 0
