"""Timer relations checked at start-up (raft's ValidateConfig, Patroni's
`loop_wait + 2*retry_timeout <= ttl`).

Rules, each returned as a problem naming the fields and the fix:
1. heartbeat_interval << suspicion time: the detection time for a steady
   sender must be at least 2 heartbeat intervals, or one late packet convicts.
2. keepalive_interval <= lease_ttl / 3: two keep-alives can be lost before
   the lease is at risk.
3. keepalive_interval + 2 * etcd_timeout <= demote_after: one slow renewal
   (with its retry) must not demote a healthy leader.
4. demote_after < lease_ttl: the leader stops acting before etcd can expire
   its lease and let another node take over (self-fencing).
5. lease_ttl is a whole number of seconds >= 1 (etcd grants whole seconds).
6. Every copy of a heartbeat leaves before the next heartbeat:
   (heartbeat_copies - 1) * copy_spacing < heartbeat_interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vigil.core.detector import DetectorSettings


@dataclass(frozen=True)
class Timing:
    """Every timer of a node, in seconds."""

    heartbeat_interval: float = 0.1
    phi_threshold: float = 8.0
    min_std_deviation: float = 0.02
    acceptable_pause: float = 0.04
    lease_ttl: int = 10
    keepalive_interval: float = 2.5
    demote_after: float = 8.0
    etcd_timeout: float = 1.0
    loop_interval: float = 1.0
    rise: int = 2
    # Each heartbeat is sent this many times, `copy_spacing` apart; receivers keep the
    # first copy (same sequence number). Under independent packet loss p a heartbeat is
    # lost with p**copies, so random loss stops looking like a crash (issue 12 #6),
    # while the detector sees the same 100 ms stream and detects a crash as fast.
    heartbeat_copies: int = 2
    copy_spacing: float = 0.02

    def detector(self) -> DetectorSettings:
        return DetectorSettings(threshold=self.phi_threshold, min_std=self.min_std_deviation,
                                acceptable_pause=self.acceptable_pause,
                                first_interval=self.heartbeat_interval)

    @property
    def suspicion_time(self) -> float:
        return self.detector().detection_time()


# The detector's fields: what a router, which hears the agents' heartbeats, must share with them.
DETECTION_FIELDS = ("heartbeat_interval", "phi_threshold", "min_std_deviation", "acceptable_pause", "rise")

# Fast detection (issue 26 #1): a steady sender is suspected 122 ms after its last
# heartbeat (Timing.suspicion_time), against 245 ms at the defaults. Heartbeats every
# 50 ms in 3 copies 15 ms apart: 5 % independent loss loses a whole heartbeat with
# 0.05**3 = 1.25e-4, and a false suspicion needs two such in a row. The price: 60
# packets a second to each watched peer instead of 20 (3 x the heartbeat work).
FAST_DETECTION = {"heartbeat_interval": 0.05, "heartbeat_copies": 3, "copy_spacing": 0.015,
                  "min_std_deviation": 0.01, "acceptable_pause": 0.02}


@dataclass(frozen=True)
class TimingProblem:
    field: str
    value: float
    fix: str


UPPER_BOUNDS = {"heartbeat_interval": 10.0, "phi_threshold": 100.0, "min_std_deviation": 10.0,
                "acceptable_pause": 60.0, "lease_ttl": 3600, "keepalive_interval": 1200.0,
                "demote_after": 3600.0, "etcd_timeout": 60.0, "loop_interval": 600.0, "rise": 100,
                "heartbeat_copies": 4, "copy_spacing": 10.0}


def validate_timing(t: Timing) -> list[TimingProblem]:
    """All violated relations; an empty list means the timers are consistent."""
    problems: list[TimingProblem] = []

    def need(ok: bool, field: str, value: float, fix: str) -> None:
        if not ok:
            problems.append(TimingProblem(field, value, fix))

    for name, hi in UPPER_BOUNDS.items():  # a bound on each: no infinite or absurd timer
        v = getattr(t, name)
        need(name in ("acceptable_pause", "copy_spacing") or v > 0, f"timing.{name}", v, "must be > 0")
        need(v >= 0 and v <= hi, f"timing.{name}", v, f"must be at most {hi:g}")
    need(isinstance(t.rise, int) and t.rise >= 1, "timing.rise", t.rise, "must be an integer >= 1")
    need(isinstance(t.heartbeat_copies, int) and t.heartbeat_copies >= 1, "timing.heartbeat_copies",
         t.heartbeat_copies, "must be an integer from 1 to 4")
    need(isinstance(t.lease_ttl, int) and t.lease_ttl >= 1, "timing.lease_ttl", t.lease_ttl,
         "must be a whole number of seconds >= 1 (etcd grants whole seconds)")
    if problems:
        return problems
    need(t.suspicion_time >= 2 * t.heartbeat_interval, "timing.heartbeat_interval",
         t.heartbeat_interval,
         f"must be at most half the suspicion time ({t.suspicion_time:.3f} s); "
         "raise phi_threshold, min_std_deviation or acceptable_pause, or send more often")
    need(t.keepalive_interval <= t.lease_ttl / 3, "timing.keepalive_interval",
         t.keepalive_interval, f"must be <= lease_ttl/3 = {t.lease_ttl / 3:.3f} s")
    need(t.keepalive_interval + 2 * t.etcd_timeout <= t.demote_after, "timing.demote_after",
         t.demote_after, "must be >= keepalive_interval + 2*etcd_timeout = "
         f"{t.keepalive_interval + 2 * t.etcd_timeout:.3f} s, or one slow renewal demotes the leader")
    need((t.heartbeat_copies - 1) * t.copy_spacing < t.heartbeat_interval, "timing.copy_spacing",
         t.copy_spacing, f"must leave every copy before the next heartbeat: (heartbeat_copies - 1) * "
         f"copy_spacing < heartbeat_interval ({t.heartbeat_interval:g} s)")
    need(t.demote_after < t.lease_ttl, "timing.demote_after", t.demote_after,
         f"must be < lease_ttl ({t.lease_ttl} s) so the leader stops before its lease can expire")
    return problems


# The hardware watchdog's modes (vigil.agent.watchdog runs it; config checks it).
WATCHDOG_OFF, WATCHDOG_AUTOMATIC, WATCHDOG_REQUIRED = "off", "automatic", "required"
WATCHDOG_MODES = (WATCHDOG_OFF, WATCHDOG_AUTOMATIC, WATCHDOG_REQUIRED)


def fitting_timeout(demote_after: float, lease_ttl: float, etcd_timeout: float) -> int | None:
    """The largest whole-second watchdog timeout in (demote_after, lease_ttl - etcd_timeout]:
    the watchdog fires only after the leader demoted itself, and before etcd can
    hand the role to another node."""
    t = math.floor(lease_ttl - etcd_timeout)
    return t if t > demote_after and t >= 1 else None
