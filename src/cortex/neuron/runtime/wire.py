"""What travels between the neuron and an engine process, and how it is encoded.

Every message is a JSON array whose first item names it: compact (a token's event
is ``["t", id, "text"]``), readable in a debugger, and never unpickled: the bytes
on the pipe can only ever become lists, strings and numbers.

neuron → engine
    ["gen", id, prompt_tokens, max_new_tokens, sampling, stop]   start a generation
    ["cancel", id]                                               the client left
    ["tok", call_id, text]                                       tokenize (answered at once)
    ["emb", id, inputs]  /  ["cancel_emb", id]                    embeddings
    ["fault", kind]                                              testing: suffer it next step
    ["close"]                                                    unload: free it and exit
engine → neuron
    ["ready", info, pids]  /  ["load_failed", error]             once, after the canary
    ["ev", sequences_in_step, [event, ...]]                      after each step
        event: ["t", id, text] | ["f", id, reason, prompt, completion, cached, stop,
               failure_kind, failure_detail] | ["e", id, vectors, error]
    ["tokens", call_id, tokens]
    ["faulted", kind, detail]                                    a step raised; exits next
    ["closed"]
"""

from __future__ import annotations

import json
from typing import Any

from cortex import errors
from cortex.neuron.engines.base import Event, Failure, FailureKind, Finished, TextChunk

GENERATE, CANCEL, TOKENIZE, EMBED, CANCEL_EMBED, FAULT, CLOSE = (
    "gen",
    "cancel",
    "tok",
    "emb",
    "cancel_emb",
    "fault",
    "close",
)
READY, LOAD_FAILED, EVENTS, TOKENS, FAULTED, CLOSED = (
    "ready",
    "load_failed",
    "ev",
    "tokens",
    "faulted",
    "closed",
)
TEXT, FINISHED, EMBEDDED = "t", "f", "e"


def encode(message: list[Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> list[Any]:
    return json.loads(data)


def encode_event(request_id: int, event: Event) -> list[Any]:
    if isinstance(event, TextChunk):
        return [TEXT, request_id, event.text]
    failure = event.error
    return [
        FINISHED,
        request_id,
        event.reason,
        event.prompt_tokens,
        event.completion_tokens,
        event.cached_tokens,
        event.stop_sequence,
        failure.kind.value if failure else None,
        failure.detail if failure else None,
        event.drafted_tokens,
        event.accepted_tokens,
    ]


def decode_event(item: list[Any]) -> Event:
    if item[0] == TEXT:
        return TextChunk(item[2])
    _, _, reason, prompt, completion, cached, stop, kind, detail, drafted, accepted = item
    failure = Failure(FailureKind(kind), detail) if kind else None
    return Finished(reason, prompt, completion, cached, stop, failure, drafted, accepted)


def error_of(exc: BaseException) -> dict[str, Any]:
    """An exception as data: a cortex error keeps its class, status and fields."""
    if isinstance(exc, errors.CortexError):
        return {
            "class": type(exc).__name__,
            "message": exc.message,
            "param": exc.param,
            "code": exc.code,
        }
    return {"class": None, "message": f"{type(exc).__name__}: {exc}"}


def error_from(data: dict[str, Any]) -> errors.CortexError:
    """The error ``error_of`` described; a cortex class by name, else an engine fault."""
    cls = getattr(errors, data.get("class") or "", None)
    message = str(data.get("message") or "engine error")
    if isinstance(cls, type) and issubclass(cls, errors.CortexError):
        try:
            return cls(message, param=data.get("param"), code=data.get("code"))
        except TypeError:  # a class with its own constructor: keep status and message
            error = errors.CortexError(message, param=data.get("param"), code=data.get("code"))
            error.status, error.kind = cls.status, cls.kind
            return error
    return errors.UpstreamError(message, code="engine_error")
