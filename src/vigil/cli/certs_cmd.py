"""`vigil certs init|issue`: the cluster's CA and its certificates (vigil.certs)."""

from __future__ import annotations

from pathlib import Path

from vigil.certs import init_ca, issue


def register(sub) -> None:
    p = sub.add_parser("certs", help="make the cluster's CA and certificates (TLS for etcd and Vigil)")
    s = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    i = s.add_parser("init", help="create DIR/ca.pem and DIR/ca.key")
    i.add_argument("--dir", required=True)
    i.set_defaults(func=lambda a: print(f"CA: {init_ca(Path(a.dir))} (keep {Path(a.dir) / 'ca.key'} "
                                        "offline once every certificate is issued)"))
    c = s.add_parser("issue", help="a certificate for an etcd member, agent, router or operator",
                     description="CN=NAME is who the certificate speaks for (etcd takes it as the user "
                                 "name: n1, router, operator, ...).")
    c.add_argument("--dir", required=True, help="the CA's directory; NAME.pem/NAME.key go there too")
    c.add_argument("--name", required=True)
    c.add_argument("--host", action="append", default=[], help="an address or DNS name it serves on "
                                                               "(repeat)")
    c.add_argument("--days", type=int, default=825)
    c.set_defaults(func=_issue)


def _issue(args) -> None:
    cert, key = issue(Path(args.dir), args.name, args.host, args.days)
    print(f"{args.name}: {cert} and {key}")


def register_auth(sub) -> None:
    p = sub.add_parser("etcd-auth", help="create etcd users and roles for a cluster and turn etcd auth on")
    s = p.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    i = s.add_parser("init", description="Roles on /vigil/CLUSTER/ (and /vigil-jobs/CLUSTER/) only: "
                                         "each agent its own, writing its own member record, the election "
                                         "key and the records a leader keeps, never another node's member "
                                         "record, a switchover or the config; operators read and write; "
                                         "routers and gateways read (docs/architecture.md, \"Trust model\"). "
                                         "Writes NAME.password (0600) for every user, and root.password, "
                                         "into --out.")
    i.add_argument("--etcd", required=True, metavar="URL[,URL...]")
    i.add_argument("--cluster", required=True)
    i.add_argument("--cacert")
    i.add_argument("--cert")
    i.add_argument("--key")
    i.add_argument("--agent", action="append", default=[], metavar="NODE",
                   help="an agent's user, named as its node (its `node:`), with a role of its own (repeat)")
    for kind in ("router", "gateway", "operator"):
        i.add_argument(f"--{kind}", action="append", default=[], metavar="NAME", help=f"a {kind} user (repeat)")
    i.add_argument("--out", required=True, help="directory for the password files")
    i.set_defaults(func=_auth_init)
    a = s.add_parser("apply", description="Create the users `vigil init` planned (OUT/admin/etcd-users.yaml) "
                                          "with their passwords, their roles, and root; turn auth on; delete "
                                          "the users of removed nodes. Run again after --add-node or "
                                          "--remove-node: it logs in as root once auth is on.")
    a.add_argument("--users", required=True, help="OUT/admin/etcd-users.yaml from `vigil init`")
    a.set_defaults(func=_auth_apply)


def _auth_init(args) -> int:
    import asyncio

    from vigil.files import write_atomic
    from vigil.store.etcd import EtcdStore
    from vigil.store.etcd_auth import enable_auth, new_password

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    users = {n: (kind, new_password()) for kind in ("agent", "router", "gateway", "operator")
             for n in getattr(args, kind)}
    root = new_password()
    for name, (_, pw) in {**users, "root": ("root", root)}.items():
        write_atomic(out / f"{name}.password", pw + "\n", 0o600)

    async def go() -> None:
        store = EtcdStore(args.etcd.split(","), 5.0, args.cacert, args.cert, args.key)
        try:
            await enable_auth(store, args.cluster, users, root)
        finally:
            await store.close()
    asyncio.run(go())
    print(f"etcd auth on for cluster {args.cluster}: {len(users)} users; passwords in {out} "
          "(give each its own file, root-only; keep root.password offline)")
    return 0


def _auth_apply(args) -> int:
    import asyncio

    from vigil.errors import StoreError
    from vigil.files import read_secret, read_yaml
    from vigil.store.etcd import EtcdStore
    from vigil.store.etcd_auth import auth_is_on, enable_auth, remove_users

    doc = _users_doc(read_yaml(args.users), args.users)
    users = {n: (u["kind"], read_secret(u["password_file"], f"users.{n}.password_file"))
             for n, u in doc["users"].items()}
    root = read_secret(doc["root_password_file"], "root_password_file")
    tls = (doc["ca_file"], doc["cert_file"], doc["key_file"])

    async def once(user: str | None) -> list[str]:
        store = EtcdStore(doc["endpoints"], 5.0, *tls, user, root if user else None)
        try:
            await enable_auth(store, doc["cluster"], users, root)
            return await remove_users(store, doc["cluster"], doc["remove"])
        finally:
            await store.close()

    async def go() -> list[str]:
        try:
            return await once(None)
        except StoreError as e:
            if not auth_is_on(e):
                raise
            return await once("root")
    gone = asyncio.run(go())
    print(f"etcd auth on for cluster {doc['cluster']}: {len(users)} users with their roles"
          + (f"; removed {', '.join(gone)}" if gone else ""))
    return 0


def _users_doc(v, path: str) -> dict:
    from vigil.errors import ConfigError
    from vigil.fields import check_mapping

    d = check_mapping(v, path, {"cluster", "endpoints", "ca_file", "cert_file", "key_file", "root_password_file",
                                "users", "remove"})
    for k in ("cluster", "ca_file", "cert_file", "key_file", "root_password_file"):
        if not isinstance(d.get(k), str):
            raise ConfigError(f"{path}: {k}", d.get(k), "missing: use the file `vigil init` wrote")
    if not isinstance(d.get("endpoints"), list) or not isinstance(d.get("users"), dict):
        raise ConfigError(f"{path}: users", None, "missing: use the file `vigil init` wrote")
    for n, u in d["users"].items():
        check_mapping(u, f"{path}: users.{n}", {"kind", "password_file"})
    d.setdefault("remove", [])
    return d
