"""OpenAI chat completion chunks -> Responses stream events, one chunk at a time.

The events OpenAI sends, and the official SDK folds (it looks items up by
``output_index`` and parts by ``content_index``, and wants one ``response.created``
first and the same response id throughout):

    response.created, response.in_progress                      (status in_progress)
    per output item, one open at a time, numbered 0..n-1 in order:
      response.output_item.added
        message:   content_part.added, output_text.delta..., output_text.done,
                   content_part.done
        reasoning: content_part.added, reasoning_text.delta..., reasoning_text.done,
                   content_part.done
        function_call: function_call_arguments.delta..., function_call_arguments.done
      response.output_item.done
    response.completed, or response.incomplete after a length cut
    (on a fault instead: response.failed, then error; nothing after)

``sequence_number`` counts every event from 0. Reasoning (``reasoning_content``, or a
leading ``<think>``) is a reasoning item; text a message item, opened once it holds more
than whitespace; each chat tool-call ``index`` a function_call item, opened once its
name is known (argument fragments before that are held). ``finish_reason`` and usage
are held until ``finish()``; the final response is ``translate.openai_responses.finished``
over the same items, as for an answer given whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.errors import CortexError, UpstreamError
from cortex.protocol import openai_responses as rs
from cortex.protocol.sse import event_frame
from cortex.translate.openai_responses import (
    call_id,
    call_item,
    finished,
    item_id,
    message_item,
    reasoning_item,
)
from cortex.translate.responses import reasoning_of
from cortex.translate.streams import chunk_error
from cortex.translate.thinking import ThinkSplitter

Events = list[rs.StreamEvent]
Kind = Literal["message", "reasoning", "function_call"]


@dataclass
class _Tool:
    """One chat tool-call index: what is known of it, and its item once opened."""

    index: int
    id: str | None = None
    name: str | None = None
    call_id: str = ""  # the id the client sees, chosen when its item opens
    held: list[str] = field(default_factory=list)  # argument fragments before the name
    opened: bool = False
    closed: bool = False


@dataclass
class _Open:
    kind: Kind
    index: int  # output_index
    id: str
    text: str = ""  # the text, reasoning or arguments so far
    tool: _Tool | None = None


class ResponseStream:
    """Feed it the chunks of one chat stream; send what it returns, in order.

    ``base`` is the response before any output (``echo``); ``names`` maps function names
    to their namespace tool. Call ``finish()`` when the chat stream ends (``[DONE]``),
    or ``fail()`` with the error that ended it. ``final`` is the response once it ended.
    """

    def __init__(self, base: rs.Response, names: Mapping[str, str] | None = None) -> None:
        self._base = base
        self._names = dict(names or {})
        self._input_tokens = 0
        self._sequence = 0
        self._started = False
        self.final: rs.Response | None = None
        self._items: list[rs.OutputItem] = []  # closed ones
        self._open: _Open | None = None
        self._tools: dict[int, _Tool] = {}
        self._call_ids: set[str] = set()
        self._splitter = ThinkSplitter()
        self._blank = ""  # whitespace waiting to see whether a message follows
        self._finish_reason: str | None = None
        self._usage: Mapping[str, Any] = {}
        self._out: Events = []

    @property
    def done(self) -> bool:
        return self.final is not None

    @property
    def started(self) -> bool:
        return self._started

    def start(self, input_tokens: int = 0) -> Events:
        """``response.created`` and ``.in_progress``, once; ``feed`` calls it if need be."""
        self._input_tokens = input_tokens or self._input_tokens
        if self._started:
            return []
        self._started = True
        self._emit(rs.LifecycleEvent(type="response.created", response=self._base))
        self._emit(rs.LifecycleEvent(type="response.in_progress", response=self._base))
        return self._sent()

    def feed(self, chunk: Mapping[str, Any]) -> Events:
        """The events for one decoded ``chat.completion.chunk`` (or an error payload)."""
        if self.done:
            return []
        if chunk.get("error"):
            return self.fail(chunk_error(chunk["error"]))
        self._out = self.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses form; the request never asks for it
            delta = choice.get("delta") or {}
            if reasoning := reasoning_of(delta):
                self._reasoning(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._pieces(self._splitter.feed(content))
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return self._sent()

    def finish(self) -> Events:
        """The chat stream ended: close what is open, then the final response."""
        if self.done:
            return []
        self._out = self.start()
        self._pieces(self._splitter.finish())
        for tool in sorted(self._tools.values(), key=lambda t: t.index):
            if not tool.opened:  # never named: open it now rather than lose it
                self._open_tool(tool)
        if not self._items and self._open is None:  # nothing but whitespace, or nothing
            blank, self._blank = self._blank, ""
            self._begin("message")
            if blank:
                self._delta(blank)
        usage = self._usage or {"prompt_tokens": self._input_tokens}
        pending = [*self._items, *([self._item(self._open)] if self._open else [])]
        final = finished(self._base, pending, self._finish_reason, usage)
        if self._open is not None:
            self._close(final.output[-1])
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        self._emit(rs.LifecycleEvent(type=kind, response=final))
        self.final = final
        return self._sent()

    def fail(self, error: CortexError) -> Events:
        """The stream broke: ``response.failed``, then ``error``; nothing after. A stream
        that fails before its first chunk (a cold load that failed) begins first: the
        SDK and Codex read a failure from ``response.failed``, after ``response.created``."""
        if self.done:
            return []
        self._out = self.start()
        code = error.code or _failure_code(error)  # context_length_exceeded: Codex knows it
        failed = self._base.model_copy(
            update={
                "status": "failed",
                "error": rs.ResponseError(code=code, message=error.message),
                "output": [*self._items, *([self._item(self._open)] if self._open else [])],
            }
        )
        self._emit(rs.LifecycleEvent(type="response.failed", response=failed))
        self._emit(rs.ErrorEvent(code=code, message=error.message, param=error.param))
        self.final = failed
        return self._sent()

    # --- items -----------------------------------------------------------------

    def _pieces(self, pieces: list[tuple[str, str]]) -> None:
        for kind, piece in pieces:
            self._reasoning(piece) if kind == "thinking" else self._text(piece)

    def _text(self, text: str) -> None:
        if self._open is None or self._open.kind != "message":
            if not text.strip():
                self._blank += text
                return
            text, self._blank = self._blank + text, ""
            self._begin("message")
        self._delta(text)

    def _reasoning(self, text: str) -> None:
        if self._open is None or self._open.kind != "reasoning":
            self._begin("reasoning")
        self._delta(text)

    def _tool_delta(self, call: Mapping[str, Any]) -> None:
        if not self._tools:  # text held back for a possible <think> is decided now
            self._pieces(self._splitter.finish())
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
            return
        if tool.opened:
            if fragment:
                self._delta(fragment)
            return
        tool.held.append(fragment)
        if tool.name is not None:
            self._open_tool(tool)

    def _open_tool(self, tool: _Tool) -> None:
        tool.call_id = call_id(tool.id, self._call_ids, self._base.id, tool.index)
        self._begin("function_call", tool)
        tool.opened = True
        held, tool.held = "".join(tool.held), []
        if held:
            self._delta(held)

    def _begin(self, kind: Kind, tool: _Tool | None = None) -> None:
        if self._open is not None:
            self._close(self._item(self._open).model_copy(update={"status": "completed"}))
        if kind != "message":
            self._blank = ""
        index = len(self._items)
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        self._open = _Open(kind, index, item_id(prefix, self._base.id, index), tool=tool)
        empty = self._item(self._open)
        if isinstance(empty, rs.OutputMessage | rs.OutputReasoning):
            empty = empty.model_copy(update={"content": []})
        self._emit(
            rs.OutputItemEvent(type="response.output_item.added", output_index=index, item=empty)
        )
        part = _part(self._open, "")
        if part is not None:
            self._emit(self._part_event("response.content_part.added", part))

    def _delta(self, text: str) -> None:
        opened = self._open
        assert opened is not None
        opened.text += text
        where = {"item_id": opened.id, "output_index": opened.index}
        if opened.kind == "message":
            self._emit(rs.TextDeltaEvent(**where, content_index=0, delta=text))
        elif opened.kind == "reasoning":
            self._emit(rs.ReasoningDeltaEvent(**where, content_index=0, delta=text))
        else:
            self._emit(rs.ArgumentsDeltaEvent(**where, delta=text))

    def _close(self, item: rs.OutputItem) -> None:
        """Ends the open item as ``item`` (its final form, status decided)."""
        opened = self._open
        assert opened is not None
        where = {"item_id": opened.id, "output_index": opened.index}
        if opened.kind == "message":
            self._emit(rs.TextDoneEvent(**where, content_index=0, text=opened.text))
        elif opened.kind == "reasoning":
            self._emit(rs.ReasoningDoneEvent(**where, content_index=0, text=opened.text))
        else:
            assert isinstance(item, rs.OutputFunctionCall) and opened.tool is not None
            if not opened.text:  # the joined deltas must be the arguments
                self._delta("{}")
            opened.tool.closed = True
            self._emit(rs.ArgumentsDoneEvent(**where, name=item.name, arguments=item.arguments))
        part = _part(opened, opened.text)
        if part is not None:
            self._emit(self._part_event("response.content_part.done", part))
        self._emit(
            rs.OutputItemEvent(
                type="response.output_item.done", output_index=opened.index, item=item
            )
        )
        self._items.append(item)
        self._open = None

    def _item(self, opened: _Open) -> rs.OutputItem:
        """The open item as it stands (status ``in_progress``)."""
        if opened.kind == "message":
            return message_item(self._base.id, opened.index, opened.text)
        if opened.kind == "reasoning":
            return reasoning_item(self._base.id, opened.index, opened.text)
        tool = opened.tool
        assert tool is not None
        return call_item(
            self._base.id,
            opened.index,
            call_id=tool.call_id,
            name=tool.name or "",
            arguments=opened.text or "{}",
            namespace=self._names.get(tool.name or ""),
        )

    def _part_event(
        self,
        kind: Literal["response.content_part.added", "response.content_part.done"],
        part: rs.OutputText | rs.ReasoningText,
    ) -> rs.ContentPartEvent:
        assert self._open is not None
        return rs.ContentPartEvent(
            type=kind,
            item_id=self._open.id,
            output_index=self._open.index,
            content_index=0,
            part=part,
        )

    def _emit(self, event: rs.StreamEvent) -> None:
        event.sequence_number = self._sequence
        self._sequence += 1
        self._out.append(event)

    def _sent(self) -> Events:
        out, self._out = self._out, []
        return out


def _part(opened: _Open, text: str) -> rs.OutputText | rs.ReasoningText | None:
    if opened.kind == "message":
        return rs.OutputText(text=text)
    if opened.kind == "reasoning":
        return rs.ReasoningText(text=text)
    return None


def _failure_code(error: CortexError) -> str:
    """A failed response's ``error.code``, among the ones OpenAI documents."""
    if error.status == 429:
        return "rate_limit_exceeded"
    if error.status == 400:
        return "invalid_prompt"
    return "server_error"


def encode_event(event: rs.StreamEvent) -> bytes:
    """One SSE frame; the ``event:`` name is the event's type, as OpenAI sends it."""
    return event_frame(event.type, event.model_dump_json().encode())
