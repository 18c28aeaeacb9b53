"""Forwarding a request to the node that serves its model, streams event by event.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.responses import Response, StreamingResponse

from cortex.errors import CortexError, ModelRecovering, Unavailable, UpstreamError
from cortex.gateway.fair_queue import FairQueue
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.neuron_client import NeuronClient, NeuronUnreachable, UpstreamResponse
from cortex.gateway.poison import CRASHED_CODE, PoisonGuard, fingerprint
from cortex.gateway.poller import Poller
from cortex.gateway.recording import record
from cortex.gateway.renderers import Renderer
from cortex.gateway.scheduler import Scheduler
from cortex.protocol.errors import error_from_openai_body
from cortex.protocol.neuron import FinishedRequest
from cortex.protocol.prefix_digest import Chain
from cortex.protocol.sse import (
    DONE,
    PROMPT_TOKENS_HEADER,
    REPORT_HEADER,
    SSE_HEADERS,
    events,
    is_report,
    parse_report,
)

log = logging.getLogger("cortex.gateway.proxy")

_ERROR_EVENT = b'data: {"error"'
_UNLIMITED = 1 << 30


@dataclass(frozen=True)
class UpstreamRequest:
    """One request for whichever node serves ``model_id``: a JSON ``body`` to ``path``."""

    path: str
    model_id: str
    body: bytes
    headers: dict[str, str]
    session: str | None = None  # the client's explicit session (x-session-id): pins
    prefix: Chain | None = None  # the prompt's chain hashes, for routing


class Upstream:
    """An open response from a node, owned by whoever consumes it."""

    def __init__(
        self, node: Node, model_id: str, response: UpstreamResponse, scheduler: Scheduler
    ) -> None:
        self.node = node
        self.model_id = model_id
        self.response = response
        self._scheduler = scheduler
        self.tokens = 0  # what it is counted for on its node (``Scheduler.request_tokens``)
        self._closed = False
        self.on_close: list[Callable[[Upstream], None]] = []
        self.fingerprint = ""
        self.ended_by: CortexError | None = None  # the gateway ended it (a shutdown)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.close()  # drops the connection: the neuron sees the disconnect
            self._scheduler.release(self.node, self.model_id, self.tokens)
            for callback in self.on_close:
                callback(self)


class Proxy:
    def __init__(
        self,
        scheduler: Scheduler,
        fleet: Fleet,
        clients: dict[str, NeuronClient],
        poller: Poller,
        keepalive_s: float,
        idle_timeout_s: float = 300,
    ) -> None:
        self._idle_timeout_s = idle_timeout_s
        self.poison = PoisonGuard()
        self._open: dict[str, set[Upstream]] = {}  # by node: answers being read
        self._pending: dict[str, set[asyncio.Task[Any]]] = {}  # awaiting a node's headers
        self._cut: set[asyncio.Task[Any]] = set()
        self._opens: set[asyncio.Task[Any]] = set()  # requests not yet answered by a node
        self._ending: CortexError | None = None  # set once answers in flight must end
        self._scheduler = scheduler
        self._fleet = fleet
        self.admission = FairQueue(self._places, self._queue_places)
        self._clients = clients
        self._poller = poller
        self._keepalive_s = keepalive_s

    def _places(self, model_id: str) -> int:
        """The model's batch places on the nodes holding it. None holds it: no limit here,
        the scheduler's cold-load queue bounds what waits for the load."""
        holders = self._fleet.holders(model_id)
        if not holders:
            return _UNLIMITED
        return sum(node.models[model_id].spec.max_batch for node in holders)

    def _queue_places(self, model_id: str) -> int:
        holders = self._fleet.holders(model_id)
        return max(1, sum(node.models[model_id].spec.max_queue for node in holders))

    def would_wait(self, model_id: str) -> bool:
        """A request for the model now would wait for a place (in its tenant's turn)."""
        return self.admission.would_wait(model_id)

    async def open(self, request: UpstreamRequest) -> Upstream:
        """Send ``request`` to a node serving its model, once the fair queue admits it;
        retry elsewhere before any byte."""
        if self._ending is not None:
            raise self._ending
        task = asyncio.current_task()
        assert task is not None
        self._opens.add(task)
        try:
            asked = time.perf_counter()
            ticket = await self.admission.enter(request.model_id)
            current = record()
            if current is not None:  # a wait for a place counts as waiting for a node
                current.waited_s += time.perf_counter() - asked
            try:
                upstream = await self._send_to_a_node(request)
            except BaseException:
                ticket.release()
                raise
            upstream.on_close.append(lambda _: ticket.release())
            return upstream
        except asyncio.CancelledError:
            if self._ending is not None and task.cancelling() == 1:
                task.uncancel()  # ended by the gateway, not by the client: say so
                raise self._ending from None
            raise
        finally:
            self._opens.discard(task)

    async def _send_to_a_node(self, request: UpstreamRequest) -> Upstream:
        model_id = request.model_id
        key = fingerprint(request.path, request.body)
        self.poison.check(key, model_id)
        tried: set[str] = set()
        last_error: CortexError | None = None
        tokens = self._scheduler.request_tokens(model_id, request.body)
        for _ in range(max(1, len(self._fleet.nodes))):
            asked = time.perf_counter()
            node = await self._scheduler.acquire(
                model_id, frozenset(tried), request.session, request.prefix, tokens
            )
            current = record()
            if current is not None:
                current.sending(node.name, waited_s=time.perf_counter() - asked)
            try:
                response = await self._opening(node.name, request)
            except BaseException as exc:
                self._scheduler.release(node, model_id, tokens)
                if not isinstance(exc, NeuronUnreachable):
                    raise
                log.warning("node=%s unreachable, trying another: %s", node.name, exc.message)
                self._fleet.mark_down(node.name, exc.message)
                self._poller.poke()
                tried.add(node.name)
                last_error = exc
                continue
            upstream = Upstream(node, model_id, response, self._scheduler)
            upstream.tokens = tokens
            upstream.fingerprint = key
            self._open.setdefault(node.name, set()).add(upstream)
            upstream.on_close.append(lambda done: self._open[done.node.name].discard(done))
            if current is not None:
                current.answered()
            if response.status == 200:
                return upstream
            raw_error = await response.read()
            upstream.close()
            error = error_from_openai_body(
                response.status, raw_error, response.headers.get("Retry-After")
            )
            if response.status == 401:  # the node refused our token: the operator's to fix
                error = UpstreamError(
                    f"node '{node.name}' refused the gateway's token for it: check `token` "
                    "under its [[neurons]] entry in cortex.toml",
                    code="neuron_token_refused",
                )
                self._fleet.mark_down(node.name, error.message)
                tried.add(node.name)
                last_error = error
                continue
            if error.code == CRASHED_CODE:  # it may be what crashed it: no other node
                self.poison.remember(key, model_id)
                raise error
            if response.status == 503:  # recovering there: another holder may serve it
                tried.add(node.name)
                last_error = error
                continue
            raise error
        if isinstance(last_error, NeuronUnreachable):
            # Every node tried is gone for now (a restart, a reboot): the client should
            # come back shortly, not take it as the server's own failure.
            raise Unavailable(
                f"No node can serve '{model_id}' right now ({last_error.message}); retry shortly.",
                retry_after_s=2,
            )
        raise last_error or ModelRecovering(model_id)

    async def _opening(self, name: str, request: UpstreamRequest) -> UpstreamResponse:
        """The node's response headers; a node cut meanwhile makes it unreachable.

        The waiting task itself is registered (no extra task per request: this is the
        hot path); ``cut_node`` cancels it, and the cancellation is turned back into
        ``NeuronUnreachable`` here, so the request can still go to another node."""
        task = asyncio.current_task()
        assert task is not None
        pending = self._pending.setdefault(name, set())
        pending.add(task)
        try:
            return await self._clients[name].open_stream(
                request.path, request.body, request.headers
            )
        except asyncio.CancelledError:
            if task in self._cut:
                task.uncancel()
                raise NeuronUnreachable(f"node '{name}' went down before it answered") from None
            raise
        finally:
            pending.discard(task)
            self._cut.discard(task)

    async def finished_counts(
        self, node: str, request_id: str, within_s: float = 10.0
    ) -> FinishedRequest | None:
        """What a generation whose client left really counted, from its node. The node
        records it once the engine has stopped the sequence (its next step), so this
        asks a few times; None when the node cannot tell (gone, older, forgotten)."""
        client = self._clients.get(node)
        if client is None:
            return None
        deadline = time.monotonic() + within_s
        pause = 0.05
        while True:
            try:
                finished = await client.finished(request_id)
            except CortexError:
                return None
            if finished is not None or time.monotonic() + pause > deadline:
                return finished
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def cut_node(self, name: str) -> None:
        """The node went down (the poller says so): end every answer still awaited or
        read from it, so its clients get an error now rather than wait on a frozen host."""
        for waiting in list(self._pending.get(name, ())):
            self._cut.add(waiting)
            waiting.cancel()
        for upstream in list(self._open.get(name, ())):
            log.warning("node=%s down: ending its answer in flight", name)
            # wakes a reader waiting on the body (closing alone leaves a read() pending)
            upstream.response.content.set_exception(
                aiohttp.ClientConnectionError(f"node '{name}' went down")
            )
            upstream.response.close()

    def end_all(self, error: CortexError) -> None:
        """The gateway is going away: every answer in flight, or still waiting for a node
        or a load, ends now with ``error`` (an error event on a started stream); new
        requests get it at once."""
        self._ending = error
        for task in list(self._opens):
            task.cancel()
        for upstreams in self._open.values():
            for upstream in list(upstreams):
                upstream.ended_by = error
                upstream.response.content.set_exception(
                    aiohttp.ClientConnectionError(error.message)
                )
                upstream.response.close()

    async def fetch(self, request: UpstreamRequest) -> tuple[Node, bytes]:
        """A non-streamed answer: the node that served it, and the body."""
        try:
            upstream = await self.open(request)
        except asyncio.CancelledError:
            _note_client_left()
            raise
        try:
            body = await upstream.response.read()
        except asyncio.CancelledError:
            _note_client_left()
            raise
        except aiohttp.ClientError as exc:
            if upstream.ended_by is not None:
                raise upstream.ended_by from None
            raise UpstreamError(f"node '{upstream.node.name}' failed mid-response: {exc}") from exc
        finally:
            upstream.close()
        current = record()
        if current is not None:
            current.answered()
            current.apply_report(parse_report(upstream.response.headers.get(REPORT_HEADER)))
        return upstream.node, body

    async def stream(self, request: UpstreamRequest, renderer: Renderer, *, cold: bool) -> Response:
        """The client's stream, rendered by ``renderer``.

        ``cold``: no node holds the model, so it loads first. A load (or a wait for a
        place in the fair queue) that ends within one keep-alive period answers like any
        request, status code included; a longer one starts the stream with SSE comments
        every period, so neither the client nor a proxy between times out, then the
        tokens flow."""
        if not cold and not self.would_wait(request.model_id):
            return self._response(await self.open(request), renderer)
        opening = asyncio.ensure_future(self.open(request))
        try:
            await asyncio.wait({opening}, timeout=self._keepalive_s)
        except BaseException:
            _abandon(opening)
            raise
        if opening.done():
            return self._response(opening.result(), renderer)
        loading = self._after_load(opening, request.model_id, renderer)
        return _LoadingStream(opening, loading, renderer.media_type)

    def _response(self, upstream: Upstream, renderer: Renderer) -> StreamingResponse:
        return StreamingResponse(
            self._relay(upstream, renderer),
            media_type=renderer.media_type,
            headers={**SSE_HEADERS, "x-cortex-node": upstream.node.name},
        )

    async def _after_load(
        self, opening: asyncio.Future[Upstream], model_id: str, renderer: Renderer
    ) -> AsyncIterator[bytes]:
        while not opening.done():
            yield renderer.waiting(model_id)
            await asyncio.wait({opening}, timeout=self._keepalive_s)
        try:
            upstream = opening.result()
        except CortexError as error:
            yield renderer.error(error)
            return
        async for frame in self._relay(upstream, renderer):
            yield frame

    async def _relay(self, upstream: Upstream, renderer: Renderer) -> AsyncIterator[bytes]:
        """The one loop over a stream: each upstream event, rendered, as it arrives. A node
        that cuts the stream (or sends what cannot be rendered) ends it with an error event."""
        prompt_tokens = upstream.response.headers.get(PROMPT_TOKENS_HEADER, "0")
        renderer.start(int(prompt_tokens) if prompt_tokens.isdigit() else 0)
        ended = False  # a neuron ends every stream with [DONE] or an error event
        try:
            stream = aiter(events(upstream.response.content.iter_any()))
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout_s):  # a frozen node
                        event = await anext(stream)
                except StopAsyncIteration:
                    break
                if is_report(event):  # token counts and TTFT, just before [DONE]
                    _note_report(event)
                    continue  # ours, not the client's
                ended = ended or event == DONE or event.startswith(_ERROR_EVENT)
                if event.startswith(_ERROR_EVENT) and CRASHED_CODE.encode() in event:
                    self.poison.remember(upstream.fingerprint, upstream.model_id)
                if rendered := renderer.event(event):
                    yield rendered
            if not ended:
                raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        except (aiohttp.ClientError, TimeoutError) as exc:
            if upstream.ended_by is not None:
                yield renderer.error(upstream.ended_by)
                return
            node = upstream.node.name
            log.warning("node=%s stream cut: %s", node, exc)
            self._poller.poke()
            cut = UpstreamError(f"node '{node}' failed mid-stream: {exc.__class__.__name__}")
            yield renderer.error(cut)
        except CortexError as error:
            yield renderer.error(error)
        except (asyncio.CancelledError, GeneratorExit):
            if not ended:  # the client left mid-stream: its report will not come
                _note_client_left()
            raise
        finally:
            upstream.close()


def _note_client_left() -> None:
    current = record()
    if current is not None and current.node:
        current.client_left = True


def _note_report(event: bytes) -> None:
    """The neuron's report (token counts, TTFT) on the request's record."""
    report, current = parse_report(event), record()
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

    def __init__(
        self, opening: asyncio.Future[Upstream], content: AsyncIterator[bytes], media_type: str
    ) -> None:
        super().__init__(content, media_type=media_type, headers=SSE_HEADERS)
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
