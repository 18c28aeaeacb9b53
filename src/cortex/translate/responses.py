"""OpenAI chat completion (a decoded JSON dict) -> Anthropic ``Message``.

Also the decisions the stream converter shares, so a streamed answer and the
same answer returned whole agree: the stop reason, tool input, usage.

Stop sequences: OpenAI says ``finish_reason: "stop"`` both for the end of the
turn and for a stop string, and leaves the string out of the text. Which one
matched is read, in order, from

1. ``choices[].stop_reason`` when it is a string (vLLM's extension; an int
   there is the EOS token id), or ``choices[].stop_sequence`` (cortex neurons);
2. the end of the generated text, for backends that leave the stop string in;

and counts only if it is one of the request's ``stop_sequences``. Otherwise
the stop is ``end_turn``.

Length: a neuron clamps ``max_tokens`` to the room the prompt leaves in the
context (clients ask for 32k or 128k), so ``finish_reason: "length"`` with fewer
tokens than the request's ``max_tokens`` means the context window ended the
answer: ``model_context_window_exceeded``, as Anthropic's API says it. Reported as
``max_tokens``, Claude Code asks the model to go on, in a prompt that can no
longer fit, and tells its user the 128000-token output limit was exceeded.

A length cut inside a tool call (OpenAI: ``finish_reason: "length"`` with the call,
its arguments the JSON generated so far) is ``max_tokens`` with the tool_use block,
as Anthropic's API gives it; the block's ``input`` is what can be read of the cut
JSON (``partial_input``; also for a call the model itself closed early, rather than a
502 for the model's slip). A stream passes the fragments on as they came.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cortex.errors import UpstreamError
from cortex.protocol import anthropic as an
from cortex.translate import ids
from cortex.translate.thinking import ThinkSplitter, signature_for

_TOOL_FINISHES = {"tool_calls", "function_call", "tool"}  # "tool": llama.cpp, legacy
_FINISH_TO_STOP: dict[str, an.StopReason] = {"length": "max_tokens", "content_filter": "refusal"}


def to_message(
    completion: Mapping[str, Any],
    *,
    model: str | None = None,
    stop_sequences: Sequence[str] = (),
    message_id: str | None = None,
    max_tokens: int | None = None,
) -> an.Message:
    """The Anthropic message for a non-streamed chat completion.

    ``model`` is the name the client asked for (the backend's name otherwise);
    ``stop_sequences`` are the request's, to tell a stop string from the end of turn;
    ``max_tokens`` the request's, to tell its limit from the end of the context.
    """
    choices = completion.get("choices") or []
    if not choices:
        raise UpstreamError("The backend answered without a choice.", code="empty_choices")
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content") or ""
    msg_id = message_id or ids.message_id(completion.get("id"))

    thinking = reasoning_of(message)
    text = ""
    splitter = ThinkSplitter()
    for kind, piece in [*splitter.feed(content), *splitter.finish()]:
        if kind == "thinking":
            thinking += piece
        else:
            text += piece
    blocks: list[an.TextBlock | an.ThinkingBlock | an.ToolUseBlock] = []
    if thinking:
        blocks.append(an.ThinkingBlock(thinking=thinking, signature=signature_for(thinking)))
    if text.strip():  # whitespace alone (before a tool call, say) is no answer
        blocks.append(an.TextBlock(text=text))
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        blocks.append(
            an.ToolUseBlock(
                id=ids.to_anthropic_tool_id(call.get("id") or ids.fallback_call_id(msg_id, index)),
                name=function.get("name") or "",
                input=partial_input(arguments),
            )
        )
    usage = usage_of(completion.get("usage"))
    reason, sequence = stop_reason(
        choice.get("finish_reason"),
        tool_use=any(isinstance(b, an.ToolUseBlock) for b in blocks),
        matched=matched_stop(choice),
        text=content,
        stop_sequences=stop_sequences,
        max_tokens=max_tokens,
        output_tokens=usage.output_tokens,
    )
    return an.Message(
        id=msg_id,
        model=model or str(completion.get("model") or ""),
        content=blocks,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=usage,
    )


def reasoning_of(delta_or_message: Mapping[str, Any]) -> str:
    """Reasoning a backend returns apart from the content (vLLM, llama.cpp, DeepSeek)."""
    value = delta_or_message.get("reasoning_content") or delta_or_message.get("reasoning")
    return value if isinstance(value, str) else ""


def matched_stop(choice: Mapping[str, Any]) -> str | None:
    """The stop string a backend says it matched, from its non-standard fields."""
    for key in ("stop_reason", "stop_sequence"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def stop_reason(
    finish_reason: str | None,
    *,
    tool_use: bool,
    matched: str | None,
    text: str,
    stop_sequences: Sequence[str],
    max_tokens: int | None = None,
    output_tokens: int = 0,
) -> tuple[an.StopReason, str | None]:
    """``(stop_reason, stop_sequence)``; tool calls win whatever the backend said, but
    for a length cut (which may have cut a call short).

    ``output_tokens`` below the request's ``max_tokens`` at a ``length`` finish: the
    context window ended the answer, not the request's limit.
    """
    if finish_reason == "length" and max_tokens is not None and 0 < output_tokens < max_tokens:
        return "model_context_window_exceeded", None
    if tool_use and finish_reason != "length":
        return "tool_use", None
    if finish_reason in _FINISH_TO_STOP:
        return _FINISH_TO_STOP[finish_reason], None
    stops = [s for s in stop_sequences if s]
    if matched is not None and matched in stops:
        return "stop_sequence", matched
    tails = [s for s in stops if text.endswith(s)]
    if tails:
        return "stop_sequence", max(tails, key=len)
    # "stop", a tool finish without tool calls, or no finish at all (a cut stream).
    return "end_turn", None


def partial_input(arguments: str) -> dict[str, Any]:
    """The object a tool call's arguments cut short were becoming, as far as they go.

    Best effort, for a call that ``max_tokens`` ended (or that the model closed before
    its JSON was whole: its deltas were streamed as they came, so it stays a call): the
    text up to its last whole value, an unfinished string value closed, the brackets
    still open closed; ``{}`` when nothing of it reads as an object.
    """
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        value = _close_cut_json(arguments)
    return value if isinstance(value, dict) else {}


# How many ways to end a cut JSON text are tried, latest first, before giving up.
_CLOSING_TRIES = 8


def _close_cut_json(text: str) -> Any:
    closers: list[str] = []  # what closes each open bracket, innermost last
    ends: list[tuple[int, str]] = []  # (a length the text may be cut to, what then closes it)
    key = False  # whether a string starting here is an object key
    string_at: int | None = None  # where the string being read opened
    string_is_key = False
    escape_at = -1  # where the last escape in a string began
    escaped = False
    for at, char in enumerate(text):
        if string_at is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped, escape_at = True, at
            elif char == '"':
                string_at = None
                if not string_is_key:
                    ends.append((at + 1, "".join(reversed(closers))))
        elif char == '"':
            string_at, string_is_key = at, key
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
            key = char == "{"
            ends.append((at + 1, "".join(reversed(closers))))
        elif char in "}]" and closers:
            closers.pop()
            key = False
            ends.append((at + 1, "".join(reversed(closers))))
        elif char == "," and closers:
            ends.append((at, "".join(reversed(closers))))  # the value before it was whole
            key = closers[-1] == "}"
        elif char == ":":
            key = False
    closing = "".join(reversed(closers))
    if string_at is None:
        ends.append((len(text), closing))  # a number or literal at the end may be whole
    elif not string_is_key:  # a string value cut short: closed where it stops
        unicode = text[escape_at + 1 : escape_at + 2] == "u" and len(text) - escape_at < 6
        if escape_at > string_at and (escaped or unicode):  # an escape cut short
            text = text[:escape_at]
        ends.append((len(text), '"' + closing))
    for length, end in reversed(ends[-_CLOSING_TRIES:]):
        try:
            return json.loads(text[:length] + end)
        except (ValueError, RecursionError):
            continue
    return None


def usage_of(usage: Mapping[str, Any] | None) -> an.Usage:
    """Prompt tokens are all reported as ``input_tokens``; cache fields stay 0."""
    usage = usage or {}
    return an.Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )
