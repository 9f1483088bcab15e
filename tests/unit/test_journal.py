"""Logs for journald (vigil.journal) through its native protocol, against a
real Unix datagram socket standing in for /run/systemd/journal/socket:
fields, priorities, a multi-line message in the binary-safe form, an
event's kind as VIGIL_EVENT; no socket, the line goes to stderr; and when
stderr is the journal stream systemd names. (On real systemd machines:
tests/system/test_deploy_machines.py reads the agents' fields back with
journalctl.)"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys

from vigil.journal import JournalHandler, under_journald


def parse(datagram: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(datagram):
        nl = datagram.index(b"\n", pos)
        line = datagram[pos:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()], pos = v.decode(), nl + 1
        else:  # NAME \n u64le length, data \n
            (n,) = struct.unpack("<Q", datagram[nl + 1:nl + 9])
            out[line.decode()] = datagram[nl + 9:nl + 9 + n].decode()
            pos = nl + 9 + n + 1
    return out


def test_records_reach_the_journal_socket_with_their_fields(tmp_path):
    path = str(tmp_path / "journal.socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    handler = JournalHandler("vigil-agent", {"VIGIL_NODE": "n1", "VIGIL_CLUSTER": "c"}, path)
    log = logging.getLogger("vigil.test.journal")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("fencing n2 failed:\nlevel 1 did not answer", extra={"vigil_event": "fencing_failed"})
        f = parse(server.recv(65536))
        assert f["MESSAGE"] == "fencing n2 failed:\nlevel 1 did not answer", "the binary-safe form keeps the newline"
        assert (f["PRIORITY"], f["SYSLOG_IDENTIFIER"], f["VIGIL_NODE"], f["VIGIL_CLUSTER"]) == \
            ("4", "vigil-agent", "n1", "c")
        assert f["VIGIL_EVENT"] == "fencing_failed" and f["LOGGER"] == "vigil.test.journal"
        assert f["CODE_FUNC"] == "test_records_reach_the_journal_socket_with_their_fields"
        log.error("plain")
        assert parse(server.recv(65536))["PRIORITY"] == "3" and "VIGIL_EVENT" not in parse(b"MESSAGE=x\n")
    finally:
        log.removeHandler(handler)
        handler.close()
        server.close()


def test_without_the_socket_a_record_goes_to_stderr(tmp_path, capsys):
    handler = JournalHandler("vigil-agent", {}, str(tmp_path / "gone.socket"))
    handler.fallback = logging.StreamHandler(sys.stderr)
    handler.emit(logging.LogRecord("vigil", logging.WARNING, __file__, 1, "journald is away", None, None))
    handler.close()
    assert "journald is away" in capsys.readouterr().err


def test_only_the_journal_stream_systemd_names_counts(monkeypatch, tmp_path):
    with open(tmp_path / "err", "w") as err:
        monkeypatch.setattr(sys, "stderr", err)
        st = os.fstat(err.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not under_journald()
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not under_journald()
