"""The router with real model servers, real agents and real faults."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from vigil.lab.generative import served_model_ids
from vigil.lab.load import LoadGenerator


def post(url, body, headers=None, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if not isinstance(body, bytes) else body,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


def router_status(lab):
    with urllib.request.urlopen(lab.router.admin_url + "/_vigil/status", timeout=5) as r:
        return json.load(r)


def served(lab):
    total = 0
    for n in lab.nodes:
        with urllib.request.urlopen(n.server_url + "/health", timeout=5) as r:
            total += json.load(r)["served"]
    return total


def after(lab, gen, n):
    """Block the fault thread until the load has produced `n` answers (no sleeps)."""
    lab.wait_for(lambda: len(gen.samples) >= n, 60, f"{n} answered requests")


def run_load(lab, seconds, during, rate=40.0):
    """Drive load for `seconds` while `during(gen)` injects faults in a thread."""
    gen = LoadGenerator(lab.router.url + "/v1/embeddings", rate=rate)
    t = threading.Thread(target=during, args=(gen,))
    t.start()
    try:
        samples = asyncio.run(gen.run(seconds))
    finally:
        t.join()
    return samples


def restore(lab):
    lab.wait_for(lab.ready, 120, "every node ready again")


def test_openai_client_gets_embeddings(model_lab):
    import openai

    client = openai.OpenAI(base_url=model_lab.router.url + "/v1", api_key="unused")
    resp = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello world", "failover"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 384
    assert resp.model == "all-MiniLM-L6-v2" and resp.usage.total_tokens > 0
    models = client.models.list()  # the lab's servers generate too (vigil.lab.generative)
    assert [m.id for m in models.data] == served_model_ids(model_lab.workload.generate)
    assert len(models.data) == 2, "a lab serves both models by default"


def test_bad_request_gets_4xx_and_is_not_retried(model_lab):
    status, headers, body = post(model_lab.router.url + "/v1/embeddings", {"input": []})
    assert status == 400 and body["error"]["param"] == "input"
    assert headers["X-Vigil-Attempts"] == "1"
    status, _, body = post(model_lab.router.url + "/v1/embeddings", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]


def test_idempotency_key_executes_once(model_lab):
    url = model_lab.router.url + "/v1/embeddings"
    before = served(model_lab)
    s1, h1, b1 = post(url, {"input": "pay once"}, {"Idempotency-Key": "order-42"})
    s2, h2, b2 = post(url, {"input": "pay once"}, {"Idempotency-Key": "order-42"})
    assert s1 == s2 == 200 and b1 == b2
    assert h2.get("X-Vigil-Idempotent-Replay") == "true"
    assert served(model_lab) == before + 1, "the backend executed it exactly once"


def test_sigkill_of_a_node_during_load_fails_no_request(model_lab):
    victim = "n2"
    first_seen = []

    def fault(gen):
        after(model_lab, gen, 80)
        model_lab.kill_node(victim)
        first_seen.append(model_lab.wait_for(
            lambda: (lambda b: b if not b["eligible"] else None)(router_status(model_lab)["backends"][victim]),
            10, "the router to drop the dead node"))
    try:
        samples = run_load(model_lab, 8, fault)
        failed = [s for s in samples if s.status != 200]
        assert len(samples) > 200 and failed == []
        # The router dropped it on its own evidence (heartbeats lost or a refused attempt),
        # while etcd still listed it as ready.
        assert first_seen[0]["ready"] is True, first_seen
        assert not first_seen[0]["alive"] or first_seen[0]["why_not"].startswith("inhibited"), first_seen
        late = [s for s in samples if s.start > samples[0].start + 4]
        assert late and all(s.node != victim for s in late), "the dead node gets no traffic"
    finally:
        model_lab.start_agent(victim)
        restore(model_lab)


def test_hung_model_server_is_routed_around_and_marked_not_ready(model_lab):
    victim = "n3"
    marked = []

    def fault(gen):
        after(model_lab, gen, 80)
        model_lab.signal_server(victim, signal.SIGSTOP)
        try:
            marked.append(model_lab.wait_for(
                lambda: (model_lab.agent_status(victim) or {}).get("inference", {}).get("ready") is False,
                15, "the agent to mark its hung server not ready"))
            after(model_lab, gen, len(gen.samples) + 100)
        finally:
            model_lab.signal_server(victim, signal.SIGCONT)
    samples = run_load(model_lab, 10, fault)
    assert [s for s in samples if s.status != 200] == []
    assert max(s.latency for s in samples) < 3.0 + 1.0, "no request hangs past the per-try timeout"
    assert marked
    reason = model_lab.agent_status(victim)["inference"]
    restore(model_lab)
    assert reason is not None


def test_server_answering_503_is_retried_elsewhere(model_lab):
    node = model_lab.node("n1")
    post(node.server_url + "/_vigil/faults", {"fail_status": 503})
    try:
        samples = run_load(model_lab, 4, lambda gen: None)
        assert [s for s in samples if s.status != 200] == []
        assert any(s.attempts > 1 for s in samples) or all(s.node != "n1" for s in samples)
    finally:
        post(node.server_url + "/_vigil/faults", {"fail_status": 0})
    restore(model_lab)


def test_slow_but_healthy_node_is_not_ejected(model_lab):
    node = model_lab.node("n1")
    failures_before = router_status(model_lab)["backends"]["n1"]["failures"]
    post(node.server_url + "/_vigil/faults", {"slowdown": 20})
    try:
        samples = run_load(model_lab, 6, lambda gen: None, rate=20)
        st = router_status(model_lab)
    finally:
        post(node.server_url + "/_vigil/faults", {"slowdown": 1})
    assert [s for s in samples if s.status != 200] == []
    assert any(s.node == "n1" for s in samples), "the slow node still serves"
    assert st["backends"]["n1"]["eligible"] and st["backends"]["n1"]["failures"] == failures_before


def test_agent_restarts_a_dead_model_server(model_lab):
    old = model_lab.server_pid("n2")
    model_lab.signal_server("n2", signal.SIGKILL)
    model_lab.wait_for(lambda: (model_lab.server_pid("n2") or old) != old, 30, "a new server process")
    restore(model_lab)
    model_lab.wait_events(lambda e: e["node"] == "n2" and e["kind"] == "inference_exited"
                          and "status -9" in e["cause"], 10, "n2's inference_exited event, status -9")


def test_etcd_down_requests_still_succeed(model_lab):
    for m in model_lab.etcd.members:
        model_lab.etcd.kill(m.name)
    try:
        samples = run_load(model_lab, 4, lambda gen: None)
        assert len(samples) > 100 and [s for s in samples if s.status != 200] == []
        assert router_status(model_lab)["etcd_ok"] is False
    finally:
        model_lab.etcd.start()
        model_lab.etcd.wait_healthy(30)
    restore(model_lab)


def test_all_nodes_down_gives_fast_503(model_lab):
    for n in model_lab.nodes:
        model_lab.signal_server(n.name, signal.SIGSTOP)
        model_lab.signal_agent(n.name, signal.SIGSTOP)
    try:
        model_lab.wait_for(lambda: not any(b["eligible"] for b in router_status(model_lab)["backends"].values()),
                           10, "the router to see every node gone")
        t0 = time.monotonic()
        status, _, body = post(model_lab.router.url + "/v1/embeddings", {"input": "anyone?"})
        elapsed = time.monotonic() - t0
    finally:
        for n in model_lab.nodes:
            model_lab.signal_agent(n.name, signal.SIGCONT)
            model_lab.signal_server(n.name, signal.SIGCONT)
    assert status == 503 and "no ready inference node" in body["error"]["message"]
    assert elapsed < 1.0
    restore(model_lab)


@pytest.mark.parametrize("path", ["/metrics"])
def test_router_metrics(model_lab, path):
    with urllib.request.urlopen(model_lab.router.admin_url + path, timeout=5) as r:
        text = r.read().decode()
    assert "vigil_router_requests_total" in text and "vigil_router_request_seconds_bucket" in text
    with pytest.raises(urllib.error.HTTPError) as e:  # issue 9 #6: never on the public listener
        urllib.request.urlopen(model_lab.router.url + "/_vigil/status", timeout=5)
    assert e.value.code == 404 and b"admin listener" in e.value.read()
