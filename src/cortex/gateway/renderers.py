"""How a neuron's OpenAI stream reaches a client, per dialect.

The proxy owns the one loop over a stream: it reads the upstream's SSE events and
hands each to the request's renderer, which returns what the client's SDK expects
for it (often nothing yet), and ends the stream with the dialect's error event when
the node fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cortex.errors import CortexError, UpstreamError
from cortex.gateway.recording import record
from cortex.protocol import openai_responses as rs
from cortex.protocol.errors import anthropic_error_body, openai_error_body
from cortex.protocol.ollama import error_line
from cortex.protocol.sse import data_frame, data_of, event_frame
from cortex.translate.ollama import Kind, OllamaStream, Timings
from cortex.translate.openai_responses_stream import ResponseStream
from cortex.translate.openai_responses_stream import encode_event as encode_response_event
from cortex.translate.streams import StreamTranslator, chunk_error, encode_event


class Renderer(Protocol):
    media_type: str  # of the client's stream

    def start(self, prompt_tokens: int) -> None:
        """The upstream answered; its prompt is ``prompt_tokens`` long."""
        ...

    def event(self, event: bytes) -> bytes:
        """The client's bytes for one upstream SSE event (blank line included)."""
        ...

    def error(self, error: CortexError) -> bytes:
        """What ends the client's stream with ``error``."""
        ...

    def waiting(self, model_id: str) -> bytes:
        """What keeps the client's stream alive while ``model_id`` loads: bytes its
        client ignores."""
        ...


class _ServerSentEvents:
    """Renderers whose client reads server-sent events: a comment keeps it waiting."""

    media_type = "text/event-stream"

    def waiting(self, model_id: str) -> bytes:
        return f": loading {model_id}\n\n".encode()


class OpenAIRenderer(_ServerSentEvents):
    """Pass-through: the neuron already speaks the client's dialect. Holds no state,
    so one serves every request."""

    def start(self, prompt_tokens: int) -> None:
        pass

    def event(self, event: bytes) -> bytes:
        return event

    def error(self, error: CortexError) -> bytes:
        return data_frame(json.dumps(openai_error_body(error)).encode())


class AnthropicRenderer(_ServerSentEvents):
    """OpenAI chunks in, Anthropic Messages events out; one per request."""

    def __init__(
        self, client_model: str, stop_sequences: Sequence[str], max_tokens: int | None = None
    ) -> None:
        self._model = client_model
        self._stops = stop_sequences
        self._max_tokens = max_tokens
        self._translator: StreamTranslator | None = None

    def start(self, prompt_tokens: int) -> None:
        self._translator = StreamTranslator(
            model=self._model,
            input_tokens=prompt_tokens,
            stop_sequences=self._stops,
            max_tokens=self._max_tokens,
        )

    def event(self, event: bytes) -> bytes:
        assert self._translator is not None, "start() first"
        payload = data_of(event)
        if payload is None:  # a comment: the neuron's report
            return b""
        if payload == b"[DONE]":
            events = self._translator.finish()
        else:
            events = self._translator.feed(_chunk(payload))
        return b"".join(encode_event(e) for e in events)

    def error(self, error: CortexError) -> bytes:
        if self._translator is None:  # failed before the upstream answered
            return event_frame("error", json.dumps(anthropic_error_body(error)).encode())
        return b"".join(encode_event(e) for e in self._translator.fail(error))


class ResponsesRenderer(_ServerSentEvents):
    """OpenAI chunks in, OpenAI Responses events out; one per request. ``on_final`` gets
    the final response (completed, incomplete or failed) once the stream has ended."""

    def __init__(
        self,
        stream: ResponseStream,
        on_final: Callable[[rs.Response], None] | None = None,
    ) -> None:
        self._stream = stream
        self._on_final = on_final
        self._prompt_tokens = 0

    def start(self, prompt_tokens: int) -> None:
        self._prompt_tokens = prompt_tokens

    def event(self, event: bytes) -> bytes:
        payload = data_of(event)
        if payload is None:  # a comment: the neuron's report
            return b""
        events = self._stream.start(self._prompt_tokens)  # nothing once started
        if payload == b"[DONE]":
            events += self._stream.finish()
        else:
            events += self._stream.feed(_chunk(payload))
        return self._rendered(events)

    def error(self, error: CortexError) -> bytes:
        return self._rendered(self._stream.fail(error))

    def _rendered(self, events: list[rs.StreamEvent]) -> bytes:
        if self._stream.final is not None and self._on_final is not None:
            on_final, self._on_final = self._on_final, None
            on_final(self._stream.final)
        return b"".join(encode_response_event(e) for e in events)


class OllamaRenderer:
    """OpenAI chunks in, Ollama's NDJSON lines out (``/api/chat``, ``/api/generate``)."""

    media_type = "application/x-ndjson"

    def __init__(self, client_model: str, kind: Kind, think: bool | str | None) -> None:
        self._stream = OllamaStream(model=client_model, kind=kind, think=think)

    def start(self, prompt_tokens: int) -> None:
        pass

    def event(self, event: bytes) -> bytes:
        payload = data_of(event)
        if payload is None:
            return b""
        if payload == b"[DONE]":
            chunks = self._stream.finish(measured())
        else:
            chunk = _chunk(payload)
            if chunk.get("error"):  # the neuron failed mid-stream: its message, as is
                return error_line(chunk_error(chunk["error"]))
            chunks = self._stream.feed(chunk)
        return b"".join(c.line() for c in chunks)

    def error(self, error: CortexError) -> bytes:
        return error_line(error)

    def waiting(self, model_id: str) -> bytes:
        """An empty chunk: the client adds nothing for it."""
        return self._stream.empty().line()


def measured() -> Timings:
    """The request's timings so far, from its record (``recording``): from arrival to
    now; waiting for a node (a load included); the neuron's time to first token; the
    generation after it."""
    current = record()
    if current is None:
        return Timings()
    now = time.perf_counter()
    ttft = current.upstream_ttft_s or 0.0
    upstream = now - current.sent_upstream if current.sent_upstream is not None else 0.0
    return Timings(
        total_s=now - current.started,
        load_s=current.waited_s,
        prompt_eval_s=ttft,
        eval_s=max(0.0, upstream - ttft),
    )


def _chunk(payload: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(payload)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamError("The node sent a stream event that is not a JSON object.")
    return chunk
