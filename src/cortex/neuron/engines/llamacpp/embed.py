"""Embeddings from a GGUF model: a second llama.cpp context on the same model.

The engine creates it on the first embeddings job and frees it with the model; like
the generation context it is only ever used on the device's worker thread.

Pooling: the GGUF's own ``{arch}.pooling_type`` when it declares one (dedicated
embedding models do: CLS for BERT-style models, LAST for some decoder-based ones),
else the mean over the input's tokens (generative models declare none). Vectors are
scaled to unit length, as OpenAI's are.

Two kinds of model, told apart by whether llama.cpp gives the context a KV cache:

- Causal models (every generative GGUF) have one. llama.cpp returns each token's last
  hidden state (pooling NONE) and the pooling happens here, so a long input goes
  through in micro-batches of ``LLAMACPP_EMBED_UBATCH_TOKENS`` with its KV carried
  between them. Pooling inside llama.cpp instead would need the whole input in one
  micro-batch (it pools per micro-batch), and llama.cpp computes logits for every
  token of an embedding batch: 1.6 GB more resident for SmolLM2-135M at 4096 tokens,
  against 143 MiB this way (``estimate.py`` counts it; the manager adds it to the
  model's memory when the context is created).
- Encoder models (BERT-style, bidirectional) have none, and llama.cpp refuses to split
  an input across micro-batches; they have no vocabulary-sized head, so a micro-batch
  as long as the context is cheap. llama.cpp pools them itself, which keeps any
  layers a model applies after pooling.

Inputs go one at a time, each its own pass over a cleared cache. Packing several
short inputs into one decode as separate sequences was 12% faster on CPU, but with
one shared KV cache flash attention rounds differently with the batch's company
(up to 6e-3 per component of a unit vector), and separate caches per sequence would
multiply the memory; so a vector never depends on what it was batched with.
"""

from __future__ import annotations

import ctypes
from collections import deque

import llama_cpp as C
import numpy as np

from cortex.errors import InvalidRequest, UpstreamError
from cortex.neuron.engines.base import EmbeddingJob, EngineFault
from cortex.neuron.files.estimate import LLAMACPP_EMBED_UBATCH_TOKENS

_POOLINGS = (C.LLAMA_POOLING_TYPE_MEAN, C.LLAMA_POOLING_TYPE_CLS, C.LLAMA_POOLING_TYPE_LAST)


def pooling_of(declared: str | None) -> int:
    """The pooling to use, given the GGUF's ``{arch}.pooling_type`` (None when absent)."""
    if declared is None or not declared.lstrip("-").isdigit():
        return C.LLAMA_POOLING_TYPE_MEAN
    value = int(declared)
    if value == C.LLAMA_POOLING_TYPE_RANK:
        raise InvalidRequest(
            "This model is a reranker (pooling 'rank'): it scores pairs, it has no embeddings.",
            param="model",
        )
    return value if value in _POOLINGS else C.LLAMA_POOLING_TYPE_MEAN


class _Input:
    """One input on its way through the context: where it is, what is pooled so far."""

    def __init__(self, tokens: list[int], size: int) -> None:
        self.tokens = tokens
        self.done = 0  # tokens decoded so far
        self.total = np.zeros(size, dtype=np.float64)  # mean: the sum of hidden states
        self.first: np.ndarray | None = None  # cls
        self.last: np.ndarray | None = None  # last
        self.pooled: np.ndarray | None = None  # an encoder's, pooled by llama.cpp


class EmbeddingContext:
    """Embedding jobs on ``model``; every method runs on the device worker thread."""

    def __init__(
        self, model: ctypes.c_void_p, context_length: int, n_threads: int, pooling: int
    ) -> None:
        self._pooling = pooling
        self._size = C.llama_model_n_embd_out(model)
        self._context_length = context_length
        self._ubatch = LLAMACPP_EMBED_UBATCH_TOKENS
        self._ctx = self._new_context(model, n_threads, C.LLAMA_POOLING_TYPE_NONE)
        self._memory = C.llama_get_memory(self._ctx)
        self._encoder = not self._memory
        if self._encoder:  # no KV cache: the whole input in one micro-batch, llama.cpp pools
            C.llama_free(self._ctx)
            self._ubatch = context_length
            self._ctx = self._new_context(model, n_threads, pooling)
        self._batch = C.llama_batch_init(self._ubatch, 0, 1)
        self._waiting: deque[EmbeddingJob] = deque()
        self._job: EmbeddingJob | None = None
        self._vectors: list[list[float]] = []
        self._pass: _Input | None = None

    def _new_context(self, model: ctypes.c_void_p, n_threads: int, pooling: int) -> ctypes.c_void_p:
        params = C.llama_context_default_params()
        params.n_ctx = self._context_length
        params.n_seq_max = 1
        params.n_batch = self._ubatch
        params.n_ubatch = self._ubatch
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.embeddings = True
        params.pooling_type = pooling
        # The KV stays f16 (llama.cpp's default) whatever the spec's kv_cache_type: it holds
        # one sequence, and quantising it would move the vectors away from llama.cpp's own
        # (tests/unit/test_llamacpp_embed.py); estimate.py's embedding_mb counts it as f16.
        params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.no_perf = True
        ctx = C.llama_init_from_model(model, params)
        if not ctx:
            raise EngineFault("llama.cpp could not create an embedding context")
        return ctx

    def submit(self, job: EmbeddingJob) -> None:
        self._waiting.append(job)

    def has_work(self) -> bool:
        return self._job is not None or bool(self._waiting)

    def step(self) -> None:
        """One llama.cpp call: the next micro-batch of the current input."""
        if self._job is not None and self._job.cancelled:
            self._fail(self._job, UpstreamError("embedding cancelled"))
            self._job = None
        if self._job is None and not self._start_next():
            return
        job = self._job
        assert job is not None
        if self._pass is None:
            self._pass = _Input(job.inputs[len(self._vectors)], self._size)
            if self._memory:
                C.llama_memory_clear(self._memory, False)  # the cells, not their bytes
        if self._encoder:
            self._encode(self._pass)
        else:
            self._decode_chunk(self._pass)
        if self._pass.done == len(self._pass.tokens):
            self._vectors.append(self._finish(self._pass))
            self._pass = None
        if len(self._vectors) == len(job.inputs):
            job.result.set_result(self._vectors)
            self._job, self._vectors = None, []

    def abort_all(self, reason: str) -> None:
        error = UpstreamError(f"embedding failed: {reason}", code="engine_error")
        if self._job is not None:
            self._fail(self._job, error)
            self._job = None
        while self._waiting:
            job = self._waiting.popleft()
            if job.result.set_running_or_notify_cancel():
                job.result.set_exception(error)

    def close(self) -> None:
        self.abort_all("model unloaded")
        C.llama_batch_free(self._batch)
        C.llama_free(self._ctx)

    # -- internals ---------------------------------------------------------------

    def _start_next(self) -> bool:
        while self._waiting:
            job = self._waiting.popleft()
            # From here the caller can no longer cancel the future: setting it is safe.
            if job.cancelled or not job.result.set_running_or_notify_cancel():
                continue
            self._job, self._vectors, self._pass = job, [], None
            return True
        return False

    def _fail(self, job: EmbeddingJob, error: Exception) -> None:
        job.result.set_exception(error)
        self._vectors, self._pass = [], None

    def _fill(self, tokens: list[int], start: int) -> None:
        batch = self._batch
        for n, token in enumerate(tokens):
            batch.token[n] = token
            batch.pos[n] = start + n
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = 0
            batch.logits[n] = True  # every token is an output in an embedding context
        batch.n_tokens = len(tokens)

    def _decode_chunk(self, state: _Input) -> None:
        chunk = state.tokens[state.done : state.done + self._ubatch]
        self._fill(chunk, state.done)
        status = C.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise EngineFault(f"llama_decode failed with status {status} (embeddings)")
        hidden = np.ctypeslib.as_array(C.llama_get_embeddings(self._ctx), (len(chunk), self._size))
        if state.done == 0:
            state.first = hidden[0].copy()
        state.total += hidden.sum(axis=0, dtype=np.float64)
        state.last = hidden[-1].copy()
        state.done += len(chunk)

    def _encode(self, state: _Input) -> None:
        self._fill(state.tokens, 0)
        status = C.llama_encode(self._ctx, self._batch)
        if status != 0:
            raise EngineFault(f"llama_encode failed with status {status} (embeddings)")
        pooled = C.llama_get_embeddings_seq(self._ctx, 0)
        if not pooled:
            raise EngineFault("llama.cpp returned no pooled embedding")
        state.pooled = np.ctypeslib.as_array(pooled, (self._size,)).astype(np.float64)
        state.done = len(state.tokens)

    def _finish(self, state: _Input) -> list[float]:
        if self._encoder:
            vector = state.pooled
        elif self._pooling == C.LLAMA_POOLING_TYPE_MEAN:
            vector = state.total / state.done
        elif self._pooling == C.LLAMA_POOLING_TYPE_CLS:
            vector = state.first
        else:
            vector = state.last
        assert vector is not None
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).astype(np.float32).tolist()
