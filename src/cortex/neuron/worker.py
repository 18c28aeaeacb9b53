"""One thread per device: it owns every engine on that device.

Loads, unloads and request admission reach the thread as jobs on its queue;
between jobs it runs decode steps for every engine that has work. Nothing else
ever touches an engine, so engines need no locks and a device context is only
ever used from the thread that created it.

A thread can fail in two ways the manager's watchdog must see from outside:
it dies (``is_alive()`` turns false) or a step never returns (``step_age()``
grows past the deadline). The manager then ``abandon()``s the worker and starts a
fresh one for the device; an abandoned thread that wakes up closes its engines
and exits without running anything else.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

from cortex.neuron.devices import Device
from cortex.neuron.engines.base import Engine, EngineFault

T = TypeVar("T")
log = logging.getLogger("cortex.neuron.worker")

FaultHandler = Callable[[Engine, BaseException], None]
StepObserver = Callable[[Engine, int], None]  # engine, sequences decoded in its step
FaultKind = Literal["device_error", "hang", "worker_crash"]
FAULT_KINDS: tuple[FaultKind, ...] = ("device_error", "hang", "worker_crash")
_STOP = object()


class WorkerCrash(BaseException):
    """Injected: ends the device thread the way an uncaught native error would."""


class DeviceWorker:
    def __init__(
        self, device: Device, on_fault: FaultHandler, on_step: StepObserver | None = None
    ) -> None:
        self.device = device
        self._on_fault = on_fault
        self._on_step = on_step
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._engines: list[Engine] = []
        self._faults: dict[int, FaultKind] = {}  # id(engine) -> fault for its next step
        self._step_started: float | None = None  # monotonic; None between steps
        self._abandoned = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"device-{device.id}", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the device thread; the future carries its result or exception."""
        future: Future[T] = Future()
        if self._abandoned.is_set():
            future.set_exception(EngineFault(f"the worker of {self.device.id} was replaced"))
            return future
        self._jobs.put((fn, future))
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.call(fn))

    def attach(self, engine: Engine) -> None:
        """Called on the device thread: start stepping ``engine``."""
        self._engines.append(engine)

    def detach(self, engine: Engine) -> None:
        """Called on the device thread: stop stepping ``engine``."""
        if engine in self._engines:
            self._engines.remove(engine)
        self._faults.pop(id(engine), None)

    def arm_fault(self, engine: Engine, kind: FaultKind) -> None:
        """Called on the device thread: ``engine``'s next step hits ``kind``."""
        self._faults[id(engine)] = kind

    # -- seen from the watchdog ----------------------------------------------------

    def is_alive(self) -> bool:
        return self._thread.is_alive() or self._stopped

    def step_age(self) -> float:
        """Seconds the current decode step has been running; 0 between steps."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    def abandon(self) -> None:
        """Give up on this thread: queued jobs fail now, and the thread, if it ever
        returns from its step, closes its engines and exits."""
        self._abandoned.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job[1].set_exception(EngineFault(f"the worker of {self.device.id} was replaced"))
        if not self._thread.is_alive():  # died: nobody else will free its engines
            self._close_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopped = True
        if self._abandoned.is_set():
            return  # its thread is stuck or gone; it closes its engines if it returns
        self._jobs.put(_STOP)
        self._thread.join(timeout_s)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except WorkerCrash:
            log.error("device worker %s crashed (injected)", self.device.id)
        finally:
            if self._abandoned.is_set():
                self._close_all()

    def _loop(self) -> None:
        while not self._abandoned.is_set():
            busy = any(engine.has_work() for engine in self._engines)
            try:
                job = self._jobs.get(block=not busy)
            except queue.Empty:
                job = None
            if job is _STOP:
                self._close_all()
                return
            if job is not None:
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # delivered to the caller, not lost here
                        future.set_exception(exc)
                continue  # drain every queued job before the next step
            for engine in [e for e in self._engines if e.has_work()]:
                self._step(engine)
                if self._abandoned.is_set():
                    return

    def _step(self, engine: Engine) -> None:
        self._step_started = time.monotonic()
        try:
            fault = self._faults.pop(id(engine), None)
            if fault == "worker_crash":
                raise WorkerCrash
            if fault == "hang":
                # A step that never comes back: stays stuck until the watchdog gives up
                # on this thread (a real hang in a native call would not wake at all).
                self._abandoned.wait()
                return
            if fault == "device_error":
                raise EngineFault("injected device error")
            engine.step()
            sequences = getattr(engine, "step_sequences", 0)
            if sequences and self._on_step is not None:
                self._on_step(engine, sequences)
        except Exception as exc:
            if self._abandoned.is_set():
                return
            log.exception("engine step failed on %s", self.device.id)
            self.detach(engine)
            engine.abort_all(f"engine fault: {exc}")
            self._on_fault(engine, exc)
        finally:
            self._step_started = None

    def _close_all(self) -> None:
        for engine in list(self._engines):
            try:
                engine.close()
            except Exception:
                log.exception("closing an engine on %s failed", self.device.id)
        self._engines.clear()
