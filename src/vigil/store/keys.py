"""The etcd key layout (DESIGN.md), in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    cluster: str
    root: str = "/vigil"

    @property
    def prefix(self) -> str:
        return f"{self.root}/{self.cluster}/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def switchover(self) -> str:
        return self.prefix + "switchover"

    @property
    def config(self) -> str:
        return self.prefix + "config"

    @property
    def members(self) -> str:
        return self.prefix + "members/"

    @property
    def states(self) -> str:
        return self.prefix + "state/"

    @property
    def events(self) -> str:
        return self.prefix + "events/"

    @property
    def fencing(self) -> str:
        return self.prefix + "fencing/"

    @property
    def holds(self) -> str:
        return self.prefix + "held/"

    @property
    def payloads(self) -> str:
        return self.prefix + "payloads/"

    def payload(self, payload_id: str) -> str:
        return self.payloads + payload_id

    def hold(self, node: str) -> str:
        return self.holds + node

    def fence_marker(self, node: str) -> str:
        return self.fencing + node

    def member(self, node: str) -> str:
        return self.members + node

    def state(self, node: str) -> str:
        return self.states + node

    def event(self, event_id: str) -> str:
        return self.events + event_id
