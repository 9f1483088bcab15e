"""Reading an engine's progress report (vigil.probes.engine): the reference
server's JSON and vLLM's Prometheus text; garbage is a ProbeError, never a crash."""

import pytest
from hypothesis import given, settings, strategies as st

from vigil.core.engine import LoadReading
from vigil.errors import ProbeError
from vigil.probes.engine import parse_vigil, parse_vllm

VLLM = b"""# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 7.0
vllm:num_requests_waiting{model_name="m"} 12.0
vllm:request_success_total{finished_reason="stop",model_name="m"} 100.0
vllm:request_success_total{finished_reason="length",model_name="m"} 5.0
vllm:generation_tokens_total{model_name="m"} 4321.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
"""


def test_vigil_report():
    assert parse_vigil(b'{"pending": 3, "completed": 41, "running": 1}') == LoadReading(3, 41)


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'{"pending": 1}', b'{"pending": -1, "completed": 0}',
                                  b'{"pending": "3", "completed": 0}', b'{"pending": true, "completed": 0}'])
def test_vigil_report_garbage_is_a_probe_error(body):
    with pytest.raises(ProbeError) as e:
        parse_vigil(body)
    assert e.value.kind == "bad"


def test_vllm_metrics_sum_pending_and_progress():
    assert parse_vllm(VLLM) == LoadReading(19, 105 + 4321)


def test_vllm_without_queue_gauges_is_unsupported():
    with pytest.raises(ProbeError) as e:
        parse_vllm(b"process_cpu_seconds_total 3.0\n")
    assert e.value.kind == "unsupported"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_reading_or_a_probe_error(body):
    for parse in (parse_vigil, parse_vllm):
        try:
            r = parse(body)
        except ProbeError:
            continue
        assert r.pending >= 0 and r.completed >= 0
