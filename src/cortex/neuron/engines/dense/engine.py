"""Dense safetensors checkpoints through transformers + torch, on one device or N ranks.

A checkpoint is a directory holding ``config.json``, ``*.safetensors`` and the
tokenizer's files. Loading runs no code from it (``use_safetensors=True``, no
``trust_remote_code``). Prompts are rendered by the neuron from the tokenizer's own
chat template (``EngineInfo.chat_template``) and tokenized here.

Scheduling: requests are strictly serialised, one sequence at a time in arrival
order, so ``EngineInfo.max_batch`` is 1 and no request can see another's state.
Each ``step`` runs one prompt chunk (``PREFILL_CHUNK`` tokens) or one decode token,
so cancellation and other engines on the device interleave at that grain. The KV
cache outlives a request: the next prompt re-uses the longest prefix it shares
with what the cache holds (``spec.prefix_cache``).

``tensor_parallel = N > 1`` runs the same model sharded over N ranks
(``tp.py``); the choice of sharder is made from ``config.json`` before anything
loads (``sharding.py``). Only the engine's ``_runner`` differs; the engine built
for N > 1 also takes ``inject_fault`` (``POST /debug/fault``).

Not served: GBNF grammars (JSON mode, schemas, forced tool calls) are refused with
a 400 at submit; embeddings are refused too.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from cortex.errors import CortexError, InvalidRequest
from cortex.neuron.engines.base import (
    UNLOADED,
    EmbeddingJob,
    EngineFault,
    EngineInfo,
    Failure,
    Finished,
    FinishReason,
    GenerationRequest,
    emit_finished,
    emit_generated,
)
from cortex.neuron.engines.dense.rank_model import LoadParams, RankModel, pick_dtype
from cortex.neuron.engines.dense.sampling import Sampler
from cortex.neuron.engines.dense.sharding import ModelShape, plan_sharding
from cortex.neuron.engines.dense.tokenizer import HFTokenizer, IncrementalText
from cortex.neuron.engines.device_set import split_devices
from cortex.neuron.engines.textstream import TextAssembler
from cortex.spec import ModelSpec

PREFILL_CHUNK = 512


class Runner(Protocol):
    """Runs the model: one ``RankModel`` here, or a tensor-parallel group (``tp.py``)."""

    can_trim: bool

    def forward(self, tokens: list[int], start: int) -> torch.Tensor: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Sequence:
    request: GenerationRequest
    sampler: Sampler
    text: TextAssembler
    stream: IncrementalText
    n_past: int  # tokens of this sequence in the KV cache
    cached: int  # prompt tokens found in the cache at admission
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, not yet run through the model
    clear_first: bool = False  # the cache holds another prompt's KV, none of it shared


class DenseEngine:
    """A dense checkpoint on one device (``tensor_parallel`` 1). Runs on the device thread."""

    def __init__(self, path: Path, spec: ModelSpec, device_id: str, n_threads: int) -> None:
        config = _read_config(path)
        world = spec.tensor_parallel
        sharding = plan_sharding(ModelShape.of(config), world)  # refuses before any load
        self._tokenizer = HFTokenizer(path)
        # "cuda:2,cuda:3": the ranks' devices as placement chose them, rank 0's first
        devices = split_devices(device_id)
        params = LoadParams(
            path=str(path),
            device=devices[0],
            dtype=pick_dtype(getattr(config, "dtype", None), devices[0]),
            threads=max(1, n_threads // world),
            sharding=sharding,
            world=world,
            devices=tuple(devices) if len(devices) > 1 else (),
        )
        runner = self._make_runner(params)
        try:
            info = _engine_info(config, spec, self._tokenizer)
        except BaseException:
            runner.close()  # every rank, the port: nothing may outlive a failed load
            raise
        self._setup(runner, self._tokenizer, info, spec.prefix_cache)

    def _setup(
        self, runner: Runner, tokenizer: HFTokenizer, info: EngineInfo, prefix_cache: bool
    ) -> None:
        """The serving state over a loaded model (tests build engines from fakes here)."""
        self._runner = runner
        self._tokenizer = tokenizer
        self.info = info
        self._prefix_cache = prefix_cache
        self._waiting: deque[GenerationRequest] = deque()
        self._active: _Sequence | None = None
        self._kv: list[int] = []  # the tokens whose KV the runner's cache holds, in order
        self.step_sequences = 0  # sequences the last step ran: 0 or 1 (serialised)

    def _make_runner(self, params: LoadParams) -> Runner:
        return RankModel(params)

    # -- tokenizer (safe from any thread) ---------------------------------------------

    def tokenize_prompt(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    # -- the engine protocol -------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        if request.sampling.grammar:
            raise InvalidRequest(
                "This model runs on the dense (transformers) engine, which cannot constrain "
                "output to a grammar: response_format json_object/json_schema and forced "
                "tool_choice need a GGUF model.",
                param="response_format",
                code="grammar_unsupported",
            )
        # Checked here, not met in a forward: a bad prompt must not poison the model.
        if not request.prompt_tokens:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        bad = next((t for t in request.prompt_tokens if not 0 <= t < self.info.n_vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"Token id {bad} is outside the model's vocabulary (0 to {self.info.n_vocab - 1}).",
                param="prompt",
            )
        self._waiting.append(request)

    def submit_embedding(self, job: EmbeddingJob) -> None:
        raise InvalidRequest(
            "This model runs on the dense (transformers) engine, which does not serve "
            "embeddings; use a GGUF model for /v1/embeddings.",
            code="embeddings_unsupported",
        )

    def has_work(self) -> bool:
        return bool(self._waiting) or self._active is not None

    def step(self) -> None:
        self._drop_cancelled()
        if self._active is None and self._waiting:
            self._active = self._admit(self._waiting.popleft())
        self.step_sequences = 1 if self._active is not None else 0
        if self._active is not None:
            self._advance(self._active)

    def abort_all(self, failure: Failure) -> None:
        if self._active is not None:
            self._finish(self._active, "error", error=failure)
        while self._waiting:
            request = self._waiting.popleft()
            request.sink.put(Finished("error", len(request.prompt_tokens), 0, error=failure))

    def close(self) -> None:
        self.abort_all(UNLOADED)
        self._runner.close()

    # -- internals -----------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        if self._active is not None and self._active.request.cancelled:
            self._finish(self._active, "cancelled")
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request.sink.put(Finished("cancelled", len(request.prompt_tokens), 0))

    def _admit(self, request: GenerationRequest) -> _Sequence:
        prompt = request.prompt_tokens
        shared = _shared_prefix(self._kv, prompt) if self._prefix_cache else 0
        if shared < len(self._kv) and not self._runner.can_trim:
            shared = 0
        # At least one prompt token must run again, for logits to sample from.
        shared = min(shared, len(prompt) - 1)
        clear_first = shared == 0 and bool(self._kv)
        self._kv = self._kv[:shared]
        return _Sequence(
            request=request,
            sampler=Sampler(request.sampling),
            text=TextAssembler(request.stop),
            stream=self._tokenizer.text_stream(prompt),
            n_past=shared,
            cached=shared,
            clear_first=clear_first,
        )

    def _advance(self, seq: _Sequence) -> None:
        prompt = seq.request.prompt_tokens
        if seq.clear_first:  # nothing shared with the previous sequence: drop its KV
            seq.clear_first = False
            self._run(self._runner.clear)
        if seq.pending is None:  # still prefilling
            chunk = prompt[seq.n_past : seq.n_past + PREFILL_CHUNK]
        else:
            chunk = [seq.pending]
        logits = self._run(lambda: self._runner.forward(chunk, seq.n_past))
        seq.n_past += len(chunk)
        self._kv.extend(chunk)
        if seq.pending is None and seq.n_past < len(prompt):
            return
        self._accept(seq, seq.sampler.sample(logits))

    def _run(self, fn: Any) -> Any:
        """A runner call; any failure leaves the KV cache in doubt: a fault."""
        try:
            return fn()
        except EngineFault:
            self._kv = []
            raise
        except CortexError:
            raise
        except Exception as exc:
            self._kv = []
            raise EngineFault(f"dense forward failed: {type(exc).__name__}: {exc}") from exc

    def _accept(self, seq: _Sequence, token: int) -> None:
        request = seq.request
        if token in self._tokenizer.eos_ids:
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        end = emit_generated(
            request,
            seq.text,
            seq.stream.feed(token).encode(),
            generated=len(seq.generated),
            n_past=seq.n_past,
            context_length=self.info.context_length,
        )
        if end is None:
            seq.pending = token
        else:
            self._finish(seq, end)

    def _finish(self, seq: _Sequence, reason: FinishReason, error: Failure | None = None) -> None:
        ended = reason in ("stop", "length")
        emit_finished(
            seq.request,
            reason,
            tail=seq.text.feed(seq.stream.finish().encode()) + seq.text.finish() if ended else "",
            text=seq.text,
            completion_tokens=len(seq.generated),
            cached_tokens=seq.cached,
            error=error,
        )
        if reason == "error":  # what the cache holds is in doubt
            self._kv = []
        self._active = None


class TensorParallelDenseEngine(DenseEngine):
    """The dense engine over ``tensor_parallel`` ranks (``tp.py``), with fault injection."""

    def _make_runner(self, params: LoadParams) -> Runner:
        from cortex.neuron.engines.dense.tp import TensorParallelGroup

        self._group = TensorParallelGroup(params)
        return self._group

    def inject_fault(self, kind: str) -> None:
        """Arm a fault for the next step: ``worker_crash`` (a worker is killed mid-step),
        ``hang`` (a worker stops answering), ``device_error`` (the leader fails after
        the collectives). Each ends in ``EngineFault`` from ``step``."""
        self._group.inject_fault(kind)

    def worker_pids(self) -> list[int]:
        return self._group.worker_pids()


def create_dense_engine(
    path: Path,
    spec: ModelSpec,
    device_id: str,
    n_threads: int,
    *,
    use_extra_buffer_types: bool = True,  # a llama.cpp setting: nothing to choose here
    kv_disk_dir: Path | None = None,  # the llama.cpp engine's cache tiers: none here
    kv_host_cache_mb: int | None = None,
) -> DenseEngine:
    """The engine factory ``engines.engine_for`` hands out for a checkpoint directory
    (or the one safetensors file of one)."""
    if spec.kv_cache_type != "f16":  # refused, not ignored: the spec would not be served
        raise InvalidRequest(
            f"kv_cache_type '{spec.kv_cache_type}' is a llama.cpp setting: the dense engine "
            f"serving {path.name} keeps its KV cache in the model's compute dtype. Remove "
            'kv_cache_type (or set "f16"), or serve a GGUF file of the model.',
            param="kv_cache_type",
        )
    if spec.speculative != "off":
        raise InvalidRequest(
            f"speculative '{spec.speculative}' is served by the llama.cpp engine only: the "
            f"dense engine serving {path.name} decodes one token per step. Remove "
            "speculative, or serve a GGUF file of the model.",
            param="speculative",
        )
    if path.is_file():
        path = path.parent
    cls = TensorParallelDenseEngine if spec.tensor_parallel > 1 else DenseEngine
    return cls(path, spec, device_id, n_threads)


def _engine_info(config: Any, spec: ModelSpec, tokenizer: HFTokenizer) -> EngineInfo:
    text = getattr(config, "text_config", None) or config
    trained = int(getattr(text, "max_position_embeddings", 0) or 0)
    return EngineInfo(
        context_length=min(spec.context_length, trained) if trained else spec.context_length,
        max_batch=1,  # serialised: one sequence at a time
        chat_template=tokenizer.chat_template,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        n_vocab=int(text.vocab_size),
        embedding_size=int(text.hidden_size),
    )


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raw = _raw_model_type(path)
        raise InvalidRequest(
            f"cannot read the checkpoint's config.json in {path} (model_type {raw!r}): {exc}"
        ) from None


def _raw_model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
