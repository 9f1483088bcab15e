"""XID errors from the kernel log: the NVIDIA driver writes
`NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.`
to the kernel ring buffer, which `/dev/kmsg` serves one record per read
(`PRIORITY,SEQ,USEC,FLAGS;MESSAGE`). NVML's event API reports only critical
XIDs of GPUs it can still talk to; the log also has the rest, and those of a
GPU that is gone.

`KmsgXids(path).read(now)` returns the XID lines logged since the last read
(the first read starts at the end of the log: history is not news). `path`
may also be a plain file of kernel lines that something appends to (a
container's mirrored log, a lab node's own): a line is read once it is whole,
and a file rotated or truncated under it is followed from its new start. It never
raises: an unreadable log is `available=False` with the reason (gVisor and
unprivileged containers have no /dev/kmsg).
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import re
from dataclasses import dataclass

from vigil.probes.base import Reading

XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9A-Fa-f:.]+)\): (?P<xid>\d+)(?:, (?P<detail>.*))?$")


@dataclass(frozen=True)
class XidEvent:
    pci: str  # the GPU's PCI address as the driver names it (0000:3b:00)
    xid: int
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"pci": self.pci, "xid": self.xid, "detail": self.detail}


def parse_xid(record: str) -> XidEvent | None:
    """One kernel-log record (with or without the /dev/kmsg prefix) -> its XID, if it is one."""
    message = record.split(";", 1)[1] if ";" in record.split(" ", 1)[0] else record
    m = XID_LINE.search(message.strip())
    if not m:
        return None
    return XidEvent(m["pci"].lower(), int(m["xid"]), (m["detail"] or "").strip())


class KmsgXids:
    name = "xid"

    def __init__(self, path: str = "/dev/kmsg", max_per_read: int = 10_000):
        self.path, self.max_per_read = path, max_per_read
        self._fd: int | None = None
        self._problem = ""
        self._partial = ""  # a plain file's last line, not yet ended (/dev/kmsg reads whole records)
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._reopen_at_start = False  # the file was rotated: what the new one holds is news

    def _open(self, at_end: bool = True) -> str:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            if at_end:
                os.lseek(self._fd, 0, os.SEEK_END)  # only what is logged from now on
        except OSError as e:
            self._fd = None
            return f"cannot read the kernel log {self.path}: {e.strerror} (XIDs from NVML events only)"
        self._partial, self._decode = "", codecs.getincrementaldecoder("utf-8")("replace").decode
        return ""

    def _rotated(self) -> bool:
        """A plain file replaced (another file under the name: rotated) or cut short
        (copytruncate) since we opened it: what it holds now is new, from its start."""
        assert self._fd is not None
        try:
            mine = os.fstat(self._fd)
            if not stat.S_ISREG(mine.st_mode):
                return False  # /dev/kmsg
            now = os.stat(self.path)
            return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or \
                mine.st_size < os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError:
            return False  # gone for now: read what the open file still gives

    def read(self, now: float) -> Reading:
        events = []
        if self._fd is not None and self._rotated():
            events = [e.to_json() for e in self._records() if e is not None]  # the old file's last lines
            self.close()
            self._reopen_at_start = True
        if self._fd is None:
            problem = self._open(at_end=not self._reopen_at_start)
            if problem:
                return Reading(self.name, now, False, problem=problem)
            self._reopen_at_start = False
        events += [e.to_json() for e in self._records() if e is not None]
        return Reading(self.name, now, True, {"xids": events}, problem=self._problem)

    def _records(self):
        assert self._fd is not None
        for _ in range(self.max_per_read):
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: records were lost
                    self._problem = "kernel log records were overwritten before they were read"
                    continue
                self._problem = f"kernel log read failed: {e.strerror}"
                return
            if not chunk:
                return
            text = self._partial + self._decode(chunk)  # a character split between reads stays whole
            whole, _, self._partial = text.rpartition("\n")
            self._partial = self._partial[-4096:]  # one line's worth: a file without newlines stays bounded
            for line in whole.splitlines():
                yield parse_xid(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
