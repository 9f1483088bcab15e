"""Logs for journald and for files. Under systemd (stderr is the journal
stream named by $JOURNAL_STREAM, as sd_journal_stream_fd(3) documents) a
process sends each record through journald's native protocol
(/run/systemd/journal/socket): the priority, SYSLOG_IDENTIFIER, the logger,
the code location and Vigil's own fields (VIGIL_NODE, VIGIL_CLUSTER, and
VIGIL_EVENT for an event's kind), so `journalctl -u vigil-agent
VIGIL_EVENT=fencing_failed -o json` finds them. Anywhere else (a terminal,
a lab's log file) lines are `time node LEVEL logger: message`, as before.

A record that cannot be sent (the socket is gone, journald is restarting
or too slow to take it now) goes to stderr as a line instead: a log line is never lost silently, nor does logging
ever raise into the agent."""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald() -> bool:
    """stderr is the journal stream systemd gave this service ($JOURNAL_STREAM = device:inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in want.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def field(name: str, value: object) -> bytes:
    """One field in journald's native format: NAME=value, or the binary-safe
    form (NAME, newline, 64-bit little-endian length, value) where the value
    has a newline."""
    data = str(value).encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    def __init__(self, identifier: str, fields: dict[str, str], path: str = JOURNAL_SOCKET):
        super().__init__()
        self.identifier, self.fields, self.path = identifier, fields, path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)  # a stalled journald must not stall the agent's loop
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(logging.Formatter(f"%(asctime)s {fields.get('VIGIL_NODE', '')} "
                                                     "%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            parts = [field("MESSAGE", message), field("PRIORITY", PRIORITY.get(record.levelno, 6)),
                     field("SYSLOG_IDENTIFIER", self.identifier), field("LOGGER", record.name),
                     field("CODE_FILE", record.pathname), field("CODE_LINE", record.lineno),
                     field("CODE_FUNC", record.funcName)]
            parts += [field(k, v) for k, v in self.fields.items()]
            event = getattr(record, "vigil_event", None)
            if event:
                parts.append(field("VIGIL_EVENT", event))
            self.sock.sendto(b"".join(parts), self.path)
        except OSError:
            self.fallback.emit(record)
        except Exception:  # noqa: BLE001 - logging never raises into the agent
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def setup(level: str, identifier: str, node: str, cluster: str = "") -> None:
    """Log at `level`: to journald with fields when run by systemd, else to stderr as lines."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if under_journald() and os.path.exists(JOURNAL_SOCKET):
        handler: logging.Handler = JournalHandler(identifier, {"VIGIL_NODE": node,
                                                               **({"VIGIL_CLUSTER": cluster} if cluster else {})})
        handler.setFormatter(logging.Formatter("%(message)s"))  # journald keeps the time and the level
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
