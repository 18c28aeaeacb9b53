"""Stop work nobody waits for: a non-streamed answer abandoned by its client.

Starlette cancels a streaming response when the client goes away, but a plain
handler runs to the end: a client that timed out would leave its generation
holding a batch slot for minutes. ``unless_disconnected`` watches for the ASGI
``http.disconnect`` message beside the work and cancels the work when it comes.
One watcher task per request, nothing else: this sits on every non-streamed request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from cortex.errors import ClientDisconnected

T = TypeVar("T")
_GONE = "client disconnected"


async def _cancel_on_disconnect(request: Request, task: asyncio.Task) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    task.cancel(_GONE)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ``ClientDisconnected`` once the client has left (``work`` is
    cancelled). Call only after the request body is read: this consumes ``receive``."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.create_task(_cancel_on_disconnect(request, task))
    try:
        return await work
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise  # cancelled from elsewhere (shutdown): not ours to swallow
        task.uncancel()
        raise ClientDisconnected("The client disconnected before the answer was ready.") from None
    finally:
        watcher.cancel()
