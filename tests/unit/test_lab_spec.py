"""The lab as one value (vigil.lab.spec) and its plan (vigil.lab.plan): an
option or workload field that does not exist is an error naming the ones
that do; sizes out of range name the limit; the plan gives every process its
own port and the URLs the spec asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.errors import ConfigError
from vigil.lab.plan import plan
from vigil.lab.spec import LabSpec, Workload


def test_keywords_make_a_spec_and_a_workload_dict_becomes_a_workload():
    spec = LabSpec.of(5, model=True, workload={"rack_size": 2, "realtime": None, "generate": "none"})
    assert spec.nodes == 5 and spec.model and not spec.router
    assert spec.workload == Workload(rack_size=2, generate="none")


@pytest.mark.parametrize("options, named", [({"modle": True}, "modle"),
                                            ({"workload": {"rack": 3}}, "rack")])
def test_a_field_that_does_not_exist_is_named_with_the_ones_that_do(options, named):
    with pytest.raises(ConfigError) as e:
        LabSpec.of(3, **options)
    assert named in str(e.value) and ("rack_size" in str(e.value) or "model" in str(e.value))


@pytest.mark.parametrize("nodes, net", [(0, None), (101, None), (2, object()), (33, object())])
def test_sizes_out_of_range_name_the_limits(nodes, net):
    with pytest.raises(ConfigError, match="1 to 100 nodes"):
        LabSpec(nodes, net=net).check()


def test_the_plan_gives_each_process_its_own_port(tmp_path: Path):
    p = plan(tmp_path, LabSpec.of(4, model=True, router=True, secure=True))
    ports = [n.heartbeat_port for n in p.nodes] + [int(n.api_url.rsplit(":", 1)[1]) for n in p.nodes] \
        + [int(n.server_url.rsplit(":", 1)[1]) for n in p.nodes if n.server_url] + [p.sensors_port, *p.front_ports]
    assert len(set(ports)) == len(ports) == 4 * 3 + 4
    assert all(n.api_url.startswith("https://127.0.0.1:") for n in p.nodes)
    assert p.router is not None and p.router.admin_url.startswith("https://") and p.hosts is None
    assert plan(tmp_path, LabSpec.of(3)).router is None and all(n.server_url is None for n in plan(
        tmp_path, LabSpec.of(3)).nodes)
