"""OpenAI ``/v1/embeddings`` on a loaded model: inputs to token lists, vectors back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from concurrent.futures import InvalidStateError

import numpy as np

from cortex.errors import ContextOverflow, InvalidRequest, ModelRecovering
from cortex.neuron.engines.base import EmbeddingJob, EngineFault
from cortex.neuron.manager import LoadedModel
from cortex.neuron.serving import check_token_ids
from cortex.protocol import openai as oa

MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request


async def prepare_embeddings(model: LoadedModel, request: oa.EmbeddingRequest) -> EmbeddingJob:
    """Everything that can fail because of the request, before any work is queued."""
    engine = model.engine
    assert engine is not None
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
    # Tokenizing many inputs takes milliseconds: off the event loop, in one hop.
    token_lists = await asyncio.to_thread(
        lambda: [engine.tokenize_prompt(i) if isinstance(i, str) else i for i in inputs]
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


async def embed(model: LoadedModel, job: EmbeddingJob, encoding: str) -> oa.EmbeddingList:
    """Run ``job`` on the model's device and answer in the requested encoding."""
    engine = model.engine
    assert engine is not None

    def on_fault(reason: str) -> None:
        if not job.result.done():
            with contextlib.suppress(InvalidStateError):  # the device thread got there first
                job.result.set_exception(ModelRecovering(model.id))

    model.fault_listeners.add(on_fault)
    try:
        await model.worker.run(lambda: engine.submit_embedding(job))
        vectors = await asyncio.wrap_future(job.result)
    except EngineFault:  # the device thread was lost before or during the job
        raise ModelRecovering(model.id) from None
    finally:
        model.fault_listeners.discard(on_fault)
        job.cancelled = True  # no-op once done; drops the job at the next step otherwise
        model.last_used = time.time()
    prompt_tokens = sum(len(tokens) for tokens in job.inputs)
    return oa.EmbeddingList(
        data=[
            oa.Embedding(index=i, embedding=_encode(vector, encoding))
            for i, vector in enumerate(vectors)
        ],
        model=model.id,
        usage=oa.EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the official SDK asks for, and decodes, by default
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector
