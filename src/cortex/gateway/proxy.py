"""Forwarding a request to the node that serves its model, streams chunk by chunk.

Failover: a node that refuses or drops the connection before the response
starts is marked down and the request goes to another node that has (or can
load) the model. Once bytes have reached the client, a failure ends the
stream with an error event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import Response, StreamingResponse

from cortex.errors import CortexError, ModelRecovering, UpstreamError
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.neuron_client import NeuronClient, NeuronUnreachable
from cortex.gateway.poller import Poller
from cortex.gateway.recording import record
from cortex.gateway.renderers import PROMPT_TOKENS_HEADER, Renderer
from cortex.gateway.scheduler import Scheduler
from cortex.protocol.errors import error_from_openai_body
from cortex.protocol.sse import REPORT_HEADER, parse_report

log = logging.getLogger("cortex.gateway.proxy")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
_ERROR_FRAME = b'data: {"error"'
_TAIL_BYTES = 4096


class Upstream:
    """An open response from a node, owned by whoever consumes it."""

    def __init__(
        self, node: Node, model_id: str, response: aiohttp.ClientResponse, scheduler: Scheduler
    ) -> None:
        self.node = node
        self.model_id = model_id
        self.response = response
        self._scheduler = scheduler
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.close()  # drops the connection: the neuron sees the disconnect
            self._scheduler.release(self.node, self.model_id)


class Proxy:
    def __init__(
        self,
        scheduler: Scheduler,
        fleet: Fleet,
        clients: dict[str, NeuronClient],
        poller: Poller,
        keepalive_s: float,
    ) -> None:
        self._scheduler = scheduler
        self._fleet = fleet
        self._clients = clients
        self._poller = poller
        self._keepalive_s = keepalive_s

    async def open(
        self,
        path: str,
        model_id: str,
        raw: bytes,
        headers: dict[str, str],
        session: str | None = None,
    ) -> Upstream:
        """Send the JSON body ``raw`` to a node serving ``model_id``; retry elsewhere
        before any byte."""
        tried: set[str] = set()
        last_error: CortexError | None = None
        for _ in range(max(1, len(self._fleet.nodes))):
            asked = time.perf_counter()
            node = await self._scheduler.acquire(model_id, frozenset(tried), session)
            current = record()
            if current is not None:
                current.sending(node.name, waited_s=time.perf_counter() - asked)
            try:
                response = await self._clients[node.name].open_stream(path, raw, headers)
            except BaseException as exc:
                self._scheduler.release(node, model_id)
                if not isinstance(exc, NeuronUnreachable):
                    raise
                log.warning("node=%s unreachable, trying another: %s", node.name, exc.message)
                self._fleet.mark_down(node.name, exc.message)
                self._poller.poke()
                tried.add(node.name)
                last_error = exc
                continue
            upstream = Upstream(node, model_id, response, self._scheduler)
            if current is not None:
                current.answered()
            if response.status == 200:
                return upstream
            raw_error = await response.read()
            upstream.close()
            error = error_from_openai_body(
                response.status, raw_error, response.headers.get("Retry-After")
            )
            if response.status == 503:  # recovering there: another holder may serve it
                tried.add(node.name)
                last_error = error
                continue
            raise error
        raise last_error or ModelRecovering(model_id)

    async def open_stream_after_load(
        self,
        path: str,
        model_id: str,
        raw: bytes,
        headers: dict[str, str],
        session: str | None,
        renderer: Renderer,
    ) -> Response:
        """A stream for a model that must load first. A load that ends (or fails) within
        one keep-alive period answers like any request, status code included; a longer
        one starts the stream with SSE comments every period, so neither the client nor
        a proxy between times out, then the tokens flow."""
        opening = asyncio.ensure_future(self.open(path, model_id, raw, headers, session))
        try:
            await asyncio.wait({opening}, timeout=self._keepalive_s)
        except BaseException:
            _abandon(opening)
            raise
        if opening.done():
            return self.stream(opening.result(), renderer)
        return _LoadingStream(opening, self._after_load(opening, model_id, renderer))

    async def _after_load(
        self, opening: asyncio.Future[Upstream], model_id: str, renderer: Renderer
    ) -> AsyncIterator[bytes]:
        comment = f": loading {model_id}\n\n".encode()
        while not opening.done():
            yield comment
            await asyncio.wait({opening}, timeout=self._keepalive_s)
        try:
            upstream = opening.result()
        except CortexError as error:
            yield renderer.error(error)
            return
        async for frame in self._render(upstream, renderer):
            yield frame

    async def read(self, upstream: Upstream) -> bytes:
        """The whole body of a non-streamed answer."""
        try:
            body = await upstream.response.read()
            current = record()
            if current is not None:
                current.answered()
                current.apply_report(parse_report(upstream.response.headers.get(REPORT_HEADER)))
            return body
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"node '{upstream.node.name}' failed mid-response: {exc}") from exc
        finally:
            upstream.close()

    async def fetch(
        self,
        path: str,
        model_id: str,
        raw: bytes,
        headers: dict[str, str],
        session: str | None = None,
    ) -> tuple[Node, bytes]:
        """A non-streamed answer: the node that served it, and the body."""
        upstream = await self.open(path, model_id, raw, headers, session)
        return upstream.node, await self.read(upstream)

    def stream(self, upstream: Upstream, renderer: Renderer) -> StreamingResponse:
        return StreamingResponse(
            self._render(upstream, renderer),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "x-cortex-node": upstream.node.name},
        )

    def _render(self, upstream: Upstream, renderer: Renderer) -> AsyncIterator[bytes]:
        prompt_tokens = upstream.response.headers.get(PROMPT_TOKENS_HEADER, "0")
        count = int(prompt_tokens) if prompt_tokens.isdigit() else 0
        return renderer.frames(count, self._chunks(upstream))

    async def _chunks(self, upstream: Upstream) -> AsyncIterator[bytes]:
        """The upstream's bytes as they arrive; ``UpstreamError`` when the node cuts it."""
        tail = b""
        try:
            async for data in upstream.response.content.iter_any():
                tail = (tail + data)[-_TAIL_BYTES:]
                if tail.endswith(_DONE):  # before the renderer, which may stop reading here
                    _note_report(tail)
                yield data
            # A neuron ends every stream with [DONE] or an error frame; anything else is a cut.
            if not tail.endswith(_DONE) and _ERROR_FRAME not in tail:
                raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        except (aiohttp.ClientError, TimeoutError) as exc:
            node = upstream.node.name
            log.warning("node=%s stream cut: %s", node, exc)
            self._poller.poke()
            raise UpstreamError(
                f"node '{node}' failed mid-stream: {exc.__class__.__name__}"
            ) from exc
        finally:
            upstream.close()


def _note_report(tail: bytes) -> None:
    """The neuron's report (token counts, TTFT), sent just before ``[DONE]``, on the record."""
    report, current = parse_report(tail), record()
    if report and current is not None:
        current.apply_report(report)


def _close_if_opened(opening: asyncio.Future[Upstream]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
    else:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            opening.exception()  # consumed: no "exception never retrieved" warning


class _LoadingStream(StreamingResponse):
    """A streaming response that owns the pending open: however the response ends
    (sent, client gone before the first byte), the request it opened is released."""

    def __init__(self, opening: asyncio.Future[Upstream], content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._opening = opening

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _abandon(self._opening)


def _abandon(opening: asyncio.Future[Upstream]) -> None:
    """Cancel an open nobody will read, and close what it opened (closing twice is harmless)."""
    if opening.done():
        _close_if_opened(opening)
    else:
        opening.cancel()
        opening.add_done_callback(_close_if_opened)
