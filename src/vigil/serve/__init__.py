"""The reference inference server: a real embedding model behind an
OpenAI-compatible API, with liveness and deep readiness."""
