"""The heartbeat thread: the heartbeat sockets, the send schedule and the
role's deadline on one small thread that can run at real-time priority
(vigil.realtime; docs/architecture.md, "Real-time heartbeats").

Why: on a node whose CPU is saturated (a tokenizer, a runaway batch job,
memory reclaim) the agent's event loop runs late. Its heartbeats then leave
late and its peers suspect a healthy but busy node; packets that did arrive
wait in the socket buffer and are timed when the loop reads them, not when
they came. On this thread, ahead of every normal task, the packets leave on
time and each arriving packet is stamped the moment it arrives.

Contract:
- The network interface HeartbeatTransport uses (`network=`):
  `create_datagram_endpoint(factory, local_addr)` binds a UDP socket that the
  thread reads. Each datagram is stamped with `now()` on the thread as it
  arrives and handed, in arrival order, to
  `protocol.datagram_received_at(data, addr, at)` on the owner's event loop.
  `transport.sendto` sends at once from the calling thread (a UDP send is one
  system call; a full buffer raises BlockingIOError, an OSError the sender
  counts, as it would count a lost packet).
- `every(interval, fn)` runs `fn()` on the thread at a fixed rate (a late run
  does not push the later ones back); `call_later(delay, fn)` runs it once.
  Such callbacks run on the thread: they may only read values the loop
  replaces whole (never mutates) and send. One that raises is logged and
  counted; the thread goes on.
- `guard(deadline, on_deadline)`: the thread also wakes at `deadline()` (None:
  none) and calls `on_deadline()` once it has passed.
- `look_at(due, on_due)`: the thread also wakes at `due()` (when the loop next
  looks at its detectors, a value it replaces whole; `rearm()` when it moved
  earlier), reads every socket to its end and hands `on_due(at)` to the loop
  after the datagrams it stamped up to `at`: the loop judges as of `at`, however
  late it runs. Held back (QUEUED), it hands none: the loop's fallback looks.
  While `due` stays (the loop is behind), a look follows every LOOK_REPEAT.
- The thread verifies nothing and judges nothing: signatures and detectors run
  on the loop at normal priority, at the thread's times. At most QUEUED
  datagrams wait for the loop; beyond that the thread stops reading (the
  kernel's buffer fills and drops, as for a slow loop) until the loop has taken
  all but RESUME, so a flood costs it at most the loop's pace of recvfroms.
- The thread outlives any error of its own: one is logged and counted
  (`errors`) and the next pass comes at the next wake, not at once.
- `start()` returns once the thread runs, with what the kernel granted it
  (vigil.realtime.Applied); `stop()` ends it within one wake and closes the
  sockets.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
from typing import Any, Callable

from vigil.net.timers import Timers
from vigil.realtime import Applied, RealtimeSettings, apply

log = logging.getLogger(__name__)

BURST = 64  # datagrams read per socket per wake: the others wait one pass, in the kernel's buffer
QUEUED, RESUME = 2048, 256  # datagrams handed to the loop and not yet taken: stop reading at, resume at
MAX_NAP = 1.0  # s: the thread looks at its timers at least this often
# s: while the loop is behind, a look every this long (within the pause guard's 20 ms
# tolerance, vigil.core.peers: the looks of a late loop are on time, none is forgiven)
LOOK_REPEAT = 0.01
TICK_AFTER_ERROR = 0.01  # s: a pass that failed is not retried sooner (never a busy loop)
Arrival = tuple["PacedTransport", bytes, tuple[str, int], float]


class PacedTransport:
    """One bound UDP socket, read by the pacer's thread (asyncio's DatagramTransport subset)."""

    def __init__(self, pacer: "Pacer", sock: socket.socket, protocol: asyncio.DatagramProtocol):
        self.pacer, self.sock, self.protocol = pacer, sock, protocol
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        self.sock.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": self.sock.getsockname(), "socket": self.sock}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pacer._drop(self)


class Pacer:
    def __init__(self, now: Callable[[], float], settings: RealtimeSettings,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.now, self.settings, self.loop = now, settings, loop
        self.applied: Applied | None = None
        self.errors = 0  # callbacks that raised on the thread
        self.timers = Timers(now)
        self._lock = threading.Lock()
        self._sockets: dict[int, PacedTransport] = {}
        self._dropped: list[PacedTransport] = []
        self._added: list[int] = []  # sockets bound, not yet polled
        self._deadline: tuple[Callable[[], float | None], Callable[[], object]] | None = None
        self._look: tuple[Callable[[], float], Callable[[float], object]] | None = None
        self._looked_due: float | None = None  # the due last handed to the loop
        self._looked_at = 0.0  # when it was handed (again after LOOK_REPEAT while unchanged)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._wake_r.fileno(), select.POLLIN)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._queued = 0  # handed to the loop, not yet taken (the thread adds, the loop subtracts)
        self._reading = True
        self.held_back = 0  # passes the thread left the sockets unread: the loop was behind

    # -- the network interface ---------------------------------------------------------
    async def create_datagram_endpoint(self, factory: Callable[[], asyncio.DatagramProtocol],
                                       local_addr: tuple[str, int]) -> tuple[PacedTransport, Any]:
        sock = socket.socket(socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(local_addr)
        except OSError:
            sock.close()
            raise
        self.loop = self.loop or asyncio.get_running_loop()
        protocol = factory()
        transport = PacedTransport(self, sock, protocol)
        with self._lock:  # the thread registers it (a poll object is not shared while it polls)
            self._sockets[sock.fileno()] = transport
            self._added.append(sock.fileno())
        self._wake()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, protocol

    # -- scheduling --------------------------------------------------------------------
    def every(self, interval: float, fn: Callable[[], object]) -> None:
        self.timers.push(self.now(), interval, fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        self.timers.push(self.now() + delay, 0.0, fn)
        self._wake()

    def guard(self, deadline: Callable[[], float | None], on_deadline: Callable[[], object]) -> None:
        self._deadline = (deadline, on_deadline)
        self._wake()

    def look_at(self, due: Callable[[], float], on_due: Callable[[float], object]) -> None:
        self._look = (due, on_due)
        self._wake()

    def rearm(self) -> None:
        """The loop moved `due()`: the thread sleeps towards the new value."""
        self._wake()

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> Applied:
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name="vigil-heartbeat", daemon=True)
            self._thread.start()
            ready.wait()
        assert self.applied is not None
        return self.applied

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            for t in list(self._sockets.values()):
                t.closed = True
                t.sock.close()
            self._sockets.clear()
        if self._thread is None or not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def describe(self) -> dict[str, object]:
        """For /status: what the kernel granted, the thread's id, its worst lateness."""
        return {**(self.applied.describe() if self.applied else {}), "thread": self.native_id,
                "longest_late_ms": round(self.timers.late * 1000, 1), "errors": self.errors, "held_back": self.held_back}

    @property
    def native_id(self) -> int | None:
        """The thread's kernel id (for `chrt -p`, /proc/PID/task/TID), once started."""
        return self._thread.native_id if self._thread else None

    def _run(self, ready: threading.Event) -> None:
        try:
            self.applied = apply(self.settings)
        except Exception as e:  # noqa: BLE001 - start() must return whatever happened
            self.applied = Applied("SCHED_OTHER", 0, False, (f"real-time settings failed: {e}",))
        finally:
            ready.set()
        for problem in self.applied.problems:
            log.warning("%s", problem)
        while not self._stopping:
            try:
                self._pass()
            except Exception:  # noqa: BLE001 - heartbeats must go on; the next pass waits for a wake
                self.errors += 1
                log.exception("heartbeat thread: a pass failed")
                self._poll.poll(TICK_AFTER_ERROR * 1000)

    def _pass(self) -> None:
        self._close_dropped()
        self._poll_added()
        self._hold_back()
        timeout = self._next_wake() - self.now()
        events = self._poll.poll(max(0.0, min(timeout, MAX_NAP)) * 1000)
        at = self.now()
        arrivals: list[Arrival] = []
        for fd, _ in events:
            if fd == self._wake_r.fileno():
                self._drain_wake()
            elif self._reading:
                self._read(fd, at, arrivals, BURST)
        look = self._look_due(at)
        if look is not None and not self._read_all(at, arrivals):
            look = None  # more waits than the loop may be handed: its own fallback looks
        if arrivals and self.loop is not None:
            with self._lock:
                self._queued += len(arrivals)
            try:
                self.loop.call_soon_threadsafe(self._hand, arrivals)
            except RuntimeError:  # the loop closed under us: the agent is stopping
                self._stopping = True
                return
        if look is not None:
            self._hand_look(look, at)
        self._run_due()
        self._check_deadline()

    def _hold_back(self) -> None:
        """Stop polling the sockets while the loop is QUEUED behind; resume at RESUME."""
        with self._lock:
            queued = self._queued
        reading = queued < QUEUED if self._reading else queued <= RESUME
        if reading == self._reading:
            return
        # Out of the poll set, not polled with an empty mask: poll reports POLLERR and
        # POLLNVAL whatever the mask, and a socket that is not read would spin the thread.
        with self._lock:
            for fd in self._sockets:
                if fd not in self._added:
                    if reading:
                        self._poll.register(fd, select.POLLIN)
                    else:
                        self._poll.unregister(fd)
        self._reading = reading
        self.held_back += not reading

    def _hand(self, arrivals: list[Arrival]) -> None:
        """On the owner's loop: each datagram to its protocol, with its arrival time."""
        try:
            for t, data, addr, at in arrivals:
                if not t.closed:
                    t.protocol.datagram_received_at(data, addr, at)  # type: ignore[attr-defined]
        finally:
            with self._lock:
                self._queued -= len(arrivals)
                behind = not self._reading and self._queued <= RESUME
            if behind:
                self._wake()

    def _next_wake(self) -> float:
        first = self.timers.next_due()
        nxt = first if first is not None else self.now() + MAX_NAP
        due = self._deadline[0]() if self._deadline else None
        nxt = min(nxt, due) if due is not None else nxt
        if self._look is None or self.loop is None or not self._reading:
            return nxt  # no look can be handed now: never wake for one (a due in the past would spin)
        look = self._look[0]()
        return min(nxt, look if look != self._looked_due else self._looked_at + LOOK_REPEAT)

    def _look_due(self, at: float) -> float | None:
        """The `due` to hand the loop a look for as of `at` (this pass's poll), or None."""
        if self._look is None or self.loop is None or not self._reading:
            return None
        when = self._look[0]()
        if at < when or (when == self._looked_due and at < self._looked_at + LOOK_REPEAT):
            return None
        return when

    def _read_all(self, at: float, out: list[Arrival]) -> bool:
        """Before a look as of `at`: every socket read to its end (also those this poll
        did not report: a datagram may have come since), stamped `at`. False when more
        waits than the loop may be handed (QUEUED): the look must not judge without it."""
        with self._lock:
            room = QUEUED - self._queued
        for fd in list(self._sockets):
            if not self._read(fd, at, out, max(0, room - len(out))):
                return False
        return True

    def _hand_look(self, when: float, at: float) -> None:
        """Queue a look as of `at` on the loop, after this pass's datagrams
        (call_soon_threadsafe keeps the order)."""
        assert self._look is not None and self.loop is not None
        self._looked_due, self._looked_at = when, at
        try:
            self.loop.call_soon_threadsafe(self._look[1], at)
        except RuntimeError:  # the loop closed under us: the agent is stopping
            self._stopping = True

    def _read(self, fd: int, at: float, out: list[Arrival], most: int) -> bool:
        """Up to `most` datagrams of socket `fd`; True once it is empty (the rest wait
        in the kernel's buffer for the next pass)."""
        t = self._sockets.get(fd)
        if t is None or t.closed:
            return True
        for _ in range(most):
            try:
                data, addr = t.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # an ICMP error queued on the socket: UDP's, not ours
                continue
            out.append((t, data, addr, at))
        return False

    def _run_due(self) -> None:
        while (fn := self.timers.pop_due()) is not None:
            self._call(fn)

    def _check_deadline(self) -> None:
        if self._deadline is None:
            return
        due = self._deadline[0]()
        if due is not None and self.now() >= due:
            self._call(self._deadline[1])

    def _call(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the heartbeat thread must outlive any one callback
            self.errors += 1
            log.exception("heartbeat thread: a callback failed")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # full: a wake is pending anyway
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _drop(self, t: PacedTransport) -> None:
        with self._lock:
            self._dropped.append(t)
        if self._thread is None or not self._thread.is_alive():
            self._close_dropped()
        else:
            self._wake()

    def _poll_added(self) -> None:
        with self._lock:
            added, self._added = self._added, []
            for fd in added:
                if fd in self._sockets and self._reading:
                    self._poll.register(fd, select.POLLIN)

    def _close_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
            for t in dropped:
                fd = t.sock.fileno()
                if fd >= 0 and self._sockets.get(fd) is t:
                    del self._sockets[fd]
                    if fd in self._added:
                        self._added.remove(fd)
                    elif self._reading:  # held back: already out of the poll set
                        self._poll.unregister(fd)
                t.sock.close()

