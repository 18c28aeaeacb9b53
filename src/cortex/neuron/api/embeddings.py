"""OpenAI ``/v1/embeddings`` on a loaded model: inputs to token lists, vectors back."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from cortex.errors import ContextOverflow, InvalidRequest, ModelRecovering
from cortex.neuron.api.generation import check_token_ids, reserve, tokenize, unreserve
from cortex.neuron.engines.base import EmbeddingJob, EngineFault
from cortex.neuron.runtime.manager import ServingModel
from cortex.protocol import openai as oa

MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request


async def prepare_embeddings(model: ServingModel, request: oa.EmbeddingRequest) -> EmbeddingJob:
    """Everything that can fail because of the request, before any work is queued."""
    engine = model.engine
    info = engine.info
    if request.dimensions is not None and request.dimensions != info.embedding_size:
        raise InvalidRequest(
            f"The model '{model.id}' gives {info.embedding_size}-dimensional embeddings; "
            f"it cannot shorten them to {request.dimensions}.",
            param="dimensions",
        )
    inputs = request.inputs()
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"At most {MAX_INPUTS} inputs per request.", param="input")
    # The engine process tokenizes; the calls are pipelined, not one round trip each.
    token_lists = await asyncio.gather(
        *(tokenize(model, i, param="input") if isinstance(i, str) else _given(i) for i in inputs)
    )
    for tokens, item in zip(token_lists, inputs, strict=True):
        if not isinstance(item, str):
            check_token_ids(tokens, info, "input")
        if not tokens:
            raise InvalidRequest("An input is empty; every input needs a token.", param="input")
        if len(tokens) > info.context_length:
            raise ContextOverflow(
                prompt_tokens=len(tokens),
                context_length=info.context_length,
                model=model.id,
                param="input",
            )
    return EmbeddingJob(inputs=token_lists)


async def embed(model: ServingModel, job: EmbeddingJob, encoding: str) -> oa.EmbeddingList:
    """Run ``job`` on the model's device and answer in the requested encoding.

    The job takes a place in the model's batch-or-queue limit like a generation does,
    so a flood of embedding requests gets 429s instead of an unbounded queue."""
    reserve(model)
    try:
        vectors = await model.engine.embed(job)  # cancelled with the request, if it goes
    except EngineFault:  # the engine process was lost before or during the job
        raise ModelRecovering(model.id) from None
    finally:
        unreserve(model)
    prompt_tokens = sum(len(tokens) for tokens in job.inputs)
    return oa.EmbeddingList(
        data=[
            oa.Embedding(index=i, embedding=_encode(vector, encoding))
            for i, vector in enumerate(vectors)
        ],
        model=model.id,
        usage=oa.EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )


async def _given(tokens: list[int]) -> list[int]:
    return tokens


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the official SDK asks for, and decodes, by default
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector
