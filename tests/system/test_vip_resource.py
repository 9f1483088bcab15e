"""Issue 10 (part 1): the VIP resource on real interfaces in network
namespaces: the kernel removes an address whose lifetime ran out (the bound
core.vip relies on), the duplicate-address probe finds another holder, and a
missing interface is named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vigil.core.vip import KERNEL_LAG, lifetime

ROOT = Path(__file__).resolve().parents[2]
VIP = "10.231.7.100/24"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def pair():
    """Namespaces a and b joined by a veth pair (a0 -- b0), 10.231.7.1 and .2."""
    tag = f"vipt{__import__('os').getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    made = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b)
        for ns, dev, addr in ((a, "a0", "10.231.7.1/24"), (b, "b0", "10.231.7.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def do(ns: str, *args: str) -> dict:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.system.vip_do", *args],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def held_in(ns: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    return VIP.split("/")[0] + "/" in out


def test_the_kernel_removes_an_address_whose_lifetime_ran_out(pair):
    a, _ = pair
    assert do(a, "start", VIP, "a0", "1") == {"ok": True, "held": True}
    t0 = time.monotonic()
    while held_in(a):
        assert time.monotonic() - t0 < 5, "still there 5 s after a 1 s lifetime"
    gone = time.monotonic() - t0
    assert gone <= 1 + KERNEL_LAG, f"gone {gone:.2f} s after the refresh: core.vip's bound is 1 + {KERNEL_LAG}"
    assert lifetime(0.0, 1.6) == 1 and lifetime(0.0, 1.4) is None, "lab timing: 1 s, or none at all"


def test_refresh_extends_and_remove_takes_it_off(pair):
    a, _ = pair
    do(a, "start", VIP, "a0", "1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # refreshed well within its 1 s lifetime: it never lapses
        assert do(a, "refresh", VIP, "a0", "1")["held"]
    assert held_in(a), "2.5 s on a 1 s lifetime, kept by the refreshes"
    assert do(a, "remove", VIP, "a0") == {"ok": True, "held": False}


def test_a_duplicate_holder_is_found_before_adding(pair):
    a, b = pair
    do(a, "start", VIP, "a0", "30")
    res = do(b, "start", VIP, "b0", "30")
    assert not res["ok"] and "in use by another host (MAC" in res["error"]
    assert not held_in(b), "never added while another host answers for it"


def test_a_missing_interface_is_named(pair):
    a, _ = pair
    res = do(a, "start", VIP, "eth9", "5")
    assert res == {"ok": False, "error": "no interface eth9 on this node (check `vips[].interface`)"}
