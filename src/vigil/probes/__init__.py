"""Probes: adapters that read a signal (the engine's load, later GPUs, thermals
and sensors) and return a typed reading for a pure verdict in core/."""
