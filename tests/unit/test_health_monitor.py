"""The agent's health monitor over the real GPU probe on a fake NVML (the
real pynvml names and exception classes): verdicts, events, the fingerprint
with declared values, the compatibility gate, application XIDs restarting
the inference server, and a probe that raises."""

from __future__ import annotations

from vigil.agent.health import HealthMonitor
from vigil.probes.base import Reading
from vigil.probes.config import parse_health
from vigil.probes.gpu import GpuProbe
from vigil.testing.clock import FakeClock
from vigil.testing.fake_nvml import FakeGpu, FakeNvml


class Events:
    def __init__(self):
        self.seen: list[tuple[str, str, dict]] = []

    def __call__(self, kind, cause, **details):
        self.seen.append((kind, cause, details))

    def kinds(self):
        return [k for k, _, _ in self.seen]


def monitor(nvml, cfg=None, restart=None):
    events, changes = Events(), []
    m = HealthMonitor(parse_health(cfg), FakeClock(), events, lambda: changes.append(1),
                      probes=[GpuProbe(nvml)], restart_server=restart)
    return m, events, changes


async def test_verdicts_follow_the_gpu_and_every_change_is_an_event():
    nvml = FakeNvml([FakeGpu()])
    m, events, changes = monitor(nvml)
    await m.round()
    assert m.verdict.state == "ready" and events.seen == [] and changes == []
    assert m.fingerprint["gpu_model"] == "NVIDIA H100 80GB HBM3" and m.fingerprint["cuda_driver"] == "12.8"
    nvml.gpus[0].remapped = (0, 1, 1, 0)
    await m.round()
    assert m.verdict.state == "draining" and changes == [1]
    kind, cause, details = events.seen[-1]
    assert kind == "health_verdict" and "row remapping pending" in cause and details["previous"] == "ready"
    await m.round()
    assert changes == [1], "an unchanged verdict is not news"
    nvml.gpus[0].lost = True
    await m.round()
    assert m.verdict.state == "failed" and "is lost" in m.verdict.reasons[0]
    assert m.describe()["probes"]["gpu"].startswith("GPU(s) [0] lost")


async def test_a_node_without_nvml_is_ready_and_says_it_has_no_gpu():
    m, events, _ = monitor(FakeNvml(library=False))
    await m.round()
    assert m.verdict.state == "ready"
    assert m.fingerprint["gpu"].startswith("no GPU: NVML library not found")
    assert m.describe()["probes"]["gpu"].startswith("unavailable: no GPU")


async def test_the_compatibility_gate_drains_a_node_that_cannot_run_the_workload():
    cfg = {"requires": {"cuda_driver": ">=12.9", "gpu_memory_mib": ">=40000"},
           "declare": {"model_digest": "sha256:abc"}}
    m, _, _ = monitor(FakeNvml([FakeGpu()]), cfg)
    await m.round()
    assert m.verdict.state == "draining"
    assert m.verdict.reasons == ("incompatible with the workload: cuda_driver: 12.8, required >=12.9",)
    assert m.fingerprint["model_digest"] == "sha256:abc" and m.fingerprint["declared"] == ["model_digest"]


async def test_an_application_xid_restarts_the_server_once_and_keeps_the_node_ready():
    restarts = []

    async def restart(why):
        restarts.append(why)

    nvml = FakeNvml([FakeGpu()])
    m, events, _ = monitor(nvml, restart=restart)
    await m.round()
    nvml.xids.append((0, 13))
    await m.round()
    await m.round()
    assert m.verdict.state == "ready" and len(restarts) == 1 and "XID 13" in restarts[0]
    assert events.kinds().count("health_action") == 1


async def test_a_probe_that_raises_keeps_the_last_verdict_and_is_reported_once():
    class Broken:
        name = "broken"

        def read(self, now):
            raise RuntimeError("driver wedged")

    class Fine:
        name = "gpu"

        def read(self, now):
            return Reading("gpu", now, False, problem="no GPU: NVML library not found")

    events = Events()
    m = HealthMonitor(parse_health(None), FakeClock(), events, lambda: None, probes=[Fine(), Broken()])
    await m.round()
    await m.round()
    assert m.verdict.state == "ready"
    assert events.kinds() == ["health_round_failed"] and "driver wedged" in events.seen[0][1]
