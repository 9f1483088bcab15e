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

    # The drain budget's places (vigil.store.drain_places): one claim per node
    # taking a place, and the key every claim moves, so that two claims made on
    # the same reading cannot both succeed. `drain-epoch` sorts just before
    # `drain/`: one range read returns both.
    @property
    def drain_claims(self) -> str:
        return self.prefix + "drain/"

    def drain_claim(self, node: str) -> str:
        return self.drain_claims + node

    @property
    def drain_epoch(self) -> str:
        return self.prefix + "drain-epoch"

    @property
    def payloads(self) -> str:
        return self.prefix + "payloads/"

    def payload(self, payload_id: str) -> str:
        return self.payloads + payload_id

    # Batch jobs live beside the cluster's prefix, not under it: every agent and
    # router watches that one, and a job's inputs and results are bulk.
    @property
    def jobs(self) -> str:
        return f"{self.root}-jobs/{self.cluster}/"

    @property
    def job_specs(self) -> str:
        return self.jobs + "spec/"

    def job_spec(self, job_id: str) -> str:
        return self.job_specs + job_id

    def job_progresses(self, job_id: str = "") -> str:
        """Every job's shard checkpoints, or (with `job_id`) one job's."""
        return f"{self.jobs}progress/{job_id}/" if job_id else self.jobs + "progress/"

    def job_progress(self, job_id: str, shard: int) -> str:
        return f"{self.job_progresses(job_id)}{shard:03d}"

    def job_inputs(self, job_id: str) -> str:
        return f"{self.jobs}input/{job_id}/"

    def job_input(self, job_id: str, chunk: int) -> str:
        return f"{self.job_inputs(job_id)}{chunk:06d}"

    # Idempotency-Key markers (vigil.store.idem) live beside the cluster's prefix
    # too: they carry kept answers, and routers write them (a router's etcd role
    # reads the cluster, never changes it).
    @property
    def idempotency(self) -> str:
        return f"{self.root}-idem/{self.cluster}/"

    def idem_marker(self, digest: str) -> str:
        return self.idempotency + digest

    def job_results(self, job_id: str) -> str:
        return f"{self.jobs}result/{job_id}/"

    def job_result(self, job_id: str, chunk: int) -> str:
        return f"{self.job_results(job_id)}{chunk:06d}"

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
