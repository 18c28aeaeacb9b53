"""OpenAI wire types: chat completions (requests, responses, stream chunks), legacy
completions, embeddings, models.

Requests tolerate unknown fields (clients send vendor extensions); responses
carry exactly the fields the official SDK reads.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Tolerant):
    name: str
    arguments: str = "{}"


class ToolCall(_Tolerant):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# One part of a message's content: text, or another kind (``image_url``, ``input_audio``,
# ``file``) that a text-only model refuses. Kept a dict (the engine reads what it knows);
# the JSON schema says what ``_well_formed`` checks, for /openapi.json.
ContentPart = Annotated[
    dict[str, Any],
    Field(
        json_schema_extra={
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
            "if": {"properties": {"type": {"const": "text"}}},
            "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
        }
    ),
]


class ChatMessage(_Tolerant):
    model_config = ConfigDict(
        json_schema_extra={  # the rule of _well_formed on tool messages, for /openapi.json
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {
                "required": ["tool_call_id"],
                "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
            },
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> ChatMessage:
        # As OpenAI answers them: 400s, never a TypeError deep in prompt rendering.
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs its 'tool_call_id'")
        for index, part in enumerate(self.content if isinstance(self.content, list) else []):
            # the engine sorts and names the kinds it refuses: each one a string
            if not isinstance(part.get("type"), str):
                raise ValueError(f"content[{index}].type must be a string")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"content[{index}].text must be a string")
        return self

    def text(self) -> str:
        """The message's text; content parts other than text are refused by the engine."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class StreamOptions(_Tolerant):
    include_usage: bool = False


class FunctionDefinition(_Tolerant):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Tolerant):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class SamplingFields(_Tolerant):
    """Sampling parameters shared by chat and legacy completions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    # strict: "12" is refused as OpenAI refuses it, not quietly read as 12
    max_tokens: int | None = Field(default=None, ge=0, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    n: int | None = Field(default=None, ge=1, strict=True)
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # refused at the engine: not supported

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0, strict=True)
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` wins over the legacy ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(SamplingFields):
    """Legacy ``/v1/completions``: a raw prompt, no chat template."""

    prompt: str | list[str] | list[int]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


class EmbeddingRequest(_Tolerant):
    """``/v1/embeddings``: text or token ids, one input or a list of them."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    # The official SDK asks for base64 (little-endian float32) unless told otherwise.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: a string or one token list is a batch of one."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and all(isinstance(item, int) for item in self.input):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: dict[str, Any] | None = None
    # the stop string that ended the answer (vLLM's field): OpenAI says "stop" for it
    # and for the end of turn alike, Anthropic's stop_sequence needs to tell them apart
    stop_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class _SparseDelta(BaseModel):
    """Deltas omit unset fields: the SDK concatenates every string it is sent,
    so a field must appear exactly when it carries something."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler):  # type: ignore[no-untyped-def]
        return {key: value for key, value in handler(self).items() if value is not None}


class ToolCallDelta(_SparseDelta):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None


class Delta(_SparseDelta):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None
    stop_reason: str | None = None  # as in Choice, on the finishing chunk


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of float32 bytes when asked for


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cortex"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorObject(BaseModel):
    """An error as OpenAI reports it; cortex's own fields (a preflight rejection's
    ``kind``, ``model_id``, ``detail``, ``suggestion``) sit beside these."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: an error status's body, or an in-band stream event."""

    error: ErrorObject


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
