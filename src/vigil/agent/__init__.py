"""The per-node daemon: wires probes, heartbeats, the store and the API."""

from vigil.agent.daemon import Agent

__all__ = ["Agent"]
