"""Ollama's wire types: ``/api/chat``, ``/api/generate``, ``/api/embed`` (and the older
``/api/embeddings``), ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``,
``/api/version``, with Ollama's own field names.

Requests tolerate unknown fields, as Ollama does; answers carry the fields the
official ``ollama`` client reads. Durations are integers of nanoseconds, times
RFC 3339 strings. An error is ``{"error": "..."}``, as a status's body or as the
last line of a stream (see ``ollama_error_body``).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cortex.errors import CortexError, ModelNotFound

# The Ollama API level this gateway answers as (GET /api/version): clients compare it
# to decide which fields they may send, so it is Ollama's numbering, not cortex's.
OLLAMA_VERSION = "0.12.0"


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class Options(_Tolerant):
    """``options``: the runtime ones are mapped to the neuron's sampling fields; the
    load-time ones (``num_ctx``, ``num_gpu``, ...) are ignored, the model's profile in
    models.toml decides them."""

    num_ctx: int | None = None
    num_predict: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ToolCallFunction(_Tolerant):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Tolerant):
    function: ToolCallFunction


class Message(_Tolerant):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None  # a tool message: the tool that answered


Format = Literal["", "json"] | dict[str, Any] | None
KeepAlive = float | int | str | None  # seconds, or a duration such as "5m"; <0 forever


class _Generation(_Tolerant):
    model: str
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: bool | Literal["low", "medium", "high"] | None = None


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    # cortex's extension (Ollama has none): OpenAI's tool_choice, passed on as it is;
    # "required" or a named function makes the call through a grammar.
    tool_choice: str | dict[str, Any] | None = None


class GenerateRequest(_Generation):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class EmbedRequest(_Tolerant):
    model: str
    input: str | list[str]
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Tolerant):
    """The older ``/api/embeddings``: one ``prompt``, one ``embedding``."""

    model: str
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ModelRequest(_Tolerant):
    """``/api/show``, ``/api/pull``, ``/api/delete``: a model by ``model`` (or the older
    ``name``)."""

    model: str | None = None
    name: str | None = None
    stream: bool = True  # /api/pull
    insecure: bool | None = None

    def model_name(self) -> str:
        return self.model or self.name or ""


# --- answers -------------------------------------------------------------------------


class Stats(BaseModel):
    """What a final answer reports: nanoseconds and token counts, as measured."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class _Answer(BaseModel):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None

    def line(self) -> bytes:
        """One NDJSON line, without the fields that are not set."""
        return self.model_dump_json(exclude_none=True).encode() + b"\n"


class OutMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChunk(_Answer):
    message: OutMessage


class ChatAnswer(Stats, ChatChunk):
    pass


class GenerateChunk(_Answer):
    response: str = ""
    thinking: str | None = None


class GenerateAnswer(Stats, GenerateChunk):
    context: list[int] | None = None


class EmbedAnswer(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsAnswer(BaseModel):
    embedding: list[float]


class Details(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class TagModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class Tags(BaseModel):
    models: list[TagModel]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int
    context_length: int | None = None
    node: str  # cortex's: which node holds it (one entry per node)


class Running(BaseModel):
    models: list[RunningModel]


class ShowAnswer(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class Progress(BaseModel):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def line(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode() + b"\n"


class Version(BaseModel):
    version: str = OLLAMA_VERSION


# --- errors --------------------------------------------------------------------------


def ollama_error_body(error: CortexError) -> dict[str, str]:
    """Ollama's envelope: one string. An unknown model reads as Ollama words it."""
    if isinstance(error, ModelNotFound):
        return {"error": f"model '{error.model}' not found"}
    return {"error": error.message}


def error_line(error: CortexError) -> bytes:
    """The line that ends a stream with ``error`` (the client raises it)."""
    return json.dumps(ollama_error_body(error)).encode() + b"\n"


def created_at(at: float | None = None) -> str:
    """A time as Ollama writes it: RFC 3339 in UTC, to the microsecond."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
