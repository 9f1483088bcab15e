"""Fuzz target: Modbus/TCP responses as the actuator gateway's PLC client
reads them (vigil.resources.actuator.ModbusPlc over pymodbus). A PLC that
answers garbage, a truncated frame, the wrong transaction, a wrong byte
count or an exception code makes a read either return a register value or
raise PlcError, promptly: never another exception, never a hang."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES
from vigil.resources.actuator import ModbusPlc, PlcError
from vigil.procs import free_ports


class GarbagePlc:
    """Answers each request with the next scripted reply, then hangs up."""

    def __init__(self) -> None:
        self.reply: bytes | None = None  # None: the scripted reply is built from the request
        self.build = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.read(260), 5)
            writer.write(self.build(request) if self.build else b"")
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def plc(loop_thread):
    fake = GarbagePlc()
    (port,) = free_ports(1)

    async def up():
        return await asyncio.start_server(fake.serve, "127.0.0.1", port)
    server = loop_thread.run(up())
    try:
        yield fake, port
    finally:
        server.close()


def framed(pdu: bytes, same_tid: bool, length_ok: bool, unit: int):
    """A reply with an MBAP header built from the request's (or not)."""
    def build(request: bytes) -> bytes:
        tid = request[:2] if same_tid and len(request) >= 2 else b"\xff\xff"
        length = len(pdu) + 1 if length_ok else (len(pdu) + 7) % 65536
        return tid + b"\x00\x00" + struct.pack("!HB", length, unit) + pdu
    return build


PDUS = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(0, 255), st.binary(max_size=20)).map(lambda t: bytes([3, t[0]]) + t[1]),
    st.integers(0, 255).map(lambda code: bytes([0x83, code])),  # an exception response
)
REPLIES = st.one_of(
    st.binary(max_size=80).map(lambda b: (lambda _: b)),
    st.builds(framed, PDUS, st.booleans(), st.booleans(), st.integers(0, 255)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(REPLIES)
def test_any_plc_reply_is_a_value_or_a_plc_error(plc, loop_thread, build):
    fake, port = plc
    fake.build = build
    client = ModbusPlc("127.0.0.1", port, timeout=0.02)  # loopback answers in ~1 ms

    async def read():
        try:
            return await asyncio.wait_for(client.read(0), 5)
        finally:
            client.close()
    try:
        value = loop_thread.run(read(), timeout=10)
    except PlcError:
        return
    assert isinstance(value, int) and 0 <= value <= 65535
