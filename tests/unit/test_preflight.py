"""`vigil preflight`'s checks of the machine (vigil.preflight.system) on
prepared /proc and /sys trees, where the failing conditions are made real
as files; the clock through an injected adjtimex; the rules for ignoring
errors and the exit code; and the /proc parsers fed anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.resources.vip import VipConfig
from vigil.errors import ConfigError
from vigil.preflight import run, system
from vigil.preflight.outcome import ERROR, PASS, SKIPPED, WARNING, failed, passed
from vigil.preflight.services import fsync_latency, port_owner
from vigil.preflight.system import STA_UNSYNC, Host
from vigil.testing.keys import shared_keys
from vigil.config import WatchdogConfig, parse_config


def tree(tmp: Path, files: dict[str, str]) -> Host:
    for path, text in files.items():
        f = tmp / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return Host(tmp, timex=lambda: (0, 1000))


def node(**over):
    keys = shared_keys("n1", "n2")
    cfg = parse_config({"cluster": "c", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                        "heartbeat": {**keys["n1"], "addresses": ["127.0.0.1"], "port": 7400,
                                      "peers": [{"name": "n2", "addresses": ["127.0.0.2"], "port": 7400}]}})
    return dataclasses.replace(cfg, **over)


def test_kernel_release_old_new_and_unreadable(tmp_path):
    assert system.kernel(tree(tmp_path / "a", {"/proc/sys/kernel/osrelease": "6.1.0-18-amd64\n"})).result == PASS
    old = system.kernel(tree(tmp_path / "b", {"/proc/sys/kernel/osrelease": "5.10.0-28-amd64\n"}))
    assert old.result == ERROR and "older than 5.15" in old.found and "apt install linux-image" in old.fix
    assert system.kernel(tree(tmp_path / "c", {})).result == SKIPPED


def test_ebpf_needs_the_syscall_and_the_filesystem(tmp_path):
    both = tree(tmp_path / "a", {"/proc/sys/kernel/unprivileged_bpf_disabled": "2\n", "/sys/fs/bpf/.keep": ""})
    assert system.ebpf(both).result == PASS
    none = system.ebpf(tree(tmp_path / "b", {"/proc/sys/kernel/unprivileged_bpf_disabled": "2\n"}))
    assert none.result == WARNING and "mount -t bpf" in none.fix


def test_rmem_max_below_16_mib_is_an_error_with_the_command_that_fixes_it(tmp_path):
    low = system.sysctls(tree(tmp_path / "a", {"/proc/sys/net/core/rmem_max": "212992\n"}), None)
    assert [(o.id, o.result) for o in low] == [("Sysctl-net.core.rmem_max", ERROR)]
    assert "sysctl -w net.core.rmem_max=16777216" in low[0].fix and "false suspicions" in low[0].why
    ok = system.sysctls(tree(tmp_path / "b", {"/proc/sys/net/core/rmem_max": "16777216\n"}), None)
    assert ok[0].result == PASS


def test_a_node_with_a_vip_is_told_about_arp_flux(tmp_path):
    host = tree(tmp_path, {"/proc/sys/net/core/rmem_max": "16777216", "/proc/sys/net/ipv4/conf/all/arp_ignore": "0",
                           "/proc/sys/net/ipv4/conf/all/arp_announce": "2"})
    cfg = node(vips=(VipConfig("10.231.0.100", 24, "eth0"),))
    out = {o.id: o for o in system.sysctls(host, cfg)}
    assert out["Sysctl-net.ipv4.conf.all.arp_ignore"].result == WARNING
    assert out["Sysctl-net.ipv4.conf.all.arp_announce"].result == PASS


def test_the_clock_unsynchronised_imprecise_and_synchronised(tmp_path):
    host = tree(tmp_path, {})
    host.timex = lambda: (STA_UNSYNC, 16_000_000)
    assert system.clock(host).result == ERROR and "chrony" in system.clock(host).fix
    host.timex = lambda: (0, 500_000)
    assert system.clock(host).result == WARNING
    host.timex = lambda: (0, 2_000)
    assert system.clock(host).result == PASS
    host.timex = lambda: None
    assert system.clock(host).result == SKIPPED
    assert system.Host().timex() is not None, "adjtimex(2) answers on this machine"


def test_capabilities_are_checked_when_a_vip_needs_them(tmp_path):
    cfg = node(vips=(VipConfig("10.231.0.100", 24, "eth0"),))
    without = tree(tmp_path / "a", {"/proc/self/status": "Name:\tx\nCapEff:\t0000000000000000\n"})
    out = system.capabilities(without, cfg)
    assert out.result == ERROR and "CAP_NET_ADMIN, CAP_NET_RAW" in out.found
    root = tree(tmp_path / "b", {"/proc/self/status": "CapEff:\t000001ffffffffff\n"})
    assert system.capabilities(root, cfg).result == PASS
    assert system.capabilities(root, node()).result == SKIPPED


def test_the_heartbeat_threads_realtime_scheduling_is_checked(tmp_path):
    from vigil.realtime import RealtimeSettings
    cfg = node(realtime=RealtimeSettings(10, True))
    off = system.realtime(tree(tmp_path / "a", {}), node())
    assert off.result == WARNING and "heartbeat.realtime" in off.fix
    nice_only = tree(tmp_path / "b", {"/proc/self/status": f"CapEff:\t{1 << system.CAP_SYS_NICE:016x}\n"})
    out = system.realtime(nice_only, cfg)
    assert out.result == WARNING and "CAP_IPC_LOCK" in out.found and "CAP_SYS_NICE" not in out.found
    starved = tree(tmp_path / "c", {"/proc/self/status": "CapEff:\t000001ffffffffff\n",
                                    "/proc/sys/kernel/sched_rt_runtime_us": "0\n"})
    out = system.realtime(starved, cfg)
    assert out.result == ERROR and "sched_rt_runtime_us=950000" in out.fix
    root = tree(tmp_path / "d", {"/proc/self/status": "CapEff:\t000001ffffffffff\n",
                                 "/proc/sys/kernel/sched_rt_runtime_us": "950000\n"})
    assert system.realtime(root, cfg).result == PASS
    assert system.realtime(Host(), cfg).result == PASS, "this machine (root) grants it"


BOND = """Ethernet Channel Bonding Driver: v6.1.0
Bonding Mode: {mode}
MII Status: up
Slave Interface: eth0
MII Status: up
Slave Interface: eth1
MII Status: up
"""


def test_one_heartbeat_link_is_a_warning_unless_it_is_an_lacp_bond(tmp_path):
    lacp = tree(tmp_path / "a", {"/proc/net/bonding/bond0": BOND.format(mode="IEEE 802.3ad Dynamic link aggregation")})
    assert system.links(lacp, node()).result == PASS
    backup = tree(tmp_path / "b", {"/proc/net/bonding/bond0": BOND.format(mode="fault-tolerance (active-backup)")})
    out = system.links(backup, node())
    assert out.result == WARNING and "bond0" in out.found and "802.3ad" in out.fix
    assert system.links(tree(tmp_path / "c", {}), node(addresses=("10.0.0.1", "10.1.0.1"))).result == PASS


def test_a_required_watchdog_without_its_device_is_an_error(tmp_path):
    host = tree(tmp_path, {})
    assert system.watchdog(host, node(watchdog=WatchdogConfig("required"))).result == ERROR
    assert system.watchdog(host, node(watchdog=WatchdogConfig("automatic"))).result == WARNING
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/watchdog").write_text("")
    assert system.watchdog(host, node(watchdog=WatchdogConfig("required"))).result == PASS


def test_ignoring_errors_by_id_prefix_or_all_and_the_exit_code():
    outs = [passed("Config", "ok"), failed("Port-udp-7400", "taken", "stop it"), failed("Etcd-a:1", "old", "up"),
            failed("HeartbeatLinks", "one", "two", result=WARNING)]
    ids = [o.id for o in outs]
    assert run.exit_code(outs) == 1
    assert run.exit_code(run.ignore(outs, run.parse_ignored("Port,Etcd-a:1", ids))) == 0
    assert run.exit_code(run.ignore(outs, run.parse_ignored("Port", ids))) == 1
    assert run.exit_code(run.ignore(outs, run.parse_ignored("all", ids))) == 0
    with pytest.raises(ConfigError, match="no check has this ID"):
        run.parse_ignored("Prot", ids)
    text = run.render(run.ignore(outs, {"Port"}))
    assert "(ignored)" in text and "fix: up" in text and "--ignore-preflight-errors=Etcd-a:1" in text
    doc = run.document(outs)
    assert doc["errors"] == ["Port-udp-7400", "Etcd-a:1"] and doc["exit_code"] == 1


TCP = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
       "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
       "   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n")


def test_a_port_owner_is_found_by_its_socket_and_named_without_its_command_line(tmp_path):
    host = tree(tmp_path, {"/proc/net/tcp": TCP, "/proc/77/comm": "python3\n",
                           "/proc/77/cmdline": "python3\0-m\0vigil\0agent\0--config\0conf/agent.yaml\0"
                                               "--etcd-password\0hunter2\0"})
    (tmp_path / "proc/77/fd").mkdir()
    (tmp_path / "proc/77/fd/5").symlink_to("socket:[4242]")
    (tmp_path / "proc/77/cwd").symlink_to(tmp_path)
    pid, name, config = port_owner(host, "tcp", 8080)
    assert (pid, name, config) == (77, "python3", (tmp_path / "conf/agent.yaml").resolve()), "relative to its cwd"
    assert port_owner(host, "tcp", 8081) is None, "an established connection, not a listener"
    assert port_owner(host, "udp", 8080) is None


def test_fsync_latency_is_measured_in_the_folder(tmp_path):
    times = fsync_latency(tmp_path, samples=20)
    assert len(times) == 20 and all(t > 0 for t in times) and list(tmp_path.iterdir()) == []


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["/proc/sys/kernel/osrelease", "/proc/sys/net/core/rmem_max",
                                         "/proc/self/status", "/proc/net/bonding/bond0", "/proc/net/udp",
                                         "/proc/net/tcp6", "/proc/sys/net/ipv4/conf/all/arp_ignore"]),
                       st.text(max_size=300)))
def test_the_proc_readers_take_anything(tmp_path_factory, files):
    """Whatever those files hold, every machine check returns one Outcome each."""
    host = tree(tmp_path_factory.mktemp("proc"), files)
    cfg = node(vips=(VipConfig("10.231.0.100", 24, "eth0"),))
    outs = system.checks(host, cfg)
    assert all(o.result in (PASS, WARNING, ERROR, SKIPPED) and o.id for o in outs)
    assert port_owner(host, "udp", 7400) is None, "no process in the tree holds a socket"
