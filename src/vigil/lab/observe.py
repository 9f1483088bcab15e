"""Reading a lab's state: readiness, each agent's API, the leader key, the
event log, `vigil status`. On a secure lab (vigil.lab.secure) the harness
speaks TLS with its own certificate, etcd user and API token.

A mixin of vigil.lab.Lab: it reads `root`, `cluster`, `etcd`, `nodes`,
`router` and `node()` from the lab.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

from vigil import procs
from vigil.cluster_status import ApiAccess, gather_status
from vigil.lab import secure as secure_lab
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys


# Members up to which the harness polls every agent's status back to back (a pass is
# milliseconds); above it a pass is one status per agent per second at most, since
# 60 agents answering a status every 20 ms cost a core of the 2 they share.
SMALL = 16


class LabObservation:
    # -- observation -------------------------------------------------------------
    def ready(self) -> bool:
        """A leader exists and every agent answers, holds its etcd session (its
        member record is registered) and sees every peer alive."""
        if self.leader() is None:
            return False
        # Above a small lab the agents share 2 cores with etcd: a status may take longer
        # than half a second to come back without anything being wrong.
        timeout = 0.5 if len(self.nodes) <= SMALL else 2.0
        for node in self.nodes:
            st = self.agent_status(node.name, timeout)
            if not st or any(p["state"] != "alive" for p in st["peers"].values()):
                return False
            if not (st.get("session") or {}).get("ok"):
                return False
            if node.server_url and not (st.get("inference") or {}).get("ready"):
                return False
        if self.router:
            rs = _get_json(self.router.admin_url + "/_vigil/status", 0.5, self._api())
            if not rs or sum(b["eligible"] for b in rs["backends"].values()) < len(
                    [n for n in self.nodes if n.server_url]):
                return False
        return True

    def agent_status(self, name: str, timeout: float = 0.5) -> dict[str, Any] | None:
        return _get_json(self.node(name).api_url + "/status", timeout, self._api())

    def is_leader(self, name: str, timeout: float = 0.5) -> bool | None:
        """The node's own /leader answer: True (200), False (503), None (no answer)."""
        try:
            with urllib.request.urlopen(self.node(name).api_url + "/leader", timeout=timeout,
                                        context=self._api()[0]):
                return True
        except urllib.error.HTTPError:
            return False
        except OSError:
            return None

    def leader(self) -> tuple[str, int] | None:
        """(name, token) of the leader key in etcd, or None."""
        return self.read_key(Keys(self.cluster).leader)

    def read_key(self, key: str) -> tuple[str, int] | None:
        """(value, create revision) of one etcd key from the first member that
        answers, or None (absent, or no member answered)."""
        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        eps = self.etcd.endpoints
        # The member that answered last is asked first: one cut off by a partition
        # would cost every later read its full timeout.
        for ep in sorted(eps, key=lambda e: e != self._answered):
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{ep}/v3/kv/range", data=body,
                                                                   headers=self._token(ep)),
                                            timeout=0.5, context=self.etcd.context()) as r:
                    kvs = json.load(r).get("kvs") or []
            except (OSError, ValueError):
                self._tokens.pop(ep, None)  # an expired token is fetched anew next time
                continue
            self._answered = ep
            if not kvs:
                return None
            return base64.b64decode(kvs[0]["value"]).decode(), int(kvs[0]["create_revision"])
        return None

    def _api(self) -> tuple[Any, dict[str, str]]:
        """TLS context and headers for the agents' and router's APIs (none on a plain lab)."""
        return secure_lab.api_access(self.root) if self.etcd.tls else (None, {})

    def _token(self, ep: str) -> dict[str, str]:
        if self.etcd.tls and ep not in self._tokens:
            self._tokens[ep] = secure_lab.harness_token(self.etcd, ep)
        return self._tokens.get(ep, {})

    def wait_for(self, cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
        if cond == self.ready and len(self.nodes) > SMALL:
            poll = max(poll, 1.0)  # a pass reads every agent's status (SMALL)
        return procs.wait_for(cond, timeout, what, poll)

    def events(self) -> list[dict[str, Any]]:
        """The whole event log, oldest first."""
        from vigil.store.events import read_events
        return self.with_store(lambda store: read_events(store, Keys(self.cluster)))

    def wait_events(self, match: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str) -> list[dict[str, Any]]:
        """The events `match` accepts, once there is at least one. An agent writes its
        events to etcd in batches after it acts, so an event can trail the state a test
        waited for by a batch: wait for it, never read it once."""
        def found() -> list[dict[str, Any]]:
            return [e for e in self.events() if match(e)]
        events: list[dict[str, Any]] = self.wait_for(found, timeout, what, poll=0.2)
        return events

    def status(self) -> dict[str, Any]:
        """What `vigil status --json` prints for this lab."""
        tls = self.root / "tls"
        access = ApiAccess(str(tls / "ca.pem"), (tls / "harness.api-token").read_text().strip()) \
            if self.etcd.tls else None
        return self.with_store(lambda store: gather_status(store, Keys(self.cluster), access))

    def with_store(self, fn: Callable[[EtcdStore], Awaitable[Any]]) -> Any:
        """Run `fn(store)` on a fresh store client for this lab's etcd; its result."""
        async def go() -> Any:
            t = self.etcd.tls
            store = (EtcdStore(self.etcd.endpoints, 2.0, t.ca, t.client_cert, t.client_key, t.user, t.password)
                     if t else EtcdStore(self.etcd.endpoints, 2.0))
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())

    def history_files(self) -> list[Path]:
        return [Path(n.data_dir) / "leadership.jsonl" for n in self.nodes]


def _get_json(url: str, timeout: float, access: tuple[Any, dict[str, str]] = (None, {})) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=access[1]), timeout=timeout,
                                    context=access[0]) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None
