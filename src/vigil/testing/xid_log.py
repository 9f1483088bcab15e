"""A kernel log that keeps showing one XID (what vigil.probes.xid reads from
/dev/kmsg on a node whose GPU reports it): a storm of XIDs without a GPU."""

from __future__ import annotations

from vigil.probes.base import Reading


class XidLog:
    source = "xid"

    def __init__(self, xid: int = 48, gpu: str = "0"):
        self.xid, self.gpu = xid, gpu

    def read(self, now: float) -> Reading:
        return Reading(self.source, now, True, values={"xids": [{"xid": self.xid, "gpu": self.gpu}]})
