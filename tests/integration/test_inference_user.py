"""Issue 9 #7: the agent runs the inference server as `inference.user`, not
as root (a real process, its real uid and groups read from /proc)."""

from __future__ import annotations

import asyncio
import pwd
from pathlib import Path

import pytest

from vigil.agent.inference import InferenceSupervisor
from vigil.clock import SystemClock
from vigil.config import parse_config
from vigil.errors import ConfigError
from vigil.procs import free_ports
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until


def config(tmp_path: Path, **inference):
    (port,) = free_ports(1)
    return parse_config({"cluster": "u", "node": "n1", "data_dir": str(tmp_path),
                         "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                         "heartbeat": shared_keys("n1")["n1"],
                         "inference": {"url": f"http://127.0.0.1:{port}", **inference}})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_inference_server_runs_as_the_configured_user(tmp_path, loop):
    # `vigil agent` runs on uvloop, which refused subprocess's user=/group= (a ValueError that
    # left the server never started on the real machines: tests/system/test_deploy_machines.py)
    import uvloop

    (uvloop.run if loop == "uvloop" else asyncio.run)(_runs_as_nobody(tmp_path))


async def _runs_as_nobody(tmp_path):
    nobody = pwd.getpwnam("nobody")
    cmd = ["/bin/sleep", "3600"]  # not this Python: it may live where nobody may read (/root)
    cfg = config(tmp_path, command=cmd, user="nobody")
    sup = InferenceSupervisor(cfg.inference, tmp_path, SystemClock(), lambda *a: None, lambda *a, **k: None)
    await sup.start()
    try:
        proc = await wait_until(lambda: sup.proc, 10, "the server process")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        groups = next(line for line in status.splitlines() if line.startswith("Groups:")).split()[1:]
        assert set(uids) == {str(nobody.pw_uid)} and set(gids) == {str(nobody.pw_gid)}
        assert groups in ([], [str(nobody.pw_gid)]), "root's supplementary groups are dropped"
    finally:
        await asyncio.wait_for(sup.stop(), 20)


@pytest.mark.parametrize("user, words", [("no-such-user-here", "no such user"), ("root", "is root")])
def test_a_missing_or_root_user_is_refused(tmp_path, user, words):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, command=["true"], user=user)
    assert e.value.field == "inference.user" and words in str(e.value)
