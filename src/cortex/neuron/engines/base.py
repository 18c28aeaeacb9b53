"""The engine protocol every inference backend implements, and the types it speaks.

An engine instance lives in an engine process of its own (``runtime/engine_host.py``)
and belongs to that process's main thread: every method below except
``tokenize_prompt`` is only ever called on it, so engines hold no locks. Requests
reach it as ``GenerationRequest`` objects; results leave through each request's
``EventSink`` as ``TextChunk`` then one ``Finished``.
Embeddings reach it as ``EmbeddingJob`` objects; their vectors leave through the
job's future.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

from cortex.errors import CortexError
from cortex.neuron.engines.textstream import TextAssembler
from cortex.spec import ModelSpec


class EngineFault(CortexError):
    """The engine's state is in doubt (a failed decode): the model must be reloaded."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # GBNF grammar the output must follow (JSON mode, schemas, forced tool calls).
    grammar: str | None = None


@dataclass(frozen=True)
class TextChunk:
    text: str


FinishReason = Literal["stop", "length", "cancelled", "error"]


class FailureKind(StrEnum):
    """Why a generation ended in error; each maps to one client-facing answer."""

    FAULT = "fault"  # the engine's state is in doubt: the model reloads, a retry works
    # the engine process crashed (a signal) with this request in it: the request may be
    # the cause, so it is not retried elsewhere (it could crash that engine too)
    CRASH = "crash"
    GRAMMAR = "grammar"  # the request's output grammar could not be compiled: a 400
    UNLOADED = "unloaded"  # the model was unloaded under the request
    REFUSED = "refused"  # the engine cannot serve this request (e.g. a grammar): a 400


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str


UNLOADED = Failure(FailureKind.UNLOADED, "model unloaded")


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    stop_sequence: str | None = None
    error: Failure | None = None  # set when ``reason == "error"``
    drafted_tokens: int = 0  # speculative decoding: tokens drafted, and how many were kept
    accepted_tokens: int = 0


Event = TextChunk | Finished


class EventSink(Protocol):
    """Receives a sequence's events; ``put`` is called from the worker thread."""

    def put(self, event: Event) -> None: ...


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    sink: EventSink
    # Set from the event loop when the client goes away; the worker checks it
    # before every decode step, so a cancelled sequence frees its slot within one step.
    cancelled: bool = field(default=False)
    # False: a prefill from scratch that leaves nothing cached (the load canary, which
    # must run the batched kernels, not find its prompt in a cache an earlier engine
    # wrote to disk).
    use_cache: bool = True


def emit_generated(
    request: GenerationRequest,
    text: TextAssembler,
    piece: bytes,
    *,
    generated: int,
    n_past: int,
    context_length: int,
) -> FinishReason | None:
    """One generated token's bytes (``generated`` counts it) through the stop-string
    matcher: what text is settled goes to the client. Then whether the sequence ends
    here: ``stop`` (a stop string matched), ``length`` (its budget or the context is
    full), or None. The one rule every engine applies after a token that is not EOS."""
    settled = text.feed(piece)
    if settled:
        request.sink.put(TextChunk(settled))
    if text.stop.matched is not None:
        return "stop"
    if generated >= request.max_new_tokens or n_past >= context_length:
        return "length"
    return None


def emit_finished(
    request: GenerationRequest,
    reason: FinishReason,
    *,
    tail: str,
    text: TextAssembler,
    completion_tokens: int,
    cached_tokens: int,
    error: Failure | None = None,
    drafted_tokens: int = 0,
    accepted_tokens: int = 0,
) -> None:
    """How a sequence ends, as every engine reports it: the text still held back
    (``tail``, only when it ended normally), then one ``Finished``."""
    if tail and reason in ("stop", "length"):
        request.sink.put(TextChunk(tail))
    request.sink.put(
        Finished(
            reason,
            prompt_tokens=len(request.prompt_tokens),
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            stop_sequence=text.stop.matched,
            error=error,
            drafted_tokens=drafted_tokens,
            accepted_tokens=accepted_tokens,
        )
    )


@dataclass
class EmbeddingJob:
    """The inputs of one embeddings request, as token lists.

    ``result`` receives one unit-length (L2) vector per input, in input order, or the
    exception that stopped the job; it is set from the worker thread.
    """

    inputs: list[list[int]]
    result: Future[list[list[float]]] = field(default_factory=Future)
    # Set from the event loop when the caller goes away; checked before every decode.
    cancelled: bool = field(default=False)


@dataclass(frozen=True)
class EngineInfo:
    """What the rest of the neuron needs to know about a loaded engine."""

    context_length: int
    max_batch: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    n_vocab: int  # token ids are 0 .. n_vocab - 1
    embedding_size: int  # length of the vectors ``submit_embedding`` returns
    attention: Literal["flash", "plain"] | None = None  # a GGUF's kernel ("auto" resolved)


class Engine(Protocol):
    """A loaded model on one device. All methods run on the device's worker thread."""

    info: EngineInfo
    # Sequences the last ``step`` decoded (0 when it decoded none): the batch-size metric.
    step_sequences: int

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt. Safe from any thread (reads the vocabulary only)."""

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; it joins the running batch at the next step."""

    def has_work(self) -> bool:
        """True while any request is waiting or generating, or any embedding job is left."""

    def step(self) -> None:
        """Run one decode step for every active sequence and emit their events, then
        one slice of the current embedding job."""

    def submit_embedding(self, job: EmbeddingJob) -> None:
        """Queue an embeddings job; it advances a slice per ``step``, beside generation.

        Raises at once (a ``CortexError``) when this model cannot embed at all.
        """

    def abort_all(self, failure: Failure) -> None:
        """Finish every request and embedding job with an error (the engine is torn down)."""

    def close(self) -> None:
        """Free the model and its contexts."""


class EngineFactory(Protocol):
    def __call__(
        self,
        path: Path,
        spec: ModelSpec,
        device_id: str,
        n_threads: int,
        *,
        use_extra_buffer_types: bool = False,
    ) -> Engine: ...
