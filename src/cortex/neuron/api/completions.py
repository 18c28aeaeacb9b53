"""Legacy OpenAI ``/v1/completions``: a raw prompt in, text out, streaming too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from cortex.errors import InvalidRequest
from cortex.neuron.api.generation import (
    FINISH_REASONS,
    Prepared,
    admit,
    budget,
    check_token_ids,
    collect,
    finish_error,
    generate,
    sampling_of,
    tokenize,
)
from cortex.neuron.engines.base import TextChunk
from cortex.neuron.runtime.manager import ServingModel
from cortex.protocol import openai as oa
from cortex.protocol.errors import openai_error_body
from cortex.protocol.sse import DONE, data_frame, report_frame


async def prepare_completion(model: ServingModel, request: oa.CompletionRequest) -> Prepared:
    unsupported = {
        "echo": request.echo,
        "suffix": request.suffix,
        "logprobs": request.logprobs,
        "best_of": request.best_of not in (None, 1),
        "n": request.n not in (None, 1),
        "logit_bias": request.logit_bias,
    }
    for field, value in unsupported.items():
        if value:
            raise InvalidRequest(f"'{field}' is not supported by this server.", param=field)
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise InvalidRequest("Send one prompt per request.", param="prompt")
        prompt = prompt[0]
    engine = model.engine
    if isinstance(prompt, str):
        tokens = await tokenize(model, prompt, param="prompt")
    else:
        tokens = [int(t) for t in prompt]
        check_token_ids(tokens, engine.info, "prompt")
    if not tokens:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    prepared = Prepared(
        model=model.id,
        prompt_tokens=tokens,
        max_new_tokens=budget(
            model, tokens, 16 if request.max_tokens is None else request.max_tokens
        ),
        sampling=sampling_of(model, request),
        stop=request.stop_list(),
    )
    return admit(model, prepared)


async def complete_text(model: ServingModel, prepared: Prepared) -> oa.Completion:
    text, event = await collect(model, prepared)
    reason = FINISH_REASONS[event.reason]
    return oa.Completion(
        id=oa.completion_id("cmpl"),
        created=oa.now(),
        model=model.id,
        choices=[oa.CompletionChoice(text=text, finish_reason=reason)],  # type: ignore[arg-type]
        usage=oa.Usage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens),
    )


async def stream_text(
    model: ServingModel, prepared: Prepared, include_usage: bool
) -> AsyncIterator[bytes]:
    completion_id, created = oa.completion_id("cmpl"), oa.now()

    def frame(text: str, finish: str | None = None, usage: oa.Usage | None = None) -> bytes:
        choices = [] if usage else [oa.CompletionChoice(text=text, finish_reason=finish)]  # type: ignore[arg-type]
        return data_frame(
            oa.Completion(
                id=completion_id, created=created, model=model.id, choices=choices, usage=usage
            )
        )

    async for event in generate(model, prepared):
        if isinstance(event, TextChunk):
            yield frame(event.text)
            continue
        if event.reason not in FINISH_REASONS:
            yield data_frame(json.dumps(openai_error_body(finish_error(event, model.id))).encode())
            return
        yield frame("", FINISH_REASONS[event.reason])
        if include_usage:
            yield frame(
                "",
                usage=oa.Usage.of(
                    event.prompt_tokens, event.completion_tokens, event.cached_tokens
                ),
            )
    yield report_frame(prepared.report())
    yield DONE
