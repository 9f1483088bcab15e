"""`vigil haproxy config`: one server per member with an inference server,
checked against its agent's /ready (and /leader for the singleton backend)."""

from vigil.core.routing import RoutingTable
from vigil.router.haproxy import desired, render
from vigil.store.member_record import MemberRecord


def test_render_names_servers_as_nodes_and_checks_the_agents():
    members = {"n1": MemberRecord("n1", "http://10.0.0.1:8008", inference={"url": "http://10.0.0.1:8000"}),
               "n2": MemberRecord("n2", "https://10.0.0.2:8008", inference={"url": "http://10.0.0.2:8000"}),
               "n3": MemberRecord("n3", "http://10.0.0.3:8008", inference=None)}
    cfg = render("prod", members, "/run/haproxy/vigil.sock", "0.0.0.0:8080")
    assert "stats socket /run/haproxy/vigil.sock mode 600 level admin" in cfg
    assert "server n1 10.0.0.1:8000 check port 8008 inter 2s fall 3 rise 2\n" in cfg
    assert "server n2 10.0.0.2:8000 check port 8008 inter 2s fall 3 rise 2 check-ssl verify none" in cfg
    assert "server n3" not in cfg, "no inference server, no server line"
    assert "option httpchk GET /ready" in cfg and "option httpchk GET /leader" in cfg


def test_desired_states_follow_eligibility():
    t = RoutingTable()
    t.member("n1", "http://x:1")
    t.ready("n1", True)
    t.heard("n1", True)
    assert desired(t, "n1", 0.0) == "ready"
    t.heard("n1", False)
    assert desired(t, "n1", 0.0) == "maint", "suspected by Vigil's detector"
    t.heard("n1", True)
    t.state("n1", "draining")
    assert desired(t, "n1", 0.0) == "drain"
