"""Heartbeat wire format and UDP transport."""
