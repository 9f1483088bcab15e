"""TokenGuard: reject commands carrying a fencing token lower than the highest
seen.

Contract:
- `admit(token)` accepts a token >= the highest seen so far (the current
  leader keeps writing with its token) and raises StaleToken for a lower one.
- With a `state_file`, a higher token is written to disk (a fresh
  unpredictable temp file, fsync, atomic rename, fsync of the directory)
  *before* it is admitted, so a guard restarted after a crash still
  refuses every token it refused before. A corrupt state file is an error,
  never a silent reset to zero.
- Thread-safe: a lock orders concurrent admits.
"""

from __future__ import annotations

import threading
from pathlib import Path

from vigil.errors import VigilError
from vigil.files import write_atomic

TOKEN_HEADER = "X-Vigil-Fencing-Token"  # the HTTP header a command carries its leader's token in


class StaleToken(VigilError):
    def __init__(self, token: int, highest: int):
        self.token, self.highest = token, highest
        super().__init__(f"fencing token {token} is stale: a leader with token {highest} has "
                         "already acted; this command comes from a deposed leader")


class TokenGuard:
    def __init__(self, state_file: Path | None = None):
        self.state_file = state_file
        self._lock = threading.Lock()
        self.highest = self._load()
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<TokenGuard highest={self.highest} rejected={self.rejected}>"

    def admit(self, token: int) -> None:
        if isinstance(token, bool) or not isinstance(token, int) or token < 1:
            raise VigilError(f"fencing token {token!r} is invalid: it must be a positive integer")
        with self._lock:
            if token < self.highest:
                self.rejected += 1
                raise StaleToken(token, self.highest)
            if token > self.highest:
                self._store(token)
                self.highest = token

    def _load(self) -> int:
        if self.state_file is None or not self.state_file.exists():
            return 0
        text = self.state_file.read_text().strip()
        try:
            return int(text)
        except ValueError:
            raise VigilError(f"fencing state {self.state_file} is corrupt ({text[:40]!r}); restore it "
                             "or write the current leader's token into it by hand") from None

    def _store(self, token: int) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, str(token), 0o600)
