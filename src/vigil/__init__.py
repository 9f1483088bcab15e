"""Vigil: redundancy and failover for AI inference nodes."""

__version__ = "0.1.0"
