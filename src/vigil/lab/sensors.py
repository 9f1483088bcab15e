"""The lab's facility PLC: a pymodbus Modbus/TCP server with, per node, a
rack inlet temperature on a 4-20 mA loop (0-50 °C), a fault-code register
and a ramp, driven by `vigil lab sensor` (issue 12 #8).

Register map, node i (0-based) at 10*i:
  +0  inlet loop current, in 10 µA counts (1168 = 11.68 mA = 24.0 °C)
  +1  fault code (0: none; the lab maps 0x88, a power imbalance, to draining)
  +2  ramp in m°C/s (int16): the simulator moves +0 by it every 100 ms

Each agent reads its own two registers through vigil.probes.modbus; nothing
here is known to the agent but the register map in its configuration.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil import procs
from vigil.errors import VigilError
from vigil.probes.modbus import quiet_pymodbus

SPAN = (0.0, 50.0)  # °C at 4 and 20 mA
COUNTS_PER_MA = 100
START_TEMP = 24.0
POWER_IMBALANCE = 0x88
TICK = 0.1


def temp_to_counts(celsius: float) -> int:
    lo, hi = SPAN
    return round((4.0 + 16.0 * (celsius - lo) / (hi - lo)) * COUNTS_PER_MA)


def counts_to_temp(counts: int) -> float:
    lo, hi = SPAN
    return lo + (counts / COUNTS_PER_MA - 4.0) / 16.0 * (hi - lo)


@dataclass
class LabSensors:
    port: int
    nodes: int
    log: str
    pid: int = 0

    def start(self) -> None:
        self.pid = procs.spawn([sys.executable, "-m", "vigil", "sensor-sim", "--port", str(self.port),
                                "--nodes", str(self.nodes)], Path(self.log)).pid
        procs.wait_for(lambda: self._answers(), 20, "the lab's sensor PLC answering")

    def stop(self) -> None:
        if self.pid:
            procs.stop(self.pid, "sensor-sim")

    def _answers(self) -> bool:
        try:
            self.read(0, 1)
            return True
        except VigilError:
            return False

    def node_health(self, index: int, drain_time: float = 10.0, margin: float = 10.0) -> dict[str, Any]:
        """The `health:` block that points node `index` (0-based) at its registers."""
        base = 10 * index
        return {"drain_time": drain_time, "drain_margin": margin, "sensors": [
            {"name": "inlet", "kind": "inlet_temp", "host": "127.0.0.1", "port": self.port,
             "register": base, "signal": "4-20mA", "raw_per_unit": COUNTS_PER_MA, "range": list(SPAN),
             "limit_c": 32.0},
            {"name": "rack_fault", "kind": "fault_code", "host": "127.0.0.1", "port": self.port,
             "register": base + 1, "codes": {POWER_IMBALANCE: ["draining", "power imbalance"]}}]}

    def set(self, index: int, temp: float | None = None, ramp: float | None = None,
            current_ma: float | None = None, fault: int | None = None) -> None:
        base = 10 * index
        if current_ma is not None:
            self.write(base + 2, [0])
            self.write(base, [round(current_ma * COUNTS_PER_MA)])
        if temp is not None:
            self.write(base, [temp_to_counts(temp)])
        if ramp is not None or temp is not None:
            self.write(base + 2, [round((ramp or 0.0) * 1000) & 0xFFFF])
        if fault is not None:
            self.write(base + 1, [fault])

    def read(self, address: int, count: int) -> list[int]:
        return _client_call(self.port, lambda c: c.read_holding_registers(address, count=count, device_id=1))

    def write(self, address: int, values: list[int]) -> None:
        _client_call(self.port, lambda c: c.write_registers(address, values, device_id=1))


def _client_call(port: int, op: Any) -> Any:
    from pymodbus.client import ModbusTcpClient

    quiet_pymodbus()
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
    try:
        if not c.connect():
            raise VigilError(f"the lab's sensor PLC on port {port} does not answer")
        r = op(c)
        if r.isError():
            raise VigilError(f"the lab's sensor PLC refused: {r}")
        return getattr(r, "registers", None)
    except VigilError:
        raise
    except Exception as e:  # noqa: BLE001 - the PLC boundary
        raise VigilError(f"the lab's sensor PLC: {type(e).__name__}: {e}") from None
    finally:
        c.close()


async def serve(port: int, nodes: int, stop: asyncio.Event) -> None:
    """The simulator: registers for `nodes` nodes, and the ramps moving them."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    values = [0] * (10 * nodes)
    for i in range(nodes):
        values[10 * i] = temp_to_counts(START_TEMP)
    server = ModbusTcpServer(SimDevice(id=1, simdata=[SimData(0, values=values, datatype=DataType.REGISTERS)]),
                             address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0)
    temps: dict[int, tuple[int, float]] = {}  # node -> (counts last written, exact temperature)
    try:
        await client.connect()
        while not stop.is_set():
            await _tick(client, nodes, temps)
            try:
                await asyncio.wait_for(stop.wait(), TICK)
            except asyncio.TimeoutError:
                pass
    finally:
        client.close()
        await server.shutdown()


MAX_READ = 120  # registers per read: Modbus allows at most 125 in one PDU


async def _tick(client: Any, nodes: int, temps: dict[int, tuple[int, float]]) -> None:
    regs: list[int] = []
    for start in range(0, 10 * nodes, MAX_READ):  # one read of all would fail from 13 nodes on
        r = await client.read_holding_registers(start, count=min(MAX_READ, 10 * nodes - start), device_id=1)
        if r.isError():
            return
        regs += r.registers
    for i in range(nodes):
        ramp = regs[10 * i + 2]
        ramp = (ramp - 65536 if ramp >= 32768 else ramp) / 1000.0
        counts = regs[10 * i]
        if ramp == 0:
            temps.pop(i, None)
            continue
        last, exact = temps.get(i, (counts, counts_to_temp(counts)))
        if counts != last:  # set from outside since: start from there
            exact = counts_to_temp(counts)
        exact += ramp * TICK
        new = temp_to_counts(exact)
        temps[i] = (new, exact)
        if new != counts:
            await client.write_register(10 * i, new, device_id=1)
