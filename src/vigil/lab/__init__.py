"""A local cluster on loopback (etcd members, agents) for the demo, tests and
benchmarks, with fault injection by PID."""

from vigil.lab.cluster import Lab

__all__ = ["Lab"]
