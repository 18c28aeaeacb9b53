"""Forwarding a request to the node that serves its model, streams chunk by chunk.

Failover: a node that refuses or drops the connection before the response
starts is marked down and the request goes to another node that has (or can
load) the model. Once bytes have reached the client, a failure ends the
stream with an error event instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import Response, StreamingResponse

from cortex.errors import CortexError, ModelRecovering, UpstreamError
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.neuron_client import NeuronClient, NeuronUnreachable
from cortex.gateway.poller import Poller
from cortex.gateway.scheduler import Scheduler
from cortex.protocol.errors import error_from_openai_body, openai_error_body
from cortex.protocol.sse import data_frame

log = logging.getLogger("cortex.gateway.proxy")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
_ERROR_FRAME = b'data: {"error"'
_TAIL_BYTES = 4096


class Upstream:
    """An open response from a node, owned by whoever consumes it."""

    def __init__(self, node: Node, response: aiohttp.ClientResponse) -> None:
        self.node = node
        self.response = response
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.close()  # drops the connection: the neuron sees the disconnect
            self.node.active_requests -= 1


class Proxy:
    def __init__(
        self,
        scheduler: Scheduler,
        fleet: Fleet,
        clients: dict[str, NeuronClient],
        poller: Poller,
    ) -> None:
        self._scheduler = scheduler
        self._fleet = fleet
        self._clients = clients
        self._poller = poller

    async def open(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Upstream:
        """Send ``body`` to a node serving ``body['model']``; retry elsewhere before any byte."""
        model_id = self._scheduler.resolve(body["model"])
        body = {**body, "model": model_id}
        raw = json.dumps(body, separators=(",", ":")).encode()
        tried: set[str] = set()
        last_error: CortexError | None = None
        for _ in range(max(1, len(self._fleet.nodes))):
            node = await self._scheduler.node_for(model_id, frozenset(tried))
            node.active_requests += 1
            try:
                response = await self._clients[node.name].open_stream(path, raw, headers)
            except NeuronUnreachable as exc:
                node.active_requests -= 1
                log.warning("node=%s unreachable, trying another: %s", node.name, exc.message)
                self._fleet.mark_down(node.name, exc.message)
                self._poller.poke()
                tried.add(node.name)
                last_error = exc
                continue
            if response.status == 200:
                return Upstream(node, response)
            raw_error = await response.read()
            Upstream(node, response).close()
            error = error_from_openai_body(
                response.status, raw_error, response.headers.get("Retry-After")
            )
            if response.status == 503:  # recovering there: another holder may serve it
                tried.add(node.name)
                last_error = error
                continue
            raise error
        raise last_error or ModelRecovering(model_id)

    async def complete(self, upstream: Upstream) -> Response:
        try:
            data = await upstream.response.read()
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"node '{upstream.node.name}' failed mid-response: {exc}") from exc
        finally:
            upstream.close()
        return Response(
            data, media_type="application/json", headers={"x-cortex-node": upstream.node.name}
        )

    def stream(self, upstream: Upstream) -> StreamingResponse:
        return StreamingResponse(
            self._relay(upstream),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "x-cortex-node": upstream.node.name},
        )

    async def _relay(self, upstream: Upstream) -> AsyncIterator[bytes]:
        tail = b""
        try:
            async for data in upstream.response.content.iter_any():
                tail = (tail + data)[-_TAIL_BYTES:]
                yield data
            # A neuron ends every stream with [DONE] or an error frame; anything else is a cut.
            if not tail.endswith(_DONE) and _ERROR_FRAME not in tail:
                raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        except (aiohttp.ClientError, TimeoutError) as exc:
            node = upstream.node.name
            log.warning("node=%s stream cut: %s", node, exc)
            self._poller.poke()
            error = UpstreamError(f"node '{node}' failed mid-stream: {exc.__class__.__name__}")
            yield data_frame(json.dumps(openai_error_body(error)).encode())
        finally:
            upstream.close()
