"""The one exception hierarchy of Vigil.

Foreign exceptions (aiohttp, OSError, yaml) are translated into these where
they enter: in the store adapters, the transport and the config loader.
"""


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""


SECRET_WORDS = ("pass", "secret", "token", "key")


class ConfigError(VigilError):
    """A configuration value is missing, malformed or inconsistent.

    The message names the field, the value and the fix.
    """

    def __init__(self, field: str, value: object, fix: str, secret: bool | None = None):
        # Never echo a secret: a field named like one (a path to it is fine), or one the
        # caller says may hold one (an unknown field: a misspelled `pasword:`).
        leaf = field.rsplit(".", 1)[-1].split("[")[0].lower()
        if secret is None:
            secret = any(w in leaf for w in SECRET_WORDS) and not leaf.endswith("_file")
        self.field, self.value, self.fix = field, ("<hidden>" if secret else value), fix
        if value is None:  # nothing was given: there is no value to call invalid
            super().__init__(f"{field}: missing: {fix}")
        else:
            super().__init__(f"{field}: {'<hidden>' if secret else repr(value)} is invalid: {fix}")


class StoreError(VigilError):
    """The cluster store (etcd) failed a request."""


class StoreUnavailable(StoreError):
    """No store endpoint answered within the request deadline.

    The request may or may not have been applied: callers that write must
    re-read before assuming either outcome.
    """


class LeaseNotFound(StoreError):
    """The lease expired or was revoked; everything bound to it is gone."""


class WatchCompacted(StoreError):
    """A watch asked for a revision the store has already compacted away."""

    def __init__(self, compact_revision: int):
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted (compact revision {compact_revision})")


class WireError(VigilError):
    """A heartbeat packet was rejected; `reason` is the counter it lands in."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProbeError(VigilError):
    """A probe got no usable reading; `kind` says which: silent (no answer in
    time), refused (nothing listens), unsupported (the engine has no such
    report), bad (an answer that is not a reading)."""

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(f"{kind}: {detail}")


class FencingFailed(VigilError):
    """A node could not be confirmed powered off."""
