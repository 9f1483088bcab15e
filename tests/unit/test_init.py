"""Issue 23 #3: `vigil init` renders every machine's files from one inventory;
`vigil install-bundle` puts them in place with the modes the agent checks;
growth and removal change exactly what they must. The files are then used
for real by the three-machine test (tests/system/test_deploy_machines.py)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.cli.main import main
from vigil.config import parse_config
from vigil.deploy.inventory import parse_inventory
from vigil.errors import ConfigError
from vigil.identity import load_ring
from vigil.router.config import parse_router_config


def inventory(nodes: int = 3, voters: int = 3, **extra) -> dict:
    return {"cluster": "prod",
            "nodes": [{"name": f"n{i}", "address": f"10.231.40.{i}", "etcd": i <= voters,
                       "failure_domain": f"rack-{i}"} for i in range(1, nodes + 1)],
            "vips": [{"address": "10.231.40.100/24", "interface": "host0"}], **extra}


def init(tmp_path: Path, doc: dict, *flags: str) -> int:
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(doc))
    return main(["init", "--inventory", str(tmp_path / "inventory.yaml"), "--out", str(tmp_path / "out"), *flags])


def bundle(tmp_path: Path, node: str) -> Path:
    return tmp_path / "out" / node


def installed(tmp_path: Path, node: str) -> Path:
    root = tmp_path / f"root-{node}"
    assert main(["install-bundle", str(bundle(tmp_path, node)), "--root", str(root)]) == 0
    return root


def _here(root: Path, path: str) -> dict:
    """A node's or router's file with its /etc paths moved under `root` (as installed there)."""
    text = (root / path.lstrip("/")).read_text().replace("/etc/vigil/", f"{root}/etc/vigil/")
    return yaml.safe_load(text)


@pytest.mark.parametrize("voters", [2, 4])
def test_an_even_number_of_etcd_voters_is_refused_with_the_reason(voters):
    with pytest.raises(ConfigError) as e:
        parse_inventory(inventory(nodes=5, voters=voters))
    assert f"{voters} etcd voters tolerate no more failures than {voters - 1}" in str(e.value)
    assert "workers" in str(e.value)


def test_every_file_loads_as_the_agent_and_router_read_it_with_the_modes_they_check(tmp_path):
    assert init(tmp_path, inventory()) == 0
    root = installed(tmp_path, "n1")
    cfg = parse_config(_here(root, "/etc/vigil/node.yaml"))
    assert cfg.node == "n1" and [p.name for p in cfg.peers] == ["n2", "n3"]
    assert cfg.etcd.user == "n1" and cfg.etcd.local_member == "n1" and cfg.etcd.endpoints[0].endswith(".1:2379")
    assert cfg.vips and cfg.timing.lease_ttl == 2
    parse_router_config(_here(root, "/etc/vigil/router.yaml"))
    assert stat.S_IMODE((root / "etc/vigil").stat().st_mode) == 0o700
    for f in (root / "etc/vigil").rglob("*"):
        if f.is_file() and f.suffix in (".key", ".password", ".yaml", ".api-token"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    etcd = (root / "etc/default/etcd").read_text()
    assert 'ETCD_INITIAL_CLUSTER="n1=https://10.231.40.1:2380,n2=https://10.231.40.2:2380,' in etcd
    assert (root / "etc/etcd/vigil/server.key").stat().st_uid == _uid("etcd")
    sudo = (root / "etc/sudoers.d/vigil-operators").read_text()
    assert "%vigil-operators ALL = (root) NOPASSWD: VIGIL_OPS" in sudo
    assert "/usr/bin/systemctl restart vigil-agent.service" in sudo and "ALL = (root) NOPASSWD: ALL" not in sudo


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_a_second_run_and_a_second_install_change_nothing(tmp_path, capsys):
    assert init(tmp_path, inventory()) == 0
    installed(tmp_path, "n2")
    capsys.readouterr()
    assert init(tmp_path, inventory()) == 0
    assert capsys.readouterr().out.count("(0 file(s) changed)") == 3
    installed(tmp_path, "n2")
    assert "0 file(s) changed" in capsys.readouterr().out


def test_adding_a_worker_changes_the_others_peers_and_ring_only(tmp_path, capsys):
    assert init(tmp_path, inventory()) == 0
    capsys.readouterr()
    assert init(tmp_path, inventory(nodes=4)) == 2  # growth is said, never guessed
    assert "--add-node NAME" in capsys.readouterr().err
    assert init(tmp_path, inventory(nodes=4), "--add-node", "n4") == 0
    out = capsys.readouterr().out
    assert "n4: " in out and "(27 file(s) changed" not in out
    for node in ("n1", "n2", "n3"):
        line = next(li for li in out.splitlines() if li.startswith(f"{node}: "))
        assert "3 file(s) changed: /etc/sudoers.d/vigil-operators, /etc/vigil/keys/cluster.keyring, /etc/vigil/node.yaml)" in line, line
    ring = load_ring(bundle(tmp_path, "n1") / "etc/vigil/keys/cluster.keyring", "ring")
    assert set(ring.members) == {"n1", "n2", "n3", "n4"}
    users = yaml.safe_load((tmp_path / "out/admin/etcd-users.yaml").read_text())["users"]
    assert users["n4"]["kind"] == "agent" and users["router-n4"]["kind"] == "router"


def test_a_new_voter_is_refused_and_removal_retires_the_node(tmp_path, capsys):
    assert init(tmp_path, inventory(nodes=4)) == 0
    doc = inventory(nodes=5)
    doc["nodes"][4]["etcd"] = True
    doc["nodes"][3]["etcd"] = True
    assert init(tmp_path, doc, "--add-node", "n5") == 2
    assert "etcdctl member add" in capsys.readouterr().err
    doc = inventory(nodes=4)
    doc["nodes"][3]["etcd"] = True  # a worker made a voter: its etcd would be a cluster of its own
    doc["nodes"][2]["etcd"] = True
    doc["nodes"][1]["etcd"] = False
    assert init(tmp_path, doc) == 2
    assert "does not change the voters of a running etcd" in capsys.readouterr().err
    assert init(tmp_path, inventory(nodes=3), "--remove-node", "n4") == 0
    assert not bundle(tmp_path, "n4").exists()
    assert (tmp_path / "out/secrets/retired/n4/n4.key").exists()
    ring = load_ring(bundle(tmp_path, "n1") / "etc/vigil/keys/cluster.keyring", "ring")
    assert set(ring.members) == {"n1", "n2", "n3"}
    assert yaml.safe_load((tmp_path / "out/admin/etcd-users.yaml").read_text())["remove"] == ["n4", "router-n4"]
    assert init(tmp_path, inventory(nodes=3)) == 0  # a run before `etcd-auth apply` forgets no removal
    assert yaml.safe_load((tmp_path / "out/admin/etcd-users.yaml").read_text())["remove"] == ["n4", "router-n4"]


def test_a_bundle_with_a_hostile_manifest_installs_nothing(tmp_path, capsys):
    assert init(tmp_path, inventory()) == 0
    b = bundle(tmp_path, "n1")
    (b / "MANIFEST").write_text("600 root /etc/vigil/../../root/.ssh/authorized_keys\n")
    assert main(["install-bundle", str(b), "--root", str(tmp_path / "r")]) == 2
    assert "MODE OWNER" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                        st.sampled_from(["cluster", "nodes", "name", "address", "etcd", "vips", "ports",
                                         "inference", "timing", "bmc", "x"]), kids, max_size=5),
                    max_leaves=20))
def test_the_inventory_parser_is_total(doc):
    try:
        parse_inventory(doc)
    except ConfigError:
        pass


def test_the_bundle_tree_is_private(tmp_path):
    assert init(tmp_path, inventory()) == 0
    for d in ("secrets", "n1", "admin"):
        mode = stat.S_IMODE((tmp_path / "out" / d).stat().st_mode)
        assert mode & 0o077 == 0, (d, oct(mode))
    out = tmp_path / "out"
    secret = [f for f in out.rglob("*") if f.is_file() and (
        any(out / n in f.parents for n in ("n1", "n2", "n3")) or (f.suffix != ".pem" and f.name != "cluster.keyring"))]
    assert len(secret) > 40 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in secret)


def test_ipv6_addresses_are_bracketed_in_every_url(tmp_path):
    doc = inventory()
    for i, n in enumerate(doc["nodes"], 1):
        n["address"] = f"fd00:231::{i}"
    doc["vips"] = [{"address": "fd00:231::100/64", "interface": "eth0"}]
    assert init(tmp_path, doc) == 2, "a VIP is IPv4 (vigil.resources.vip): said at once, not on the machines"
    doc["vips"] = []
    assert init(tmp_path, doc) == 0
    root = installed(tmp_path, "n2")
    cfg = parse_config(_here(root, "/etc/vigil/node.yaml"))
    assert cfg.etcd.endpoints[0] == "https://[fd00:231::2]:2379", "the local voter first, bracketed"
    assert 'ETCD_LISTEN_PEER_URLS="https://[fd00:231::2]:2380"' in (root / "etc/default/etcd").read_text()


@pytest.mark.parametrize("name", ["ca", "continue", "n1-api", "etcd-n1", "secrets", "admin", "router-x", "operator"])
def test_names_that_would_collide_with_the_output_are_refused(tmp_path, capsys, name):
    doc = inventory()
    doc["nodes"][2]["name"] = name
    assert init(tmp_path, doc) == 2
    assert "name nodes n1, gpu-07" in capsys.readouterr().err


def test_the_sudoers_drop_in_parses_and_spells_out_every_argument(tmp_path):
    (tmp_path / "bmc.pw").write_text("secret\n")
    doc = inventory()
    doc["nodes"][0]["bmc"] = {"address": "fd00:231::11", "user": "admin", "password_file": "bmc.pw"}
    doc["nodes"][1]["bmc"] = {"address": "10.231.1.12", "user": "admin", "password_file": "bmc.pw"}
    assert init(tmp_path, doc) == 0
    text = (bundle(tmp_path, "n3") / "etc/sudoers.d/vigil-operators").read_text()
    assert "*" not in text and "journalctl" not in text, "no wildcard: sudo would let any argument through"
    assert "-H fd00\\:231\\:\\:11 " in text and "drain n2 --wait --target /etc/vigil/operator.yaml" in text
    visudo = shutil.which("visudo")
    assert visudo, "visudo is missing: apt-get install sudo (scripts/install.sh does)"
    r = subprocess.run([visudo, "-cf", str(bundle(tmp_path, "n3") / "etc/sudoers.d/vigil-operators")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("line, why", [
    ("600 root /etc/cron.d/evil", "is not a path a bundle writes"),
    ("4755 root /etc/vigil/keys/n1.key", "never set-id"),
    ("600 nobody /etc/vigil/keys/n1.key", "owned by root or etcd"),
])
def test_a_manifest_may_write_only_a_bundles_files(tmp_path, capsys, line, why):
    assert init(tmp_path, inventory()) == 0
    b = bundle(tmp_path, "n1")
    (b / "MANIFEST").write_text(line + "\n")
    assert main(["install-bundle", str(b), "--root", str(tmp_path / "r")]) == 2
    assert why in capsys.readouterr().err


def test_a_link_in_a_bundle_is_refused_and_dropped_files_are_removed(tmp_path, capsys):
    (tmp_path / "bmc.pw").write_text("secret\n")
    doc = inventory()
    doc["nodes"][1]["bmc"] = {"address": "10.231.1.12", "user": "admin", "password_file": "bmc.pw"}
    assert init(tmp_path, doc) == 0
    root = installed(tmp_path, "n1")
    assert (root / "etc/vigil/bmc/n2.password").exists()
    doc["nodes"][1].pop("bmc")
    assert init(tmp_path, doc) == 0
    capsys.readouterr()
    installed(tmp_path, "n1")
    assert not (root / "etc/vigil/bmc/n2.password").exists(), "a BMC password the bundle dropped stays nowhere"
    assert "/etc/vigil/bmc/n2.password" in capsys.readouterr().out
    target = bundle(tmp_path, "n1") / "etc/default/etcd"
    target.unlink()
    target.symlink_to("/etc/hostname")
    assert main(["install-bundle", str(bundle(tmp_path, "n1")), "--root", str(root)]) == 2
    assert "is a link" in capsys.readouterr().err
