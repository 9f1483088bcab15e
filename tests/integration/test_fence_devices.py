"""Fence devices against real simulators: OpenIPMI's ipmi_sim, whose power
off SIGKILLs the simulated node's process."""

from __future__ import annotations

import os
import signal

import pytest

from vigil.stonith.devices import FencingFailed, IpmiDevice, NullDevice
from vigil import procs
from vigil.lab.ipmi import IpmiSim
from vigil.testing.wait import wait_for_value, wait_until


@pytest.fixture
def bmc(tmp_path):
    port = procs.free_ports(1, kind=__import__("socket").SOCK_DGRAM)[0]
    sim = IpmiSim(tmp_path, port, ["sleep", "100000"])
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


async def test_ipmi_fence_really_kills_the_node_and_verifies(bmc):
    dev = IpmiDevice("127.0.0.1", bmc.port, bmc.user, bmc.password)
    await wait_until(lambda: bmc.node_pid(), 5, "the simulated node running")
    node = bmc.node_pid()
    assert await dev.status() == "on"
    await dev.fence()
    assert not procs.alive(node), "power off SIGKILLed the node's process"
    assert await dev.status() == "off"
    await dev.power_on()
    await wait_until(lambda: bmc.node_pid(), 10, "the node powered on again")
    assert await dev.status() == "on"


async def test_failing_ipmi_device_is_a_clear_failure_never_off(bmc):
    wrong = IpmiDevice("127.0.0.1", bmc.port, bmc.user, "wrong-password", timeout=10)
    with pytest.raises(FencingFailed) as e:
        await wrong.fence()
    assert "ipmi 127.0.0.1" in str(e.value)
    assert bmc.node_pid(), "nothing was powered off"
    dead_port = IpmiDevice("127.0.0.1", procs.free_ports(1)[0], "admin", "x", timeout=10)
    with pytest.raises(FencingFailed):
        await dead_port.status()


async def test_open_session_fences_over_it_and_falls_back_when_it_dies(bmc):
    """The session opened ahead of need carries the fence; a session whose
    ipmitool was killed costs a fresh one-shot, never a wrong answer."""
    dev = IpmiDevice("127.0.0.1", bmc.port, bmc.user, bmc.password)
    await wait_until(lambda: bmc.node_pid(), 5, "the simulated node running")
    await dev.open_session()
    shell_pid = dev._shell._proc.pid
    node = bmc.node_pid()
    await dev.fence()
    assert not procs.alive(node), "power off over the open session SIGKILLed the node"
    assert dev._shell is not None and dev._shell._proc.pid == shell_pid, "the open session carried the fence"
    assert await dev.status() == "off"
    await dev.power_on()
    await wait_until(lambda: bmc.node_pid(), 10, "the node powered on again")
    shell = dev._shell._proc
    os.kill(shell_pid, signal.SIGKILL)
    await wait_until(lambda: shell.returncode is not None, 5, "the session's ipmitool gone")
    node = bmc.node_pid()
    await dev.fence()  # the dead session is noticed, the fence runs on a new one
    assert not procs.alive(node)
    assert await dev.status() == "off"
    await dev.close()


async def test_a_session_that_cannot_open_is_a_clear_failure_and_leaves_nothing(bmc):
    wrong = IpmiDevice("127.0.0.1", bmc.port, bmc.user, "wrong-password", timeout=10)
    with pytest.raises(FencingFailed, match="ipmi 127.0.0.1"):
        await wrong.open_session()
    assert wrong._shell is None
    assert bmc.node_pid(), "nothing was powered off"


async def test_null_device_never_pretends():
    with pytest.raises(FencingFailed, match="confirm-off"):
        await NullDevice().fence()
    with pytest.raises(FencingFailed):
        await NullDevice().status()


@pytest.fixture
def redfish(tmp_path):
    import json
    import sys
    import urllib.request
    from pathlib import Path

    port = procs.free_ports(1)[0]
    exe = Path(sys.executable).parent / "sushy-emulator"
    p = procs.spawn([str(exe), "--fake", "-i", "127.0.0.1", "-p", str(port)], tmp_path / "sushy.log")
    url = f"http://127.0.0.1:{port}"

    def systems():
        try:
            with urllib.request.urlopen(url + "/redfish/v1/Systems", timeout=1) as r:
                return [m["@odata.id"].rsplit("/", 1)[1] for m in json.load(r)["Members"]]
        except OSError:
            return None
    try:
        ids = procs.wait_for(systems, 30, "the Redfish emulator")
        yield url, ids[0]
    finally:
        procs.stop(p.pid, "sushy-emulator")


async def test_redfish_fence_powers_off_and_verifies(redfish):
    from vigil.stonith.devices import RedfishDevice

    url, system = redfish
    dev = RedfishDevice(url, system)  # the emulator applies each power change 1-11 s later
    await dev.power_on()
    await wait_for_value(dev.status, "on", 20)
    await dev.fence()  # returns only once the BMC reads Off
    assert await dev.status() == "off"
    with pytest.raises(FencingFailed, match="HTTP 404"):
        await RedfishDevice(url, "no-such-system").fence()


async def test_a_kept_session_dies_with_its_agent_even_a_sigkilled_one(bmc, tmp_path):
    """ipmitool's shell spins on a closed stdin instead of exiting: the kept
    session must not outlive the agent that opened it."""
    import subprocess
    import sys

    script = tmp_path / "holder.py"
    script.write_text(
        "import asyncio, sys\n"
        "from vigil.stonith.devices import IpmiDevice\n"
        "async def main():\n"
        f"    dev = IpmiDevice('127.0.0.1', {bmc.port}, {bmc.user!r}, {bmc.password!r})\n"
        "    await dev.open_session()\n"
        "    print(dev._shell._proc.pid, flush=True)\n"
        "    await asyncio.Event().wait()  # until killed\n"
        "asyncio.run(main())\n")
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        shell = int(holder.stdout.readline())
        assert "ipmitool" in procs.cmdline(shell)
        holder.kill()
        holder.wait(10)
        assert procs.wait_dead(shell, 10), "the kept ipmitool session died with its agent"
    finally:
        holder.kill()
        holder.wait(10)


async def test_closing_a_session_leaves_no_process(bmc):
    dev = IpmiDevice("127.0.0.1", bmc.port, bmc.user, bmc.password)
    await dev.open_session()
    proc = dev._shell._proc
    await dev.close()
    assert proc.returncode is not None and not procs.alive(proc.pid)


async def test_a_refused_power_off_of_a_node_that_reads_off_is_a_fence_done():
    """Two standbys may fence one leader at once (their views differ for a moment);
    the second's ForceOff finds it off, and some BMCs refuse that (HTTP 409). A fence
    is proof the node is off: a refusal with the node reading off is one, and a
    refusal with the node on, or unreadable, is the failure it was."""
    from vigil.stonith.devices import FenceDevice

    class Refusing(FenceDevice):
        def __init__(self, state):
            self.state = state

        async def status(self) -> str:
            if self.state is None:
                raise FencingFailed("status: no answer")
            return self.state

        async def power_off(self) -> None:
            raise FencingFailed("ForceOff answered HTTP 409")

        async def power_on(self) -> None:
            pass

    await Refusing("off").fence()
    for state in ("on", None):
        with pytest.raises(FencingFailed, match="HTTP 409"):
            await Refusing(state).fence()
