"""One thread per device: it owns every engine on that device.

Loads, unloads and request admission reach the thread as jobs on its queue;
between jobs it runs decode steps for every engine that has work. Nothing else
ever touches an engine, so engines need no locks and a device context is only
ever used from the thread that created it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from cortex.neuron.devices import Device
from cortex.neuron.engines.base import Engine

T = TypeVar("T")
log = logging.getLogger("cortex.neuron.worker")

FaultHandler = Callable[[Engine, BaseException], None]
_STOP = object()


class DeviceWorker:
    def __init__(self, device: Device, on_fault: FaultHandler) -> None:
        self.device = device
        self._on_fault = on_fault
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._engines: list[Engine] = []
        self._thread = threading.Thread(target=self._run, name=f"device-{device.id}", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the device thread; the future carries its result or exception."""
        future: Future[T] = Future()
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

    def stop(self, timeout_s: float = 10.0) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            busy = any(engine.has_work() for engine in self._engines)
            try:
                job = self._jobs.get(block=not busy)
            except queue.Empty:
                job = None
            if job is _STOP:
                for engine in list(self._engines):
                    engine.close()
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
                try:
                    engine.step()
                except Exception as exc:
                    log.exception("engine step failed on %s", self.device.id)
                    self.detach(engine)
                    engine.abort_all(f"engine fault: {exc}")
                    self._on_fault(engine, exc)
