"""What the gateway measures about each API request, and where it goes.

A pure ASGI middleware opens a ``RequestRecord`` for every ``POST /v1/...`` and
every Ollama generation or embedding (``OLLAMA_RECORDED``):
it takes the client's ``x-request-id`` or makes one, and returns it. Routes and
the proxy fill the record in through a context variable (model, node, when the
request went upstream and when the answer came back, the neuron's report of
token counts and time to first token). When the response has ended the record is
written once: Prometheus metrics, the recent-requests window behind ``/ui`` and
``cortex status``, and one log line.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the latter
runs every response through an extra task and memory stream, which costs the
streams their latency.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.error_handlers import ANTHROPIC_PATH, OLLAMA_PATH
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.stats import RecentRequests, RequestSample
from cortex.request_ids import REQUEST_ID_HEADER, request_id_of

log = logging.getLogger("cortex.gateway.requests")

OVERHEAD_HEADER = "x-cortex-overhead-ms"
RESPONSES_PATH = "/v1/responses"
# Ollama's routes that a neuron answers; the rest (/api/tags, /api/pull...) are not requests
# of a model in the metrics' sense.
OLLAMA_RECORDED = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
_NONE = "-"  # label value before a model or node is known (unknown model, bad request)


@dataclass
class RequestRecord:
    request_id: str
    dialect: str
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    node: str = ""
    sent_upstream: float | None = None
    waited_s: float = 0.0  # for a node: a free slot, a cold load (not the gateway's own time)
    upstream_answered: float | None = None  # headers of a stream; the whole plain answer
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_ttft_s: float | None = None  # the neuron's, from its arrival to its first token
    overhead_s: float | None = None  # the gateway's own time, once the response starts
    cached_tokens: int = 0  # of the prompt, served from the neuron's prefix cache
    key_id: str = ""  # who sent it (``auth.Identity``): never the key itself
    # The client left once the node had the request: no report came, the node's own
    # count of what it generated is asked for afterwards (``Proxy.finished_counts``).
    client_left: bool = False
    # The (prompt, completion) tokens the metrics have counted, once they have.
    metered: tuple[int, int] | None = None

    def sending(self, node: str, waited_s: float) -> None:
        self.node = node
        self.waited_s += waited_s
        self.sent_upstream = time.perf_counter()

    def answered(self) -> None:
        self.upstream_answered = time.perf_counter()

    def apply_report(self, report: dict[str, Any]) -> None:
        """Token counts and TTFT as the neuron measured them (``protocol.sse``)."""
        self.prompt_tokens = int(report.get("prompt_tokens") or 0)
        self.completion_tokens = int(report.get("completion_tokens") or 0)
        self.cached_tokens = int(report.get("cached_tokens") or 0)
        ttft_ms = report.get("ttft_ms")
        self.upstream_ttft_s = ttft_ms / 1000 if isinstance(ttft_ms, int | float) else None

    def starting_response(self, status: int) -> None:
        """The gateway's own time so far: before the request went upstream, less any wait
        for a node (queue, cold load), and from the node's answer (a stream's headers, a
        plain answer's whole body) to now."""
        self.status = status
        if self.sent_upstream is not None and self.upstream_answered is not None:
            now = time.perf_counter()
            before = self.sent_upstream - self.started - self.waited_s
            self.overhead_s = before + (now - self.upstream_answered)

    def ttft_s(self) -> float | None:
        if self.upstream_ttft_s is None or self.sent_upstream is None:
            return None
        return (self.sent_upstream - self.started) + self.upstream_ttft_s


current_record: ContextVar[RequestRecord | None] = ContextVar("cortex_request", default=None)


def meter_late_counts(metrics: GatewayMetrics, done: RequestRecord) -> None:
    """Count the tokens a node reported after the client left (``Proxy.finished_counts``)
    that the metrics have not counted yet. Before the record is written there is nothing
    to do: it is written with the counts it has by then."""
    if done.metered is None:
        return
    prompt, completion = done.metered
    labels = (done.model or _NONE, done.node or _NONE)
    if done.prompt_tokens > prompt:
        metrics.prompt_tokens.labels(*labels).inc(done.prompt_tokens - prompt)
    if done.completion_tokens > completion:
        metrics.completion_tokens.labels(*labels).inc(done.completion_tokens - completion)
    done.metered = (done.prompt_tokens, done.completion_tokens)


def record() -> RequestRecord | None:
    """The record of the request being served here, if it is an API request."""
    return current_record.get()


def forwarded_headers() -> dict[str, str]:
    """Headers a neuron gets with the request: its id, so both logs name it."""
    current = current_record.get()
    return {REQUEST_ID_HEADER: current.request_id} if current else {}


def _dialect(path: str) -> str:
    if path.startswith(ANTHROPIC_PATH):
        return "anthropic"
    if path.startswith(RESPONSES_PATH):  # Codex and the SDKs' responses: told apart
        return "responses"
    return "ollama" if path.startswith(OLLAMA_PATH) else "openai"


@dataclass(frozen=True)
class _Series:
    """One (model, node)'s metric children. ``labels()`` takes a lock and checks its
    arguments on every call; looked up once, they cost a dict hit per request."""

    duration: Any
    ttft: Any
    output_rate: Any
    prompt_tokens: Any
    completion_tokens: Any


class RequestRecorder:
    """ASGI middleware: one ``RequestRecord`` per API request, written when it ends."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, recent: RecentRequests) -> None:
        self._app = app
        self._metrics = metrics
        self._recent = recent
        # Bounded like the metrics' own label sets: models x nodes (x dialects x statuses).
        self._series: dict[tuple[str, str], _Series] = {}
        self._request_counters: dict[tuple[str, str, str, int], Any] = {}

    def _series_of(self, model: str, node: str) -> _Series:
        series = self._series.get((model, node))
        if series is None:
            m = self._metrics
            series = self._series[(model, node)] = _Series(
                *(
                    metric.labels(model, node)
                    for metric in (
                        m.duration, m.ttft, m.output_rate, m.prompt_tokens, m.completion_tokens
                    )
                )
            )  # fmt: skip
        return series

    def _count_request(self, model: str, node: str, dialect: str, status: int) -> None:
        key = (model, node, dialect, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(model, node, dialect, str(status))
            self._request_counters[key] = counter
        counter.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        recorded = path[:4] == "/v1/" or path in OLLAMA_RECORDED
        if scope["type"] != "http" or scope.get("method") != "POST" or not recorded:
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        current = RequestRecord(request_id=request_id, dialect=_dialect(path))
        token = current_record.set(current)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                current.starting_response(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", current.request_id.encode()))
                if current.overhead_s is not None:
                    overhead_ms = f"{current.overhead_s * 1000:.3f}".encode()
                    headers.append((OVERHEAD_HEADER.encode(), overhead_ms))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_headers)
        except BaseException:
            current.status = current.status or 500
            raise
        finally:
            current_record.reset(token)
            self._write(current)

    def _write(self, done: RequestRecord) -> None:
        now = time.perf_counter()
        duration = now - done.started
        model, node = done.model or _NONE, done.node or _NONE
        self._count_request(model, node, done.dialect, done.status or 499)
        series = self._series_of(model, node)
        series.duration.observe(duration)
        ttft = done.ttft_s()
        rate = None
        if ttft is not None:
            series.ttft.observe(ttft)
            if done.completion_tokens > 1 and duration > ttft:
                rate = (done.completion_tokens - 1) / (duration - ttft)
                series.output_rate.observe(rate)
        if done.prompt_tokens:
            series.prompt_tokens.inc(done.prompt_tokens)
        if done.completion_tokens:
            series.completion_tokens.inc(done.completion_tokens)
        done.metered = (done.prompt_tokens, done.completion_tokens)
        if done.overhead_s is not None and done.status < 400:
            self._metrics.overhead.observe(done.overhead_s)
        self._recent.add(
            RequestSample(
                at=time.time(),
                model=model,
                node=node,
                dialect=done.dialect,
                status=done.status,
                duration_s=duration,
                ttft_s=ttft,
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                tokens_per_s=rate,
            )
        )
        fields = {
            "request_id": done.request_id,
            "key_id": done.key_id or None,  # the key's id, never the key
            "model": model,
            "node": node,
            "dialect": done.dialect,
            "status": done.status,
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
            "latency_ms": round(duration * 1000, 1),
        }
        log.info(
            "request %s model=%s node=%s dialect=%s status=%s tokens=%d+%d ttft_ms=%s "
            "latency_ms=%.1f",
            done.request_id,
            model,
            node,
            done.dialect,
            done.status,
            done.prompt_tokens,
            done.completion_tokens,
            fields["ttft_ms"],
            fields["latency_ms"],
            extra={"fields": fields},
        )
