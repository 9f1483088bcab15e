"""Facility sensors over Modbus/TCP (pymodbus): rack inlet temperatures on
4-20 mA or 0-10 V loops and PLC fault codes, read as one probe ("sensors").

A point's register holds the loop's current (or voltage, or a raw value) in
`raw_per_unit` counts per mA (V, unit): 1200 with raw_per_unit 100 is 12.00 mA.
4-20 mA loops follow NAMUR NE 43: 3.8-20.5 mA is a measurement (scaled
linearly from `range` at 4 and 20 mA); <= 3.6 mA or >= 21 mA is a sensor
fault (a wire break is not 0 °C); between those bands the value is not
trusted either. A 0-10 V loop reads 0 V on a broken wire, so 0-10.5 V is
taken as measured (use 4-20 mA where that matters).

Contract (vigil.probes.base): `read(now)` never raises and never blocks
longer than each PLC's timeout (once per PLC per round: a silent PLC's other
points are not tried again that round). Every point is in the reading,
valid or with its problem; `counts` keeps reads, timeouts, Modbus exception
responses (illegal address...), garbage answers and connection failures.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from vigil.probes.base import Reading


def quiet_pymodbus() -> None:
    """pymodbus logs every refused connection at ERROR, once per attempt; each failure
    is counted and reported here (alarms, counts), so its own log only repeats it."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


quiet_pymodbus()

NE43_FAULT_LOW, NE43_LOW, NE43_HIGH, NE43_FAULT_HIGH = 3.6, 3.8, 20.5, 21.0
WORDS = {"uint16": 1, "int16": 1, "float32": 2}


@dataclass(frozen=True)
class SensorPoint:
    name: str
    kind: str  # inlet_temp | fault_code (vigil.core.facility)
    host: str
    port: int
    register: int
    unit: int = 1
    table: str = "holding"  # holding | input
    data: str = "uint16"  # uint16 | int16 | float32 (two registers, high word first)
    signal: str = "raw"  # 4-20mA | 0-10V | raw
    raw_per_unit: float = 1.0
    range: tuple[float, float] = (0.0, 100.0)  # engineering units at 4 and 20 mA (0 and 10 V)
    timeout: float = 0.5

    @property
    def plc(self) -> tuple[str, int, int]:
        return self.host, self.port, self.unit


def decode(point: SensorPoint, registers: list[int]) -> float:
    if point.data == "float32":
        return struct.unpack(">f", struct.pack(">HH", registers[0], registers[1]))[0]
    raw = registers[0]
    return raw - 65536 if point.data == "int16" and raw >= 32768 else raw


def scale(point: SensorPoint, raw: float) -> tuple[float | None, str]:
    """(engineering value, "") or (None, why it is not a measurement)."""
    lo, hi = point.range
    signal = raw / point.raw_per_unit
    if point.signal == "4-20mA":
        if signal <= NE43_FAULT_LOW or signal >= NE43_FAULT_HIGH:
            return None, (f"loop current {signal:.2f} mA: sensor fault (NAMUR NE 43: <= {NE43_FAULT_LOW} or "
                          f">= {NE43_FAULT_HIGH:g} mA; a broken wire or a failed transmitter)")
        if not NE43_LOW <= signal <= NE43_HIGH:
            return None, f"loop current {signal:.2f} mA: outside NE 43's measuring range {NE43_LOW}-{NE43_HIGH} mA"
        return lo + (signal - 4.0) / 16.0 * (hi - lo), ""
    if point.signal == "0-10V":
        if not 0.0 <= signal <= 10.5:
            return None, f"loop voltage {signal:.2f} V outside 0-10.5 V"
        return lo + signal / 10.0 * (hi - lo), ""
    return signal, ""


class ModbusSensors:
    name = "sensors"

    def __init__(self, points: list[SensorPoint], client_factory: Any = None):
        self.points = points
        self.counts: Counter[str] = Counter()
        self._clients: dict[tuple[str, int], Any] = {}
        self._factory = client_factory

    def read(self, now: float) -> Reading:
        silent: dict[tuple[str, int, int], str] = {}
        out = {}
        for p in self.points:
            if p.plc in silent:
                out[p.name] = _invalid(p, silent[p.plc])
                continue
            self.counts["reads"] += 1
            registers, problem, kind = self._registers(p)
            if kind in ("timeouts", "connect_failures"):
                silent[p.plc] = problem
            if problem:
                self.counts[kind] += 1
                out[p.name] = _invalid(p, problem)
                continue
            value, problem = (decode(p, registers), "") if p.kind == "fault_code" else scale(p, decode(p, registers))
            out[p.name] = _invalid(p, problem) if problem else {"kind": p.kind, "valid": True, "value": value,
                                                                 "plc": f"{p.host}:{p.port}"}
        return Reading(self.name, now, True, {"points": out, "counts": dict(self.counts)})

    def _client(self, p: SensorPoint) -> Any:
        key = (p.host, p.port)
        c = self._clients.get(key)
        if c is None:
            if self._factory is None:
                from pymodbus.client import ModbusTcpClient
                self._factory = ModbusTcpClient
            c = self._clients[key] = self._factory(p.host, port=p.port, timeout=p.timeout, retries=0)
        return c

    def _registers(self, p: SensorPoint) -> tuple[list[int], str, str]:
        """(registers, "", "") or ([], problem, the counter it lands in)."""
        where = f"PLC {p.host}:{p.port} unit {p.unit} {p.table} register {p.register}"
        try:
            c = self._client(p)
            if not c.connected and not c.connect():
                return [], f"{where}: cannot connect", "connect_failures"
            read = c.read_holding_registers if p.table == "holding" else c.read_input_registers
            r = read(p.register, count=WORDS[p.data], device_id=p.unit)
        except Exception as e:  # noqa: BLE001 - the PLC boundary: whatever pymodbus raises is a count
            self._drop(p)
            text = f"{type(e).__name__}: {e}"
            kind = "timeouts" if "timeout" in text.lower() or "no response" in text.lower() else "exceptions"
            return [], f"{where}: no valid answer ({text[:160]})", kind
        if r.isError():
            code = getattr(r, "exception_code", None)
            return [], f"{where}: Modbus exception {code} ({_EXCEPTIONS.get(code, 'error')})", "exceptions"
        regs = getattr(r, "registers", None)
        if not isinstance(regs, list) or len(regs) < WORDS[p.data] or \
                not all(isinstance(x, int) and 0 <= x <= 65535 for x in regs[:WORDS[p.data]]):
            return [], f"{where}: garbage answer {str(regs)[:60]}", "garbage"
        return regs, "", ""

    def _drop(self, p: SensorPoint) -> None:
        c = self._clients.pop((p.host, p.port), None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not raise
                pass

    def close(self) -> None:
        for p in self.points:
            self._drop(p)


_EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
               4: "device failure", 6: "device busy", 10: "gateway path unavailable",
               11: "gateway target did not respond"}


def _invalid(p: SensorPoint, problem: str) -> dict[str, Any]:
    return {"kind": p.kind, "valid": False, "problem": problem, "plc": f"{p.host}:{p.port}"}
