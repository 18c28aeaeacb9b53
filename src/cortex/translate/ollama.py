"""Ollama requests -> the OpenAI bodies a neuron serves; its answers -> Ollama's.

- ``/api/chat`` becomes ``/v1/chat/completions``; ``/api/generate`` too (``system``
  and ``prompt`` as two messages, the model's chat template applied, as Ollama
  applies it), or ``/v1/completions`` with ``raw: true`` (the prompt as it is).
- ``options``: ``num_predict`` -> ``max_tokens`` (a negative one: no limit),
  ``repeat_penalty`` -> ``repetition_penalty``; ``temperature``, ``top_p``,
  ``top_k``, ``min_p``, ``seed``, ``stop``, ``presence_penalty`` and
  ``frequency_penalty`` by name. Load-time options (``num_ctx``, ``num_gpu``...)
  are ignored: the model's profile in models.toml sets them.
- ``format: "json"`` -> ``response_format: json_object``; a JSON schema ->
  ``json_schema``: the neuron compiles either to a grammar.
- ``tool_choice`` (cortex's extension: Ollama has none) is passed on as OpenAI's.
- Tool calls carry no ids in Ollama: the assistant's calls get ``call_<turn>_<n>``
  and each tool message the id of the first unanswered call of its ``tool_name``
  (else the first unanswered call). Arguments are objects in Ollama, JSON text in
  OpenAI.
- Images refuse the request (400): no model the gateway serves can see them.
- Reasoning the model writes as a leading ``<think>…</think>`` is ``thinking``,
  dropped when the request says ``think: false``.

``keep_alive`` is read here (``keep_alive_s``) and applied by the gateway's scheduler:
that model's idle-unload time, 0 unloading it once the answer is done.

Answers: one ``OllamaStream`` turns the neuron's chunks into Ollama's chunks, and
the same decisions make the whole answer (``chat_answer``, ``generate_answer``), so
a stream joins up to the answer the same request gives unstreamed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.errors import InvalidRequest
from cortex.protocol import ollama as ol
from cortex.translate.thinking import ThinkSplitter

Kind = Literal["chat", "generate"]

NO_VISION = "images are not supported: no model this gateway serves can see them; send text only."
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


# --- requests ------------------------------------------------------------------------


def chat_body(request: ol.ChatRequest, model_id: str) -> dict[str, Any]:
    """The neuron's chat completion body for an ``/api/chat`` request."""
    body: dict[str, Any] = {"model": model_id, "messages": _messages(request.messages)}
    if request.tools:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    return {**body, **_sampling(request)}


def generate_body(request: ol.GenerateRequest, model_id: str) -> tuple[str, dict[str, Any]]:
    """The neuron path and body for an ``/api/generate`` request."""
    if request.images:
        raise InvalidRequest(NO_VISION, param="images")
    if request.context:
        raise InvalidRequest(
            "'context' is not supported: send the conversation to /api/chat instead.",
            param="context",
        )
    if request.template or request.suffix:
        param = "template" if request.template else "suffix"
        raise InvalidRequest(f"'{param}' is not supported by this server.", param=param)
    sampling = _sampling(request)
    if request.raw:
        return COMPLETIONS_PATH, {"model": model_id, "prompt": request.prompt or "", **sampling}
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages.append({"role": "user", "content": request.prompt or ""})
    return CHAT_PATH, {"model": model_id, "messages": messages, **sampling}


def embed_body(request: ol.EmbedRequest | ol.EmbeddingsRequest, model_id: str) -> dict[str, Any]:
    if isinstance(request, ol.EmbeddingsRequest):
        inputs: list[str] = [request.prompt]
    else:
        inputs = [request.input] if isinstance(request.input, str) else list(request.input)
    if not inputs or not all(inputs):
        raise InvalidRequest("'input' must hold at least one non-empty text.", param="input")
    body: dict[str, Any] = {"model": model_id, "input": inputs, "encoding_format": "float"}
    if isinstance(request, ol.EmbedRequest) and request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def _messages(messages: list[ol.Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the last calls, in order
    for turn, message in enumerate(messages):
        if message.images:
            raise InvalidRequest(NO_VISION, param=f"messages.{turn}.images")
        content = message.content or ""
        if message.role == "assistant" and message.tool_calls:
            calls = [
                {
                    "id": f"call_{turn}_{n}",
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": json.dumps(call.function.arguments),
                    },
                }
                for n, call in enumerate(message.tool_calls)
            ]
            unanswered = [(c["id"], c["function"]["name"]) for c in calls]
            out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        elif message.role == "tool":
            call_id = _answered_call(unanswered, message.tool_name) or f"call_{turn}"
            out.append({"role": "tool", "tool_call_id": call_id, "content": content})
        else:
            out.append({"role": message.role, "content": content})
    return out


def _answered_call(unanswered: list[tuple[str, str]], name: str | None) -> str | None:
    """The id of the call a tool message answers, taken off ``unanswered``."""
    for i, (call_id, call_name) in enumerate(unanswered):
        if name is None or call_name == name:
            del unanswered[i]
            return call_id
    return unanswered.pop(0)[0] if unanswered else None


_BY_NAME = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
            "frequency_penalty")  # fmt: skip


def _sampling(request: ol.ChatRequest | ol.GenerateRequest) -> dict[str, Any]:
    options = request.options or ol.Options()
    body: dict[str, Any] = {
        name: value for name in _BY_NAME if (value := getattr(options, name)) is not None
    }
    if options.num_predict is not None and options.num_predict >= 0:
        body["max_tokens"] = options.num_predict
    if options.repeat_penalty is not None:
        body["repetition_penalty"] = options.repeat_penalty
    stops = [options.stop] if isinstance(options.stop, str) else options.stop or []
    if stops := [s for s in stops if s]:
        body["stop"] = stops
    if request.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(request.format, dict):
        schema = {"name": "format", "schema": request.format}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return body


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_s(value: ol.KeepAlive) -> float | None:
    """Ollama's ``keep_alive`` in seconds: a number of seconds or a Go duration ("5m",
    "1h30m"); negative: for good (``inf``); ``None``: not asked (the default applies)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # a plain number: seconds
        except ValueError:
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise InvalidRequest(
                    f"keep_alive '{value}' is not a duration such as \"5m\" or a number of "
                    "seconds.",
                    param="keep_alive",
                ) from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    return math.inf if seconds < 0 else seconds


# --- answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """What the gateway measured of one request, in seconds: from its arrival to its
    end; waiting for a node (a cold load, a queue); the neuron's time to the first
    token; and the generation after it."""

    total_s: float = 0.0
    load_s: float = 0.0
    prompt_eval_s: float = 0.0
    eval_s: float = 0.0

    def stats(self, prompt_tokens: int, completion_tokens: int) -> ol.Stats:
        return ol.Stats(
            total_duration=_ns(self.total_s),
            load_duration=_ns(self.load_s),
            prompt_eval_count=prompt_tokens,
            prompt_eval_duration=_ns(self.prompt_eval_s),
            eval_count=completion_tokens,
            eval_duration=_ns(self.eval_s),
        )


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


Chunk = ol.ChatChunk | ol.GenerateChunk


@dataclass
class _Call:
    name: str = ""
    arguments: str = ""


@dataclass
class OllamaStream:
    """Feed it the decoded chunks of one neuron stream (chat or legacy completions);
    send what each call returns, in order, then what ``finish`` returns."""

    model: str  # as the client named it
    kind: Kind
    think: bool | str | None = None
    _splitter: ThinkSplitter = field(default_factory=ThinkSplitter)
    _calls: dict[int, _Call] = field(default_factory=dict)
    _finish: str | None = None
    _usage: Mapping[str, Any] = field(default_factory=dict)

    def feed(self, chunk: Mapping[str, Any]) -> list[Chunk]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out: list[Chunk] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if isinstance(text, str) and text:
                out += self._pieces(self._splitter.feed(text))
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def finish(self, timings: Timings) -> list[Chunk]:
        """The stream ended: what was held back, the calls whole, then the final chunk."""
        out = self._pieces(self._splitter.finish())
        calls = [_tool_call(c.name, c.arguments) for _, c in sorted(self._calls.items())]
        if calls and self.kind == "chat":
            out.append(self._chunk("", tool_calls=calls))
        stats = timings.stats(
            int(self._usage.get("prompt_tokens") or 0),
            int(self._usage.get("completion_tokens") or 0),
        )
        reason = done_reason(self._finish)
        if self.kind == "chat":
            message = ol.OutMessage(content="")
            out.append(ol.ChatAnswer(**self._head(True, reason), message=message, **dict(stats)))
        else:
            out.append(ol.GenerateAnswer(**self._head(True, reason), response="", **dict(stats)))
        return out

    def empty(self) -> Chunk:
        """A chunk that adds nothing: keeps a client waiting while the model loads."""
        return self._chunk("")

    def _pieces(self, pieces: list[tuple[str, str]]) -> list[Chunk]:
        out: list[Chunk] = []
        for kind, piece in pieces:
            if kind == "thinking":
                if self.think is not False:
                    out.append(self._chunk("", thinking=piece))
            else:
                out.append(self._chunk(piece))
        return out

    def _tool_delta(self, call: Mapping[str, Any]) -> None:
        tool = self._calls.setdefault(int(call.get("index") or 0), _Call())
        function = call.get("function") or {}
        tool.name = tool.name or function.get("name") or ""
        tool.arguments += function.get("arguments") or ""

    def _head(self, done: bool, reason: str | None = None) -> dict[str, Any]:
        return {"model": self.model, "created_at": ol.created_at(), "done": done,
                "done_reason": reason}  # fmt: skip

    def _chunk(
        self, text: str, *, thinking: str | None = None, tool_calls: list[ol.ToolCall] | None = None
    ) -> Chunk:
        if self.kind == "chat":
            message = ol.OutMessage(content=text, thinking=thinking, tool_calls=tool_calls)
            return ol.ChatChunk(**self._head(False), message=message)
        return ol.GenerateChunk(**self._head(False), response=text, thinking=thinking)


def done_reason(finish_reason: str | None) -> str:
    """Ollama says "length" for a cut answer and "stop" otherwise, tool calls included."""
    return "length" if finish_reason == "length" else "stop"


def _tool_call(name: str, arguments: str) -> ol.ToolCall:
    """Ollama's call: the arguments as an object; JSON cut short by the token limit
    (or not an object) reads as ``{}``."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    return ol.ToolCall(function=ol.ToolCallFunction(name=name, arguments=parsed))


def chat_answer(
    completion: Mapping[str, Any], *, model: str, think: bool | str | None, timings: Timings
) -> ol.ChatAnswer:
    """The whole ``/api/chat`` answer for a non-streamed chat completion."""
    answer = _whole(completion, model=model, kind="chat", think=think, timings=timings)
    assert isinstance(answer, ol.ChatAnswer)
    return answer


def generate_answer(
    completion: Mapping[str, Any], *, model: str, think: bool | str | None, timings: Timings
) -> ol.GenerateAnswer:
    """The whole ``/api/generate`` answer for a chat or legacy completion."""
    answer = _whole(completion, model=model, kind="generate", think=think, timings=timings)
    assert isinstance(answer, ol.GenerateAnswer)
    return answer


def _whole(
    completion: Mapping[str, Any],
    *,
    model: str,
    kind: Kind,
    think: bool | str | None,
    timings: Timings,
) -> Chunk:
    """The completion replayed through the stream's decisions, its chunks joined."""
    stream = OllamaStream(model=model, kind=kind, think=think)
    replayed: list[dict[str, Any]] = []
    for choice in completion.get("choices") or []:
        message = choice.get("message")
        if message is not None:
            calls = [{**call, "index": i} for i, call in enumerate(message.get("tool_calls") or [])]
            delta = {"content": message.get("content"), "tool_calls": calls}
            replayed.append({**choice, "delta": delta})
        else:
            replayed.append(choice)
    chunks = stream.feed({"choices": replayed, "usage": completion.get("usage")})
    *parts, final = chunks + stream.finish(timings)
    text = "".join(_text(c) for c in parts)
    thinking = "".join(_thinking(c) for c in parts) or None
    if isinstance(final, ol.ChatAnswer):
        calls = [
            call
            for c in parts
            if isinstance(c, ol.ChatChunk)
            for call in c.message.tool_calls or []
        ]
        final.message = ol.OutMessage(content=text, thinking=thinking, tool_calls=calls or None)
    elif isinstance(final, ol.GenerateAnswer):
        final.response, final.thinking = text, thinking
    return final


def _text(chunk: Chunk) -> str:
    return chunk.message.content if isinstance(chunk, ol.ChatChunk) else chunk.response


def _thinking(chunk: Chunk) -> str:
    thinking = chunk.message.thinking if isinstance(chunk, ol.ChatChunk) else chunk.thinking
    return thinking or ""


def embed_answer(embeddings: Mapping[str, Any], *, model: str, timings: Timings) -> ol.EmbedAnswer:
    """``/api/embed``'s answer for an OpenAI embedding list."""
    data = sorted(embeddings.get("data") or [], key=lambda item: item.get("index", 0))
    usage = embeddings.get("usage") or {}
    return ol.EmbedAnswer(
        model=model,
        embeddings=[item["embedding"] for item in data],
        total_duration=_ns(timings.total_s),
        load_duration=_ns(timings.load_s),
        prompt_eval_count=int(usage.get("prompt_tokens") or 0),
    )
