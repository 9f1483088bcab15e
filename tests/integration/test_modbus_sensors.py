"""Facility sensors against a real pymodbus Modbus/TCP server (the lab's
sensor PLC as a process): 4-20 mA scaling, NAMUR NE 43 faults, a ramp, fault
codes, illegal addresses, a PLC that never answers, and one that disappears.
Then the same readings judged by the facility policy."""

from __future__ import annotations

import socket
import time

import pytest

from vigil import procs
from vigil.core.facility import FacilityPolicy
from vigil.lab.sensors import LabSensors, temp_to_counts
from vigil.probes.config import parse_health
from vigil.probes.modbus import ModbusSensors, SensorPoint


@pytest.fixture
def plc(tmp_path):
    sim = LabSensors(procs.free_ports(1)[0], 2, str(tmp_path / "sensors.log"))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def points(port, **kw):
    cfg = parse_health({"sensors": [
        {"name": "inlet", "kind": "inlet_temp", "host": "127.0.0.1", "port": port, "register": 0,
         "signal": "4-20mA", "raw_per_unit": 100, "range": [0, 50], **kw},
        {"name": "fault", "kind": "fault_code", "host": "127.0.0.1", "port": port, "register": 1,
         "codes": {0x88: ["draining", "power imbalance"]}}]})
    return cfg


def read(probe):
    return probe.read(time.monotonic()).values


def test_scaling_ne43_and_fault_codes(plc):
    cfg = points(plc.port)
    probe = ModbusSensors(list(cfg.sensors))
    v = read(probe)["points"]
    assert v["inlet"]["valid"] and v["inlet"]["value"] == pytest.approx(24.0, abs=0.05)
    assert v["fault"] == {"kind": "fault_code", "valid": True, "value": 0, "plc": f"127.0.0.1:{plc.port}"}
    plc.set(0, temp=31.0)
    assert read(probe)["points"]["inlet"]["value"] == pytest.approx(31.0, abs=0.05)
    for ma, fault in ((2.0, "sensor fault"), (3.6, "sensor fault"), (21.5, "sensor fault"),
                      (3.7, "outside NE 43"), (20.7, "outside NE 43")):
        plc.set(0, current_ma=ma)
        p = read(probe)["points"]["inlet"]
        assert not p["valid"] and fault in p["problem"], (ma, p)
    plc.set(0, current_ma=3.9)  # NE 43's under-range is still a measurement
    assert read(probe)["points"]["inlet"]["value"] == pytest.approx(-0.3125, abs=0.01)
    plc.set(0, temp=24.0, fault=0x88)
    assert read(probe)["points"]["fault"]["value"] == 0x88
    policy = FacilityPolicy(cfg.facility)
    findings = policy.judge(read(probe), 0.0)
    assert [(f.verdict, f.reason) for f in findings if f.verdict != "ready"] == \
        [("draining", "fault: fault code 0x88 (power imbalance)")]
    plc.set(0, current_ma=2.0)
    alarms = [f for f in policy.judge(read(probe), 1.0) if f.verdict == "ready"]
    assert alarms and "never moves work" in alarms[0].reason, "a wire break is an alarm, not 0 °C"
    probe.close()


def test_the_simulator_ramps_and_the_trend_sees_it(plc):
    probe = ModbusSensors(list(points(plc.port).sensors))
    plc.set(1, temp=20.0, ramp=2.0)  # node 1's registers: untouched node 0 stays at 24
    first = plc.read(10, 1)[0]
    procs.wait_for(lambda: plc.read(10, 1)[0] >= temp_to_counts(21.0), 10, "the ramp moving node 1's inlet")
    assert plc.read(10, 1)[0] > first
    assert read(probe)["points"]["inlet"]["value"] == pytest.approx(24.0, abs=0.05)
    plc.set(1, temp=22.0)  # a new temperature without --ramp stops the ramp
    assert plc.read(12, 1)[0] == 0


def test_a_plc_for_a_hundred_nodes_ramps_the_last_one(tmp_path):
    """A Modbus read carries at most 125 registers: the simulator of a 20-node lab
    read 200 at once and died before answering (scale-baseline.md)."""
    sim = LabSensors(procs.free_ports(1)[0], 100, str(tmp_path / "sensors.log"))
    sim.start()
    try:
        sim.set(99, temp=20.0, ramp=5.0)
        procs.wait_for(lambda: sim.read(990, 1)[0] >= temp_to_counts(21.0), 10, "node 99's ramp moving")
        assert sim.read(0, 1)[0] == temp_to_counts(24.0)
    finally:
        sim.stop()


def test_illegal_addresses_silent_and_vanishing_plcs_are_counted_never_raised(plc):
    beyond = ModbusSensors([SensorPoint("far", "inlet_temp", "127.0.0.1", plc.port, 500, signal="4-20mA",
                                        raw_per_unit=100)])
    p = read(beyond)
    assert not p["points"]["far"]["valid"] and "Modbus exception 2" in p["points"]["far"]["problem"]
    assert p["counts"]["exceptions"] == 1
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = points(silent.getsockname()[1], timeout=0.3)
        probe = ModbusSensors(list(cfg.sensors))
        t0 = time.monotonic()
        v = read(probe)
        took = time.monotonic() - t0
        assert not v["points"]["inlet"]["valid"] and not v["points"]["fault"]["valid"]
        assert v["counts"].get("timeouts", 0) + v["counts"].get("exceptions", 0) == 1, v["counts"]
        assert took < 5, "one timeout per silent PLC per round, not one per point"
    probe = ModbusSensors(list(points(plc.port).sensors))
    assert read(probe)["points"]["inlet"]["valid"]
    plc.stop()  # the PLC disappears
    v = read(probe)
    assert not v["points"]["inlet"]["valid"] and "PLC 127.0.0.1" in v["points"]["inlet"]["problem"]
    policy = FacilityPolicy(points(plc.port).facility)
    assert {f.verdict for f in policy.judge(v, 0.0)} == {"ready"}, "a silent PLC never moves work by itself"
