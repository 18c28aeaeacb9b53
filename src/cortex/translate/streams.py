"""OpenAI chat completion chunks -> Anthropic stream events, one chunk at a time.

The Anthropic SDK appends a block on each ``content_block_start`` and finds it
again by ``index``, so the events must be: ``message_start``; blocks numbered
0..n-1 in start order, one open at a time, each start -> deltas -> stop; one
``message_delta`` with the stop reason and cumulative usage; ``message_stop``.
``StreamTranslator`` keeps that order whatever the chunking:

- reasoning (``reasoning_content`` or a leading ``<think>``) is a thinking
  block, closed by a ``signature_delta`` then its stop;
- text is a text block, opened only once it holds more than whitespace;
- each OpenAI tool-call ``index`` is its own tool_use block, opened once its
  name is known (argument fragments sent before that are held), its fragments
  forwarded untouched as ``input_json_delta`` (``{}`` when it sent none), as
  they arrive; after a length cut the last one's JSON is cut short too, as in
  Anthropic's own streams (the stop reason is then ``max_tokens``);
- ``finish_reason`` is held until ``finish()``: usage comes after it.

The whole-response converter (``responses.py``) makes the same decisions, so a
stream reassembles to the message the same completion gives unstreamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.errors import CortexError, RelayedError, UpstreamError
from cortex.protocol import anthropic as an
from cortex.protocol.errors import anthropic_error_body
from cortex.protocol.sse import event_frame
from cortex.translate import ids
from cortex.translate.responses import matched_stop, reasoning_of, stop_reason
from cortex.translate.thinking import ThinkSplitter, signature_for

Events = list[an.StreamEvent]


@dataclass
class _Tool:
    """One OpenAI tool-call index: what is known of it, and its block once opened."""

    index: int
    id: str | None = None
    name: str | None = None
    held: list[str] = field(default_factory=list)  # argument fragments before the name
    block: int | None = None
    closed: bool = False


@dataclass
class _Open:
    kind: Literal["text", "thinking", "tool_use"]
    index: int
    thinking: str = ""  # the block's reasoning so far, for its signature
    tool: _Tool | None = None
    sent_json: bool = False


class StreamTranslator:
    """Feed it the chunks of one OpenAI stream; send what it returns, in order.

    ``model`` is the name the client asked for; ``input_tokens`` the prompt's
    token count, known before streaming (``message_start`` must carry it);
    ``stop_sequences`` the request's, to tell a stop string from the end of turn;
    ``max_tokens`` the request's, to tell its limit from the end of the context.
    Call ``finish()`` when the upstream stream ends (``[DONE]``), or ``fail()``
    with the error that ended it. Every method returns the events to send now.
    """

    def __init__(
        self,
        *,
        model: str,
        input_tokens: int,
        stop_sequences: Sequence[str] = (),
        message_id: str | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._max_tokens = max_tokens
        self._input_tokens = input_tokens
        self._stops = [s for s in stop_sequences if s]
        self._tail_size = max((len(s) for s in self._stops), default=0)
        self._message_id = message_id
        self._started = False
        self._done = False
        self._next_index = 0
        self._open: _Open | None = None
        self._tools: dict[int, _Tool] = {}
        self._splitter = ThinkSplitter()
        self._blank = ""  # whitespace waiting to see whether a text block follows
        self._tail = ""  # the end of the text, for stop strings left in it
        self._finish_reason: str | None = None
        self._matched: str | None = None
        self._usage: Mapping[str, Any] = {}

    @property
    def done(self) -> bool:
        return self._done

    def start(self, message_id: str | None = None) -> Events:
        """``message_start``, once; the first ``feed`` calls it if the gateway has not."""
        if self._started:
            return []
        self._started = True
        self._message_id = self._message_id or ids.message_id(message_id)
        message = an.Message(
            id=self._message_id,
            model=self._model,
            content=[],
            stop_reason=None,
            # Claude Code breaks on 0 input tokens; every real prompt has at least one.
            usage=an.Usage(input_tokens=max(1, self._input_tokens), output_tokens=0),
        )
        return [an.MessageStartEvent(message=message)]

    def feed(self, chunk: Mapping[str, Any]) -> Events:
        """The events for one decoded ``chat.completion.chunk`` (or an error payload)."""
        if self._done:
            return []
        if chunk.get("error"):
            return self.fail(chunk_error(chunk["error"]))
        events = self.start(chunk.get("id"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Anthropic form; the request never asks for it
            delta = choice.get("delta") or {}
            reasoning = reasoning_of(delta)
            if reasoning:
                events += self._thinking(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._remember_tail(content)
                events += self._pieces(self._splitter.feed(content))
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._matched = matched_stop(choice) or self._matched
        return events

    def finish(self) -> Events:
        """The upstream stream ended: close what is open, then the stop reason and usage."""
        if self._done:
            return []
        events = self.start() + self._pieces(self._splitter.finish())
        for tool in sorted(self._tools.values(), key=lambda t: t.index):
            if tool.block is None:  # never named: open it now rather than lose it
                events += self._open_tool(tool)
        events += self._close()
        usage = an.MessageDeltaUsage(
            input_tokens=int(self._usage.get("prompt_tokens") or self._input_tokens),
            output_tokens=int(self._usage.get("completion_tokens") or 0),
        )
        reason, sequence = stop_reason(
            self._finish_reason,
            tool_use=bool(self._tools),
            matched=self._matched,
            text=self._tail,
            stop_sequences=self._stops,
            max_tokens=self._max_tokens,
            output_tokens=usage.output_tokens,
        )
        self._done = True
        return [
            *events,
            an.MessageDeltaEvent(
                delta=an.MessageDelta(stop_reason=reason, stop_sequence=sequence), usage=usage
            ),
            an.MessageStopEvent(),
        ]

    def fail(self, error: CortexError) -> Events:
        """The stream broke: one ``error`` event, in the Anthropic envelope; nothing after."""
        if self._done:
            return []
        self._done = True
        return [an.ErrorEvent.model_validate(anthropic_error_body(error))]

    # --- blocks -------------------------------------------------------------

    def _pieces(self, pieces: list[tuple[str, str]]) -> Events:
        events: Events = []
        for kind, piece in pieces:
            events += self._thinking(piece) if kind == "thinking" else self._text(piece)
        return events

    def _text(self, text: str) -> Events:
        if self._open is not None and self._open.kind == "text":
            return [self._delta(an.TextDelta(text=text))]
        if not text.strip():
            self._blank += text
            return []
        text, self._blank = self._blank + text, ""
        return [*self._begin("text", an.TextBlock(text="")), self._delta(an.TextDelta(text=text))]

    def _thinking(self, thinking: str) -> Events:
        events: Events = []
        if self._open is None or self._open.kind != "thinking":
            events += self._begin("thinking", an.ThinkingBlock(thinking="", signature=""))
        assert self._open is not None
        self._open.thinking += thinking
        return [*events, self._delta(an.ThinkingDelta(thinking=thinking))]

    def _tool_delta(self, call: Mapping[str, Any]) -> Events:
        events: Events = []
        if not self._tools:  # text held back for a possible <think> is decided now
            events += self._pieces(self._splitter.finish())
        index = int(call.get("index") or 0)
        tool = self._tools.setdefault(index, _Tool(index))
        function = call.get("function") or {}
        tool.id = tool.id or call.get("id") or None
        tool.name = tool.name or function.get("name") or None
        fragment = function.get("arguments") or ""
        if tool.closed:
            if fragment:
                raise UpstreamError(
                    "The backend interleaved the arguments of parallel tool calls.",
                    code="interleaved_tool_calls",
                )
            return events
        if tool.block is not None:
            return events + ([self._json(fragment)] if fragment else [])
        tool.held.append(fragment)
        if tool.name is not None:
            events += self._open_tool(tool)
        return events

    def _open_tool(self, tool: _Tool) -> Events:
        assert self._message_id is not None
        backend_id = tool.id or ids.fallback_call_id(self._message_id, tool.index)
        block = an.ToolUseBlock(
            id=ids.to_anthropic_tool_id(backend_id), name=tool.name or "", input={}
        )
        events = self._begin("tool_use", block)
        assert self._open is not None
        self._open.tool = tool
        tool.block = self._open.index
        held, tool.held = "".join(tool.held), []
        return events + ([self._json(held)] if held else [])

    def _json(self, fragment: str) -> an.ContentBlockDeltaEvent:
        assert self._open is not None
        self._open.sent_json = True
        return self._delta(an.InputJsonDelta(partial_json=fragment))

    def _begin(
        self, kind: Literal["text", "thinking", "tool_use"], block: an.ResponseBlock
    ) -> Events:
        events = self._close()
        self._blank = ""
        self._open = _Open(kind, self._next_index)
        self._next_index += 1
        return [*events, an.ContentBlockStartEvent(index=self._open.index, content_block=block)]

    def _delta(self, delta: an.BlockDelta) -> an.ContentBlockDeltaEvent:
        assert self._open is not None
        return an.ContentBlockDeltaEvent(index=self._open.index, delta=delta)

    def _close(self) -> Events:
        if self._open is None:
            return []
        events: Events = []
        if self._open.kind == "thinking":
            signature = signature_for(self._open.thinking)
            events.append(self._delta(an.SignatureDelta(signature=signature)))
        elif self._open.kind == "tool_use":
            if not self._open.sent_json:  # the joined fragments must be valid JSON
                events.append(self._json("{}"))
            assert self._open.tool is not None
            self._open.tool.closed = True
        events.append(an.ContentBlockStopEvent(index=self._open.index))
        self._open = None
        return events

    def _remember_tail(self, content: str) -> None:
        if self._tail_size:
            self._tail = (self._tail + content)[-self._tail_size :]


# OpenAI error types as statuses, to rebuild a typed error from a mid-stream payload.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "service_unavailable_error": 503,
    "insufficient_memory_error": 507,
}


def chunk_error(payload: Any) -> CortexError:
    detail = payload if isinstance(payload, Mapping) else {"message": str(payload)}
    message = str(detail.get("message") or "The backend failed mid-stream.")
    status = _STATUS_OF_TYPE.get(str(detail.get("type")), 502)
    code = detail.get("code")
    return RelayedError(message, status=status, code=code if isinstance(code, str) else None)


def encode_event(event: an.StreamEvent) -> bytes:
    """One SSE frame; the ``event:`` name is what the SDKs dispatch on."""
    return event_frame(event.type, event.model_dump_json().encode())


async def anthropic_sse(
    chunks: AsyncIterable[Mapping[str, Any]], translator: StreamTranslator
) -> AsyncIterator[bytes]:
    """The SSE body for a stream of decoded OpenAI chunks; a ``CortexError`` raised
    by the source (or by the translator) ends it with an in-band ``error`` event."""
    try:
        async for chunk in chunks:
            for event in translator.feed(chunk):
                yield encode_event(event)
            if translator.done:
                return
        events = translator.finish()
    except CortexError as error:
        events = translator.fail(error)
    for event in events:
        yield encode_event(event)
