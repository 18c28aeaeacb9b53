"""How a neuron's OpenAI stream reaches a client, per dialect.

The proxy hands a renderer the upstream response and its raw byte chunks (which
raise ``UpstreamError`` when the node cuts the stream); the renderer yields what
the client's SDK expects, ending with that dialect's error event on a failure.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any, Protocol

from cortex.errors import CortexError, UpstreamError
from cortex.protocol.errors import anthropic_error_body, openai_error_body
from cortex.protocol.sse import PROMPT_TOKENS_HEADER, data_frame, data_payloads, event_frame
from cortex.translate.streams import StreamTranslator, anthropic_sse

__all__ = ["PROMPT_TOKENS_HEADER", "AnthropicRenderer", "OpenAIRenderer", "Renderer"]


class Renderer(Protocol):
    def frames(self, prompt_tokens: int, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The client's stream, from the upstream's raw chunks."""
        ...

    def error(self, error: CortexError) -> bytes:
        """One frame that ends a stream with ``error``."""
        ...


class OpenAIRenderer:
    """Pass-through: the neuron already speaks the client's dialect."""

    async def frames(
        self, prompt_tokens: int, chunks: AsyncIterable[bytes]
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except UpstreamError as error:
            yield self.error(error)

    def error(self, error: CortexError) -> bytes:
        return data_frame(json.dumps(openai_error_body(error)).encode())


class AnthropicRenderer:
    """OpenAI chunks in, Anthropic Messages events out."""

    def __init__(
        self, client_model: str, stop_sequences: Sequence[str], max_tokens: int | None = None
    ) -> None:
        self._model = client_model
        self._stops = stop_sequences
        self._max_tokens = max_tokens

    def frames(self, prompt_tokens: int, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        translator = StreamTranslator(
            model=self._model,
            input_tokens=prompt_tokens,
            stop_sequences=self._stops,
            max_tokens=self._max_tokens,
        )
        return anthropic_sse(_decoded(chunks), translator)

    def error(self, error: CortexError) -> bytes:
        return event_frame("error", json.dumps(anthropic_error_body(error)).encode())


async def _decoded(chunks: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    async for payload in data_payloads(chunks):
        if payload == b"[DONE]":
            return
        yield json.loads(payload)
