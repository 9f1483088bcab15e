"""An asyncio event loop on a FakeClock's time, with simulated processes, so
simulations run the real agent (its tasks, timers, `asyncio.sleep` and
`wait_for`) thousands of virtual seconds per real second.

Time: `loop.time()` is `clock.now()`. When nothing is ready to run, the loop
does not wait: it advances the clock to the next timer (real file
descriptors are still polled, without blocking, so a real socket still
completes). Work handed to a thread (`asyncio.to_thread`: probes, fsync)
runs at once on the loop's own thread, in no virtual time: a real thread
would finish at whatever virtual instant the host's scheduler lets it, and
the same seed would not give the same run (so work that blocks there
blocks every simulated process and the clock: a hung probe is modelled by
a probe that answers late in virtual time, not by one that blocks). The agent is given the same
clock, so its `clock.now()` and its timers are one time.

Processes: `spawn(name, coro)` runs a coroutine as a process; every task,
timer and datagram it causes carries that process in its context
(contextvars), and each callback passes a gate before it runs:
- `sigstop(p)`: its callbacks are held, in order, while the clock
  moves on; `sigcont(p)` runs them, so timers overdue by the pause
  fire at once, as they do in a resumed process.
- `sigkill(p)`: its callbacks are dropped, now and later; no
  `finally` block of it runs (until `reap()` ends the simulation; keep a
  reference to what a killed process holds until then, or the garbage
  collector closes its coroutines mid-run).
Callbacks of no process (the store's lease expiry, the simulation's own
driver) always run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import selectors
import sys
from typing import Any, Callable, Coroutine

from vigil.testing.clock import FakeClock

RUNNING, STOPPED, KILLED = "running", "stopped", "killed"


class SimProcess:
    def __init__(self, name: str):
        self.name, self.state = name, RUNNING
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context]] = []
        self.task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<SimProcess {self.name} {self.state}>"


PROCESS: contextvars.ContextVar[SimProcess | None] = contextvars.ContextVar("sim_process", default=None)


class _VirtualSelector(selectors.BaseSelector):
    """A real selector polled without blocking; a wait becomes a clock advance."""

    def __init__(self, clock: FakeClock):
        self.clock, self._real = clock, selectors.DefaultSelector()

    def register(self, fileobj, events, data=None):
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None):
        if timeout == 0:  # callbacks are ready: real I/O waits until they have run
            return []
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout is None:  # no timer at all: only real I/O (a worker thread) can wake us
            return self._real.select(None)
        self.clock.advance(timeout)
        return []

    def get_map(self):
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: each call runs where it is submitted, now."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task, as a thread would
            done.set_exception(e)
        return done


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock):
        super().__init__(_VirtualSelector(clock))
        self.clock = clock
        self.processes: list[SimProcess] = []
        self.set_default_executor(_InlineExecutor(max_workers=1))

    def time(self) -> float:
        return self.clock.now()

    # -- the gate every callback passes ------------------------------------------
    def call_soon(self, callback, *args, context=None):  # type: ignore[override]
        ctx = context if context is not None else contextvars.copy_context()
        return super().call_soon(self._gate, callback, args, ctx, context=ctx)

    def call_at(self, when, callback, *args, context=None):  # type: ignore[override]
        ctx = context if context is not None else contextvars.copy_context()
        return super().call_at(when, self._gate, callback, args, ctx, context=ctx)

    @staticmethod
    def _gate(callback: Callable[..., Any], args: tuple[Any, ...], ctx: contextvars.Context) -> None:
        proc = PROCESS.get()
        if proc is None or proc.state == RUNNING:
            callback(*args)
        elif proc.state == STOPPED:
            proc.held.append((callback, args, ctx))
        # KILLED: dropped

    # -- processes ---------------------------------------------------------------------
    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> SimProcess:
        """Run `coro` as a new process named `name`."""
        proc = SimProcess(name)
        ctx = contextvars.copy_context()
        ctx.run(PROCESS.set, proc)
        proc.task = self.create_task(coro, context=ctx)
        self.processes.append(proc)
        return proc

    def sigstop(self, proc: SimProcess) -> None:
        if proc.state == RUNNING:
            proc.state = STOPPED

    def sigcont(self, proc: SimProcess) -> None:
        if proc.state != STOPPED:
            return
        proc.state, held, proc.held = RUNNING, proc.held, []
        for callback, args, ctx in held:
            super().call_soon(self._gate, callback, args, ctx, context=ctx)

    def sigkill(self, proc: SimProcess) -> None:
        proc.state, proc.held = KILLED, []

    def reap(self) -> None:
        """End the simulation: every process, killed ones included, runs again
        only to be cancelled, so no coroutine is left to be finalized later by
        the garbage collector (at an arbitrary moment, in an arbitrary
        context). Read the results first: what their `finally` blocks do
        happens after them."""
        self.set_exception_handler(lambda loop, context: None)  # teardown: what fails here is moot
        for proc in self.processes:
            proc.state, proc.held = RUNNING, []
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            self.run_until_complete(asyncio.wait(tasks, timeout=60.0))
        # A task whose wake-up was dropped while its process was killed never runs
        # again: close its coroutine here, while the loop still takes callbacks.
        for t in tasks:
            if not t.done():
                try:
                    t.get_coro().close()
                except (RuntimeError, StopIteration):
                    pass
        self.run_until_complete(self.shutdown_asyncgens())
        # What the closed coroutines dropped is finalized now, while the loop runs; a
        # finalizer that awaits (asyncio.Condition.wait re-takes its lock) is moot here.
        hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
        try:
            gc.collect()
            self.run_until_complete(asyncio.sleep(0))
        finally:
            sys.unraisablehook = hook

    def run_for(self, seconds: float) -> None:
        """Run every process until the clock has moved `seconds` on."""
        self.run_until_complete(asyncio.sleep(seconds))
