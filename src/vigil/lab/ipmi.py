"""An OpenIPMI `ipmi_sim` BMC (on loopback by default) whose chassis power really controls
a process: "power off" SIGKILLs the simulated node, "power on" starts it.
Used by tests and the lab; recipe in the shared research notes (section 5).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from vigil.errors import VigilError
from vigil import procs

CHASSIS = """#!/bin/sh
# ipmi_sim calls: chassis.sh DEV get power | chassis.sh DEV set power 0|1 | set reset 1
D={dir}; PIDF=$D/node.pid
dev=$1; op=$2; shift 2
alive() {{ [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null && ! grep -q '^State:.*Z' /proc/$(cat "$PIDF")/status 2>/dev/null; }}
start_node() {{ {link_up}alive || {{ setsid {node} </dev/null >/dev/null 2>&1 & echo $! > "$PIDF"; }}; }}
stop_node() {{ alive && kill -9 "$(cat "$PIDF")"; rm -f "$PIDF"; {children}{link_down}}}
case "$op" in
  get) for p in "$@"; do case "$p" in
         power) if alive; then echo "power:1"; else echo "power:0"; fi ;;
         boot) echo "boot:default" ;;
       esac; done ;;
  set) while [ $# -ge 2 ]; do p=$1; v=$2; shift 2
         case "$p" in
           power) if [ "$v" = 0 ]; then stop_node; else start_node; fi ;;
           reset) stop_node; start_node ;;
         esac; done ;;
  *) echo "bad op $op"; exit 1 ;;
esac
exit 0
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr {addr} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid b123456789abcdefa123456789abcdef
  endlan
  chassis_control "{dir}/chassis.sh 0x20"
  user 1 true  ""      "test" user  10 none md2 md5 straight
  user 2 true  "{user}" "{password}" admin 10 none md2 md5 straight
"""

EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


class IpmiSim:
    def __init__(self, root: Path, port: int, node_cmd: list[str], user: str = "admin",
                 password: str = "vigil-pass", name: str = "node", addr: str = "127.0.0.1",
                 link: tuple[str, str] | None = None, children: tuple[Path, ...] = ()):
        """`link`: (network namespace, interface) that power off takes down and
        power on brings up: a powered-off machine answers no ARP for its VIP.
        `children`: PID files of the node's other processes (its router, its
        model server), SIGKILLed with it if their command line names vigil."""
        self.root, self.port, self.user, self.password = root, port, user, password
        self.addr, self.link, self.children = addr, link, children
        self.node_cmd, self.name = node_cmd, name
        self.proc: subprocess.Popen | None = None

    def start(self, power_on: bool = True) -> None:
        if not shutil.which("ipmi_sim"):
            raise VigilError("ipmi_sim not found: apt-get install openipmi ipmitool")
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        node = " ".join(shlex.quote(c) for c in self.node_cmd)
        chassis = self.root / "chassis.sh"
        ns, dev = (shlex.quote(x) for x in self.link) if self.link else ("", "")
        chassis.write_text(CHASSIS.format(
            dir=self.root, node=node,
            link_up=f"ip -n {ns} link set {dev} up; " if self.link else "",
            link_down=f"ip -n {ns} link set {dev} down; " if self.link else "",
            children="".join(f'p=$(cat {shlex.quote(str(f))} 2>/dev/null) && grep -q vigil /proc/"$p"/cmdline '
                             f'2>/dev/null && kill -9 "$p"; ' for f in self.children)))
        chassis.chmod(0o755)
        (self.root / "lan.conf").write_text(LAN_CONF.format(
            name=self.name, addr=self.addr, port=self.port, dir=self.root, user=self.user,
            password=self.password))
        (self.root / "node.emu").write_text(EMU)
        if power_on:
            subprocess.run([str(chassis), "0x20", "set", "power", "1"], check=True, timeout=10)
        self.proc = procs.spawn(["ipmi_sim", "-c", str(self.root / "lan.conf"), "-f",
                                 str(self.root / "node.emu"), "-s", str(self.root / "state"), "-n"],
                                self.root / "ipmi_sim.log")

    def node_pid(self) -> int | None:
        try:
            pid = int((self.root / "node.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if procs.alive(pid) else None

    def stop(self) -> None:
        pid = self.node_pid()
        if self.proc:
            procs.stop(self.proc.pid, "ipmi_sim")
        if pid:  # ipmi_sim does not stop what chassis.sh started
            procs.stop(pid, self.node_cmd[0])
