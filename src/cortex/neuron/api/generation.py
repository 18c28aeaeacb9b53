"""The generation core every endpoint shares: admit, budget, generate, collect.

An endpoint module turns its request into a ``Prepared`` (prompt tokens, budget,
sampling), ``admit``s it (a place in the model's batch or queue, or a 429), then
reads the engine's events through ``generate`` or ``collect``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from cortex.errors import (
    ContextOverflow,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    Overloaded,
    UpstreamError,
)
from cortex.neuron.api.finished import finished_requests
from cortex.neuron.engines.base import (
    EngineFault,
    EngineInfo,
    FailureKind,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextChunk,
)
from cortex.neuron.prompt.render import ToolPlan
from cortex.neuron.runtime.manager import ModelState, ServingModel
from cortex.neuron.runtime.sink import QueueSink
from cortex.protocol import openai as oa
from cortex.protocol.neuron import FinishedRequest
from cortex.request_ids import current_request_id
from cortex.spec import SamplingDefaults

request_log = logging.getLogger("cortex.neuron.requests")

# Engine finish reasons that end a response normally, as OpenAI names them.
FINISH_REASONS = {"stop": "stop", "length": "length"}


@dataclass
class Prepared:
    """A validated request: prompt tokens, budget, sampling, and how to read the output."""

    model: str
    prompt_tokens: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    tools: ToolPlan | None = None
    _holder: ServingModel | None = None
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished: Finished | None = None

    def report(self) -> dict[str, float | int | None]:
        """What this generation measured, for the gateway (see ``protocol.sse``)."""
        done = self.finished
        ttft = self.first_token_at - self.arrived if self.first_token_at is not None else None
        return {
            "prompt_tokens": done.prompt_tokens if done else len(self.prompt_tokens),
            "completion_tokens": done.completion_tokens if done else 0,
            "cached_tokens": done.cached_tokens if done else 0,
            "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
        }

    def release(self) -> None:
        """Give back the place ``admit`` reserved; safe to call more than once."""
        if self._holder is not None:
            unreserve(self._holder)
            self._holder = None


ENGINE_SAMPLING = SamplingParams()  # the engine's defaults: temperature 1, top_p 1, rest off


def sampling_of(
    model: ServingModel, request: oa.SamplingFields, output_grammar: str | None = None
) -> SamplingParams:
    """Each sampling field: the request's when it sends one, else the model's default
    (models.toml over the model file's), else the engine's."""
    defaults = model.sampling_defaults
    chosen = {
        name: next(
            (v for v in (getattr(request, name), getattr(defaults, name)) if v is not None),
            getattr(ENGINE_SAMPLING, name),
        )
        for name in SamplingDefaults.model_fields
    }
    return SamplingParams(**chosen, seed=request.seed, grammar=output_grammar)


def admit(model: ServingModel, prepared: Prepared) -> Prepared:
    """Reserve a place (running or waiting) for ``prepared``, or refuse at once: 429.

    Counted here, before the response starts, so concurrent arrivals cannot all slip
    past a queue that has room for one; released when generation ends.
    """
    reserve(model)
    prepared._holder = model
    return prepared


def reserve(model: ServingModel) -> None:
    """One place in the model's batch or queue (generations and embedding jobs alike),
    or a 429; the caller gives it back with ``unreserve``."""
    engine = model.engine
    if model.loaded.in_flight >= engine.info.max_batch + model.spec.max_queue:
        raise Overloaded(
            f"The model '{model.id}' is at capacity ({engine.info.max_batch} running, "
            f"{model.spec.max_queue} waiting); retry shortly.",
            code="queue_full",
            retry_after_s=1,
        )
    model.loaded.in_flight += 1


def unreserve(model: ServingModel) -> None:
    model.loaded.in_flight -= 1
    model.loaded.last_used = time.time()


def check_token_ids(tokens: list[int], info: EngineInfo, param: str) -> None:
    """A token id outside the vocabulary is the client's error, never a failed decode."""
    bad = next((t for t in tokens if not 0 <= t < info.n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} is outside the model's vocabulary (0 to {info.n_vocab - 1}).",
            param=param,
        )


# No token of any vocabulary we serve spans more characters than this (long runs of
# spaces are the longest): a prompt longer than context x this cannot fit, and is refused
# before the engine spends seconds tokenizing megabytes of it.
MAX_CHARS_PER_TOKEN = 64


async def tokenize(model: ServingModel, text: str, param: str = "messages") -> list[int]:
    """The prompt's tokens, from the model's engine process."""
    context = model.engine.info.context_length
    if len(text) > context * MAX_CHARS_PER_TOKEN:
        raise InvalidRequest(
            f"The prompt is {len(text)} characters long, more than any {context}-token "
            f"context of the model '{model.id}' can hold; shorten it.",
            param=param,
            code="context_length_exceeded",
        )
    try:
        return await model.engine.tokenize(text)
    except EngineFault:
        raise ModelRecovering(model.id) from None


def budget(model: ServingModel, tokens: list[int], wanted: int | None) -> int:
    """Tokens left to generate; a prompt that leaves no room is a 400 naming the numbers."""
    context = model.engine.info.context_length
    if len(tokens) >= context:
        raise ContextOverflow(prompt_tokens=len(tokens), context_length=context, model=model.id)
    room = context - len(tokens)
    # A limit larger than the room left is clamped, not refused (clients ask for 32k).
    return room if wanted is None else min(wanted, room)


async def generate(model: ServingModel, prepared: Prepared) -> AsyncIterator[TextChunk | Finished]:
    """Run one sequence; closing the iterator early cancels it on the device."""
    engine = model.engine
    sink = QueueSink()
    job = GenerationRequest(
        prompt_tokens=prepared.prompt_tokens,
        max_new_tokens=prepared.max_new_tokens,
        sampling=prepared.sampling,
        stop=prepared.stop,
        sink=sink,
    )

    try:
        try:
            _check_current(model)
            engine.submit(job)
        except EngineFault:  # the engine process was lost before the request reached it
            raise ModelRecovering(model.id) from None
        while True:
            event = await sink.queue.get()
            if isinstance(event, Finished):
                prepared.finished = event
            elif prepared.first_token_at is None:
                prepared.first_token_at = time.perf_counter()
            yield event
            if isinstance(event, Finished):
                return
    finally:
        if prepared.finished is None:
            engine.cancel(job)  # frees the sequence at the engine's next step
            _record_when_cancelled(model, prepared, sink)
        else:
            _record(model, prepared)
        prepared.release()


# How long a cancelled sequence's own end is awaited for its token count; the engine
# ends it at its next step, so only a lost engine process makes this wait run out.
CANCELLED_COUNT_WAIT_S = 30.0
_cancelled_records: set[asyncio.Task[None]] = set()


def _record_when_cancelled(model: ServingModel, prepared: Prepared, sink: QueueSink) -> None:
    """Record a generation the client left once the engine says how far it got, so the
    log line and the token counters count what was generated, not zero."""

    async def wait_and_record() -> None:
        with suppress(TimeoutError):
            prepared.finished = await asyncio.wait_for(sink.finished(), CANCELLED_COUNT_WAIT_S)
        _record(model, prepared, cancelled=True)

    try:
        task = asyncio.get_running_loop().create_task(wait_and_record())
    except RuntimeError:  # no loop any more (shutting down): record what is known
        _record(model, prepared, cancelled=True)
        return
    _cancelled_records.add(task)
    task.add_done_callback(_cancelled_records.discard)


def _check_current(model: ServingModel) -> None:
    """Refuse to submit to an engine that no longer serves: a handler awaits between
    ``ready`` and ``generate``, and a fault or an unload in between replaces the engine."""
    loaded = model.loaded
    if loaded.state is ModelState.READY and loaded.engine is model.engine:
        return
    if loaded.state is ModelState.READY and loaded.engine is None:  # unloaded
        raise ModelNotFound(model.id)
    raise ModelRecovering(model.id)


def _record(model: ServingModel, prepared: Prepared, cancelled: bool = False) -> None:
    """Metrics and one log line for a generation that has ended (the id is the gateway's)."""
    done = prepared.finished
    finish = "cancelled" if cancelled or done is None else done.reason
    metrics = model.metrics
    if metrics is not None:
        metrics.requests.labels(model.id, finish).inc()
        if prepared.first_token_at is not None:
            metrics.ttft.labels(model.id).observe(prepared.first_token_at - prepared.arrived)
        if done is not None:
            metrics.generated_tokens.labels(model.id).inc(done.completion_tokens)
            metrics.prefix_cache_hits.labels(model.id).inc(done.cached_tokens)
            if done.drafted_tokens:
                drafts = metrics.draft_tokens
                drafts.labels(model.id, "accepted").inc(done.accepted_tokens)
                drafts.labels(model.id, "rejected").inc(done.drafted_tokens - done.accepted_tokens)
    report = prepared.report()
    request_id = current_request_id.get()
    if request_id:
        finished_requests.add(
            FinishedRequest(request_id=request_id, model=model.id, finish=finish, **report)
        )
    fields = {
        "request_id": request_id,
        "model": model.id,
        "finish": finish,
        **report,
        "latency_ms": round((time.perf_counter() - prepared.arrived) * 1000, 1),
    }
    request_log.info(
        "request %s model=%s finish=%s tokens=%d+%d cached=%d ttft_ms=%s latency_ms=%.1f",
        fields["request_id"],
        model.id,
        finish,
        report["prompt_tokens"],
        report["completion_tokens"],
        report["cached_tokens"],
        report["ttft_ms"],
        fields["latency_ms"],
        extra={"fields": fields},
    )


def finish_error(event: Finished, model_id: str) -> CortexError:
    failure = event.error
    kind = failure.kind if failure else None
    if kind is FailureKind.GRAMMAR:
        return InvalidRequest("The output grammar could not be compiled.")
    if kind is FailureKind.REFUSED and failure is not None:
        return InvalidRequest(failure.detail)
    if kind is FailureKind.FAULT:
        # The model reloads itself: a retry shortly (or on another node) will work.
        return ModelRecovering(model_id)
    if kind is FailureKind.CRASH:
        return ModelRecovering(model_id, crashed=True)
    detail = failure.detail if failure else event.reason
    return UpstreamError(f"generation failed: {detail}", code="engine_error")


async def collect(model: ServingModel, prepared: Prepared) -> tuple[str, Finished]:
    """The whole generated text and how it ended; a failed generation raises."""
    parts: list[str] = []
    # Closed on the way out, so the place is given back and the request recorded now,
    # not whenever the generator happens to be garbage-collected.
    async with aclosing(generate(model, prepared)) as events:
        async for event in events:
            if isinstance(event, TextChunk):
                parts.append(event.text)
            elif event.reason not in FINISH_REASONS:
                raise finish_error(event, model.id)
            else:
                return "".join(parts), event
    raise UpstreamError("generation ended without a result")
