"""The leader's watchdog: modes, arming on leadership, petting on renewal,
the magic close; the Linux device's error paths on real files."""

from __future__ import annotations


import pytest

from vigil.agent.watchdog import AUTOMATIC, OFF, REQUIRED, LinuxWatchdogDevice, Watchdog, WatchdogError
from vigil.core.timing import fitting_timeout
from vigil.config import parse_config
from vigil.errors import ConfigError
from vigil.testing.keys import shared_keys


class FakeDevice:
    """Behaves as the kernel's device: the countdown starts on open, a write of
    anything restarts it, "V" then close stops it."""

    path = "/dev/fake-watchdog"

    def __init__(self, problem=None, sets=None):
        self.problem, self.sets = problem, sets
        self.open = False
        self.pets = 0
        self.timeout = None

    def usable(self):
        return self.problem

    def arm(self, timeout):
        self.open, self.timeout = True, self.sets or timeout
        return self.timeout

    def keepalive(self):
        self.pets += 1

    def disarm(self):
        self.open = False


def recorder():
    seen = []
    return seen, lambda kind, cause, **extra: seen.append((kind, cause))


def test_the_timeout_fits_between_self_demotion_and_the_lease():
    assert fitting_timeout(8.0, 10, 1.0) == 9
    assert fitting_timeout(1.6, 2, 0.5) is None, "the lab's 2 s lease has no whole second to spare"
    assert fitting_timeout(1.6, 3, 0.5) == 2


def test_armed_on_leadership_pet_on_renewal_disarmed_on_demotion():
    dev = FakeDevice()
    seen, record = recorder()
    w = Watchdog(REQUIRED, dev, 9, record)
    assert w.health_reasons() == ()
    w.pet()
    assert dev.pets == 0, "nothing to pet before leading"
    assert w.arm() and dev.open and dev.timeout == 9
    w.pet()
    w.pet()
    assert dev.pets == 2
    w.disarm()
    assert not dev.open and not w.armed
    assert [k for k, _ in seen] == ["watchdog_armed", "watchdog_disarmed"]


def test_required_and_missing_means_unhealthy_so_the_node_never_campaigns():
    w = Watchdog(REQUIRED, FakeDevice(problem="/dev/watchdog does not exist"), 9)
    assert w.health_reasons() == ("watchdog required but unusable: /dev/watchdog does not exist (fix it "
                                  "and restart the agent, or set watchdog.mode: automatic)",)
    assert w.arm() is False


def test_automatic_and_missing_leads_without_it_and_says_so():
    seen, record = recorder()
    w = Watchdog(AUTOMATIC, FakeDevice(problem="/dev/watchdog does not exist"), 9, record)
    assert w.health_reasons() == ()
    assert w.arm() is True and not w.armed
    assert seen[0][0] == "watchdog_unavailable" and "leading without it" in seen[0][1]
    assert w.describe()["problem"].startswith("/dev/watchdog does not exist")


def test_a_driver_that_sets_a_longer_timeout_than_fits_is_refused_and_closed():
    dev = FakeDevice(sets=30)
    w = Watchdog(REQUIRED, dev, 9)
    assert w.arm() is False and not dev.open
    assert "30 s timeout" in w.health_reasons()[0]


def test_off_never_touches_the_device():
    dev = FakeDevice(problem="missing")
    w = Watchdog(OFF, dev, 9)
    assert w.arm() and not dev.open and w.health_reasons() == () and w.describe()["problem"] is None


def test_linux_device_reports_a_missing_path_and_a_file_that_is_no_watchdog(tmp_path):
    missing = LinuxWatchdogDevice(str(tmp_path / "watchdog"))
    assert "does not exist" in missing.usable()
    plain = tmp_path / "not-a-watchdog"
    plain.write_text("")
    dev = LinuxWatchdogDevice(str(plain))
    assert "is not a character device" in dev.usable(), "issue 9 #7: checked before it is ever opened"
    assert LinuxWatchdogDevice("/dev/null").usable() is None, "a character device passes the check"
    with pytest.raises(WatchdogError, match="not a watchdog device"):  # armed anyway: ENOTTY
        dev.arm(9)
    assert dev._fd is None, "the file was closed again"
    assert plain.read_text() == "V", "closed with the magic close"



def base(**extra):
    return {"cluster": "c", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "heartbeat": shared_keys("n1")["n1"]} | extra


def test_config_defaults_to_automatic_with_a_fitting_timeout():
    w = parse_config(base()).watchdog
    assert (w.mode, w.device, w.timeout) == ("automatic", "/dev/watchdog", 9)
    assert parse_config(base(watchdog={"mode": False})).watchdog.mode == "off", "YAML's bare off"


@pytest.mark.parametrize("wd, field", [
    ({"mode": "sometimes"}, "watchdog.mode"),
    ({"timeout": 10}, "watchdog.timeout"),
    ({"timeout": 8}, "watchdog.timeout"),
    ({"device": "watchdog"}, "watchdog.device"),
    ({"devcie": "/dev/watchdog"}, "watchdog.devcie"),
])
def test_config_errors_name_the_field(wd, field):
    with pytest.raises(ConfigError) as e:
        parse_config(base(watchdog=wd))
    assert e.value.field == field


def test_required_with_no_fitting_timeout_is_a_config_error():
    timing = {"lease_ttl": 2, "keepalive_interval": 0.5, "demote_after": 1.6, "etcd_timeout": 0.5,
              "heartbeat_interval": 0.1, "loop_interval": 0.5}
    with pytest.raises(ConfigError, match="lengthen lease_ttl"):
        parse_config(base(watchdog={"mode": "required"}, timing=timing))
    assert parse_config(base(timing=timing)).watchdog.timeout is None, "automatic: leads without it"
