"""Stop work nobody waits for: a non-streamed answer abandoned by its client.

Starlette cancels a streaming response when the client goes away, but a plain
handler runs to the end: a client that timed out would leave its generation
holding a batch slot for minutes. ``unless_disconnected`` races the work against
the ASGI ``http.disconnect`` message and cancels the work when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from cortex.errors import ClientDisconnected

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ``ClientDisconnected`` once the client has left (``work`` is
    cancelled). Call only after the request body is read: this consumes ``receive``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnected("The client disconnected before the answer was ready.")
    return task.result()
