"""The bridge from a device thread to a request's event loop."""

from __future__ import annotations

import asyncio

from cortex.neuron.engines.base import Event, Finished


class QueueSink:
    """Receives a sequence's events on the device thread and queues them on the loop
    that created it (``asyncio.Queue`` is not thread-safe, hence ``call_soon_threadsafe``)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def finished(self) -> Finished:
        """Skip text until the sequence ends; how it ended."""
        while True:
            event = await self.queue.get()
            if isinstance(event, Finished):
                return event
