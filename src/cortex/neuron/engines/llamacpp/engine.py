"""GGUF engine on llama.cpp's low-level API, with continuous batching.

Why the low-level API: the high-level ``Llama`` object decodes one sequence at
a time and tokenizes chat prompts with special tokens unparsed (garbage for
ChatML models). Here one context holds ``max_batch`` sequences (one KV stream
each, ``kv_unified`` off, so every sequence gets the full ``context_length``),
and every ``step`` decodes one token for each generating sequence plus a chunk
of each waiting prompt in a single ``llama_decode``.

Slots keep the tokens whose KV they hold after a request ends; a new request
takes the free slot sharing the longest prefix with its prompt (an empty slot, or
the least recently used one, when none shares a useful prefix), so a resent
conversation only prefills what is new. What a slot held before another
conversation takes it is saved to host RAM (``host_cache.py``) and put back into a
free slot when its conversation returns, so more conversations than slots stay
cached.

Embeddings use a second context on the same model (``llamacpp_embed.py``), created
on the first embeddings job; each ``step`` also advances it by one micro-batch.
"""

from __future__ import annotations

import ctypes
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as C

from cortex.neuron.engines.base import (
    UNLOADED,
    EmbeddingJob,
    EngineFault,
    EngineInfo,
    Failure,
    FailureKind,
    Finished,
    FinishReason,
    GenerationRequest,
    emit_finished,
    emit_generated,
)
from cortex.neuron.engines.device_set import split_devices
from cortex.neuron.engines.llamacpp.attention import uses_flash_attention
from cortex.neuron.engines.llamacpp.disk_cache import DiskCache, cache_key, file_identity
from cortex.neuron.engines.llamacpp.embed import EmbeddingContext, pooling_of
from cortex.neuron.engines.llamacpp.host_cache import (
    MIN_SAVED_TOKENS,
    HostCache,
    SavedSequence,
    shared_prefix,
)
from cortex.neuron.engines.prompt_lookup import PromptLookup
from cortex.neuron.engines.textstream import TextAssembler
from cortex.neuron.files.estimate import LLAMACPP_UBATCH_TOKENS
from cortex.spec import ModelSpec

_BATCH_TOKENS = LLAMACPP_UBATCH_TOKENS  # the memory estimate sizes the compute buffer by it
_PENALTY_WINDOW = 64
_KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0}
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready  # process-wide, once: llama.cpp's own global init
    if not _backend_ready:
        # llama.cpp logs every tensor at load; keep its warnings and errors only.
        logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
        C.llama_backend_init()
        _backend_ready = True


def model_placement(
    device_id: str, gpu_offload: bool, use_extra_buffer_types: bool, split: str = "none"
) -> dict[str, int | bool | list[float]]:
    """llama.cpp model parameters that put the model where placement counted it.

    On a GPU: every layer there and only there (``split_mode`` none with ``main_gpu``;
    llama.cpp's default layer split would spread it over every visible GPU while the
    gateway charges one). On several GPUs (``device_id`` "cuda:1,cuda:3", a spec's
    ``split`` "layer" or "row"): that split mode, an equal ``tensor_split`` share on
    each named GPU and none on the others, ``main_gpu`` the first named. ``tensor_split``
    is a list here, indexed by CUDA ordinal (llama.cpp's device order); the engine makes
    the C array. ``use_extra_bufts`` turns llama.cpp's optional CPU weight layouts (AMX,
    repacked quants) on or off: fast where they work, a segfault on some CPUs, so the
    engine process's canary decides (``runtime/engine_host.py``).
    """
    params: dict[str, int | bool | list[float]] = {"use_extra_bufts": use_extra_buffer_types}
    gpus = [int(d.split(":")[1]) for d in split_devices(device_id) if d.startswith("cuda")]
    if not gpus or not gpu_offload:
        params["n_gpu_layers"] = 0
        return params
    params |= {"n_gpu_layers": 999, "main_gpu": gpus[0]}
    if len(gpus) == 1 or split == "none":
        params["split_mode"] = C.LLAMA_SPLIT_MODE_NONE
        return params
    mode = C.LLAMA_SPLIT_MODE_ROW if split == "row" else C.LLAMA_SPLIT_MODE_LAYER
    params["split_mode"] = mode
    params["tensor_split"] = [1.0 if i in gpus else 0.0 for i in range(max(gpus) + 1)]
    return params


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the slot's KV holds, in order
    last_used: float = 0.0


@dataclass
class _Sequence:
    request: GenerationRequest
    slot: _Slot
    sampler: ctypes.c_void_p
    text: TextAssembler
    n_past: int  # tokens already in the KV
    cached: int
    generated: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled, not yet decoded
    logits_index: int = -1
    lookup: PromptLookup | None = None  # speculative decoding's drafts, once generating
    draft: list[int] = field(default_factory=list)  # decoded after the pending token
    drafted: int = 0  # draft tokens so far, and how many the model agreed with
    accepted: int = 0

    @property
    def prefilling(self) -> bool:
        return self.pending_token is None


class LlamaCppEngine:
    """One GGUF model on one device. Every method runs on the device worker thread."""

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        device_id: str,
        n_threads: int,
        *,
        use_extra_buffer_types: bool = False,
        kv_disk_dir: Path | None = None,
        kv_host_cache_mb: int | None = None,
    ) -> None:
        # Extra buffer types default to off, the setting that is safe on every CPU, for
        # whoever builds an engine in their own process (tests, benches); the engine
        # process passes what its canary found (``runtime/engine_host.py``).
        _init_backend()
        model_params = C.llama_model_default_params()
        placement = model_placement(
            device_id, C.llama_supports_gpu_offload(), use_extra_buffer_types, spec.split
        )
        split = placement.pop("tensor_split", None)
        for name, value in placement.items():
            setattr(model_params, name, value)
        if isinstance(split, list):
            # llama.cpp reads llama_max_devices() floats; kept alive with the engine
            self._tensor_split = (ctypes.c_float * C.llama_max_devices())(*split)
            model_params.tensor_split = self._tensor_split
        self.uses_extra_buffer_types = use_extra_buffer_types
        self._model = C.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise EngineFault(f"llama.cpp could not load {path.name}: not a valid GGUF file?")
        self._vocab = C.llama_model_get_vocab(self._model)
        train_ctx = C.llama_model_n_ctx_train(self._model)
        context_length = (
            min(spec.context_length, train_ctx) if train_ctx > 0 else spec.context_length
        )
        ctx_params = C.llama_context_default_params()
        ctx_params.n_seq_max = spec.max_batch
        ctx_params.n_ctx = context_length * spec.max_batch
        ctx_params.n_batch = _BATCH_TOKENS
        ctx_params.n_ubatch = _BATCH_TOKENS
        ctx_params.n_threads = n_threads
        ctx_params.n_threads_batch = n_threads
        ctx_params.kv_unified = False
        ctx_params.type_k = ctx_params.type_v = _KV_TYPES[spec.kv_cache_type]
        # Asked outright, never llama.cpp's "auto": the memory estimate counts the plain
        # path's attention scores exactly when this is off (attention.py says when).
        self.flash_attention = uses_flash_attention(spec)
        ctx_params.flash_attn_type = (
            C.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.flash_attention
            else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx_params.no_perf = True
        self._ctx = C.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise EngineFault(
                f"llama.cpp could not create a context for {spec.id}"
                f" (kv_cache_type {spec.kv_cache_type})"
            )
        self._memory = C.llama_get_memory(self._ctx)
        self._context_length = C.llama_n_ctx_seq(self._ctx)
        self._batch = C.llama_batch_init(_BATCH_TOKENS + spec.max_batch, 0, 1)
        self._slots = [_Slot(seq_id=i) for i in range(spec.max_batch)]
        self.step_sequences = 0
        self._prefix_cache = spec.prefix_cache
        self._speculative = spec.speculative == "ngram"
        self.drafted_tokens = 0  # speculative decoding's drafts, and how many were right
        self.accepted_tokens = 0
        # The neuron grants each model a share of its node-wide host budget; a spec's own
        # figure is used where no neuron is in charge (tests, benches).
        host_mb = spec.kv_host_cache_mb if kv_host_cache_mb is None else kv_host_cache_mb
        self._host = HostCache(host_mb * 2**20) if spec.prefix_cache else None
        self._disk: DiskCache | None = None
        if spec.prefix_cache and kv_disk_dir is not None and spec.kv_disk_cache_mb > 0:
            key = cache_key(
                file_identity(path),
                context_length=context_length,
                kv_cache_type=spec.kv_cache_type,
                flash_attn_type=int(ctx_params.flash_attn_type),  # lays V out differently
                llama_cpp=C.__version__,  # the state's format is llama.cpp's own
            )
            self._disk = DiskCache(kv_disk_dir, key, spec.kv_disk_cache_mb * 2**20)
        self._waiting: deque[GenerationRequest] = deque()
        self._active: list[_Sequence] = []
        self._piece = ctypes.create_string_buffer(256)
        self._n_threads = n_threads
        self._embedder: EmbeddingContext | None = None  # created by the first embeddings job
        self.info = EngineInfo(
            context_length=self._context_length,
            max_batch=spec.max_batch,
            chat_template=self._meta("tokenizer.chat_template"),
            bos_token=self._token_text(C.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(C.llama_vocab_eos(self._vocab)),
            n_vocab=C.llama_vocab_n_tokens(self._vocab),
            embedding_size=C.llama_model_n_embd_out(self._model),
            attention="flash" if self.flash_attention else "plain",
        )

    # -- tokenizer (read-only on the vocab, safe from any thread) ---------------

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt, special tokens parsed (``<|im_start|>`` is one token).

        BOS is added only when the model wants one and the template did not write it.
        """
        add_bos = bool(C.llama_vocab_get_add_bos(self._vocab)) and not (
            self.info.bos_token and text.startswith(self.info.bos_token)
        )
        data = text.encode()
        capacity = len(data) + 16
        tokens = (C.llama_token * capacity)()
        count = C.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, True)
        if count < 0:  # buffer too small: llama.cpp says how many it needs
            capacity = -count
            tokens = (C.llama_token * capacity)()
            count = C.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, True)
        return list(tokens[:count])

    # -- the decode loop ---------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        self._waiting.append(request)

    def submit_embedding(self, job: EmbeddingJob) -> None:
        if self._embedder is None:
            arch = self._meta("general.architecture") or ""
            pooling = pooling_of(self._meta(f"{arch}.pooling_type"))
            self._embedder = EmbeddingContext(
                self._model, self._context_length, self._n_threads, pooling
            )
        self._embedder.submit(job)

    def has_work(self) -> bool:
        embedding = self._embedder is not None and self._embedder.has_work()
        return bool(self._waiting or self._active) or embedding

    def step(self) -> None:
        self._drop_cancelled()
        self._admit()
        self.step_sequences = len(self._active)
        if self._active:
            self._decode_step()
        # then one micro-batch of embeddings: a long embeddings job never stalls the streams
        if self._embedder is not None and self._embedder.has_work():
            self._embedder.step()

    def abort_all(self, failure: Failure) -> None:
        for seq in list(self._active):
            self._finish(seq, "error", error=failure)
        while self._waiting:
            request = self._waiting.popleft()
            request.sink.put(Finished("error", len(request.prompt_tokens), 0, error=failure))
        if self._embedder is not None:
            self._embedder.abort_all(failure.detail)

    def close(self) -> None:
        self.abort_all(UNLOADED)
        if self._disk is not None:  # what the slots hold outlives the unload on disk
            for slot in self._slots:
                self._save(slot)
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        C.llama_batch_free(self._batch)
        C.llama_free(self._ctx)
        C.llama_model_free(self._model)

    # -- internals ---------------------------------------------------------------

    def _decode_step(self) -> None:
        self._fill_batch()
        status = C.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise EngineFault(f"llama_decode failed with status {status}")
        for seq in [s for s in self._active if s.logits_index >= 0]:
            if seq.draft:
                self._verify(seq)
            else:
                token = C.llama_sampler_sample(seq.sampler, self._ctx, seq.logits_index)
                self._accept(seq, token)

    def _verify(self, seq: _Sequence) -> None:
        """Sample after the pending token and after each draft token in turn, keeping
        drafts while the sampled token equals them.

        Each sampled token comes from the model's distribution given the tokens before
        it, as without drafts: sampled output keeps its distribution (for a draft that is
        one token with certainty, sampling and comparing is the standard rejection rule),
        and greedy output would be the same token for token in exact arithmetic. llama.cpp
        rounds a batch of several tokens of one sequence differently from one token at a
        time, though, so a near tie can go the other way (BENCHMARKS.md). The KV of the
        drafts after the first disagreement is dropped.
        """
        draft = seq.draft
        seq.draft = []
        start = seq.n_past - len(draft)  # KV count once the pending token is in
        seq.drafted += len(draft)  # counted first: the sequence may finish in the loop
        accepted = 0
        for index in range(len(draft) + 1):
            token = C.llama_sampler_sample(seq.sampler, self._ctx, seq.logits_index + index)
            seq.n_past = start + index
            if not self._accept(seq, token) or index == len(draft) or token != draft[index]:
                break
            accepted += 1
            seq.accepted += 1
        keep = start + accepted
        C.llama_memory_seq_rm(self._memory, seq.slot.seq_id, keep, -1)
        del seq.slot.tokens[keep:]
        seq.n_past = keep
        self.drafted_tokens += len(draft)
        self.accepted_tokens += accepted
        if seq.lookup is not None:
            seq.lookup.record(len(draft), accepted)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.request.cancelled]:
            self._finish(seq, "cancelled")
        kept = [r for r in self._waiting if not r.cancelled]
        for request in self._waiting:
            if request.cancelled:
                request.sink.put(Finished("cancelled", len(request.prompt_tokens), 0))
        self._waiting = deque(kept)

    def _admit(self) -> None:
        busy = {seq.slot.seq_id for seq in self._active}
        while self._waiting:
            free = [slot for slot in self._slots if slot.seq_id not in busy]
            if not free:
                return
            request = self._waiting.popleft()
            sampler = self._make_sampler(request)
            if not sampler:
                request.sink.put(
                    Finished(
                        "error",
                        len(request.prompt_tokens),
                        0,
                        error=Failure(FailureKind.GRAMMAR, "invalid grammar"),
                    )
                )
                continue
            if request.use_cache:
                slot, reuse = self._slot_for(free, busy, request.prompt_tokens)
            else:  # from scratch, in an empty or the least recently used slot
                slot, reuse = self._vacate(free), 0
            # Keep the shared prefix's KV, drop the rest of what the slot held.
            C.llama_memory_seq_rm(self._memory, slot.seq_id, reuse, -1)
            slot.tokens = slot.tokens[:reuse]
            busy.add(slot.seq_id)
            self._active.append(
                _Sequence(
                    request=request,
                    slot=slot,
                    sampler=sampler,
                    text=TextAssembler(request.stop),
                    n_past=reuse,
                    cached=reuse,
                )
            )

    def _slot_for(self, free: list[_Slot], busy: set[int], prompt: list[int]) -> tuple[_Slot, int]:
        """The free slot a prompt goes to, holding the longest cached prefix of it that
        any tier has (put there now), and how many of its tokens that prefix covers."""
        slot, reuse = self._best_slot(free, prompt)
        saved, saved_shared = self._saved_for(prompt)
        donor, donor_shared = self._running_prefix(busy, prompt)
        if donor is not None and donor_shared > max(reuse, saved_shared):
            # A running sequence holds the longest prefix (a sub-agent sharing the main
            # loop's system prompt and tools): copy its KV rather than prefill it again.
            slot = self._vacate(free)
            reuse = donor_shared if self._copy_slot(donor, slot) else 0
        elif saved is not None and saved_shared > reuse:
            # Host RAM holds more of this prompt than any free slot: put it back.
            slot = self._vacate(free)
            reuse = saved_shared if self._restore(slot, saved) else 0
        elif reuse < len(slot.tokens):
            self._save(slot)  # what the slot held is about to be cut: keep it
        return slot, reuse

    def _vacate(self, free: list[_Slot]) -> _Slot:
        """An empty free slot, else the least recently used, what it held saved first."""
        slot = min(free, key=lambda s: (bool(s.tokens), s.last_used))
        self._save(slot)
        return slot

    def _best_slot(self, free: list[_Slot], prompt: list[int]) -> tuple[_Slot, int]:
        def shared(slot: _Slot) -> int:
            return shared_prefix(slot.tokens, prompt) if self._prefix_cache else 0

        def preference(slot: _Slot) -> tuple[int, bool, float]:
            # A few shared tokens (the chat template's header) are not worth taking a
            # slot that holds another conversation: an empty one, or the least recently
            # used, goes first; what was there is saved to host RAM.
            n = shared(slot)
            useful = n if n >= MIN_SAVED_TOKENS or n == len(slot.tokens) else 0
            return useful, not slot.tokens, -slot.last_used

        slot = max(free, key=preference)
        # At least one prompt token must be decoded again to get logits to sample from.
        return slot, min(shared(slot), len(prompt) - 1)

    def _saved_for(self, prompt: list[int]) -> tuple[SavedSequence | None, int]:
        """The saved sequence sharing the longest prefix with ``prompt``, and how much
        of it can be used (at least one prompt token is always decoded again)."""
        if self._host is None:
            return None, 0
        saved, shared = self._host.longest(prompt)
        if self._disk is not None:
            entry, on_disk = self._disk.longest(prompt)
            if entry is not None and on_disk > shared:
                state = self._disk.read(entry)  # checked: a bad file is dropped, not used
                if state is not None:
                    saved, shared = SavedSequence(list(entry.tokens), state), on_disk
                    self._host.put(saved.tokens, state)
        return saved, min(shared, len(prompt) - 1)

    def _running_prefix(self, busy: set[int], prompt: list[int]) -> tuple[_Slot | None, int]:
        """The busy slot sharing the longest useful prefix with ``prompt``, and how much
        of it can be used (at least one prompt token is always decoded again)."""
        if not self._prefix_cache:
            return None, 0
        best, best_shared = None, 0
        for slot in self._slots:
            if slot.seq_id in busy:
                shared = shared_prefix(slot.tokens, prompt)
                if shared >= MIN_SAVED_TOKENS and shared > best_shared:
                    best, best_shared = slot, shared
        return best, min(best_shared, len(prompt) - 1)

    def _copy_slot(self, source: _Slot, target: _Slot) -> bool:
        """Make ``target`` hold what ``source`` holds; False (target empty) if refused.

        Through the state API rather than ``llama_memory_seq_cp``: with one KV stream per
        slot, a copy across streams is deferred to the next decode and always copies the
        whole stream, while getting and setting the state is immediate and copies only
        the cells in use."""
        state = self._state_of(source)
        if state is None:
            C.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
            target.tokens = []
            return False
        return self._restore(target, SavedSequence(list(source.tokens), state))

    def _state_of(self, slot: _Slot) -> bytes | None:
        size = C.llama_state_seq_get_size(self._ctx, slot.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data(self._ctx, buffer, size, slot.seq_id)
        return bytes(buffer)[:written] if written else None

    def _save(self, slot: _Slot) -> None:
        """Copy the slot's KV to host RAM and disk before it is cut, unless it is short
        or already held there. Written through to disk at once (not when host RAM lets
        it go) so an engine that crashes has lost nothing that was saved."""
        host, disk = self._host, self._disk
        if host is None or len(slot.tokens) < MIN_SAVED_TOKENS:
            return
        to_host = not host.covers(slot.tokens)
        to_disk = disk is not None and not disk.covers(slot.tokens)
        if not (to_host or to_disk):
            return
        state = self._state_of(slot)
        if state is None:
            return
        if to_host:
            host.put(slot.tokens, state)
        if to_disk and disk is not None:
            disk.put(slot.tokens, state)

    def _restore(self, slot: _Slot, saved: SavedSequence) -> bool:
        """Replace what the slot holds with ``saved``; False (slot empty) if refused."""
        C.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        state = (ctypes.c_uint8 * len(saved.state)).from_buffer_copy(saved.state)
        if not C.llama_state_seq_set_data(self._ctx, state, len(saved.state), slot.seq_id):
            slot.tokens = []
            return False
        assert self._host is not None
        self._host.take(saved)
        slot.tokens = list(saved.tokens)
        return True

    def _make_sampler(self, request: GenerationRequest) -> ctypes.c_void_p | None:
        params = request.sampling
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if params.grammar:
            # First in the chain: every later sampler only sees tokens the grammar allows.
            grammar = C.llama_sampler_init_grammar(self._vocab, params.grammar.encode(), b"root")
            if not grammar:
                C.llama_sampler_free(chain)
                return None
            C.llama_sampler_chain_add(chain, grammar)
        if params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0:
            C.llama_sampler_chain_add(
                chain,
                C.llama_sampler_init_penalties(
                    C.llama_vocab_n_tokens(self._vocab),
                    _PENALTY_WINDOW,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature <= 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(params.min_p, 1))
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _fill_batch(self) -> None:
        batch, n = self._batch, 0

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        # Generating sequences first: one token each (and its draft), so long prompts
        # never stall them; drafts take at most half the batch from prompts waiting.
        draft_budget = _BATCH_TOKENS // 2
        for seq in self._active:
            seq.logits_index = -1
            if not seq.prefilling:
                add(seq.pending_token, seq.n_past, seq.slot.seq_id, True)
                seq.logits_index = n - 1
                seq.slot.tokens.append(seq.pending_token)
                seq.n_past += 1
                seq.draft = self._draft(seq, draft_budget)
                for token in seq.draft:
                    add(token, seq.n_past, seq.slot.seq_id, True)
                    seq.slot.tokens.append(token)
                    seq.n_past += 1
                draft_budget -= len(seq.draft)
        budget = _BATCH_TOKENS - n
        for seq in self._active:
            if not seq.prefilling or budget <= 0:
                continue
            prompt = seq.request.prompt_tokens
            chunk = prompt[seq.n_past : seq.n_past + budget]
            for offset, token in enumerate(chunk):
                last = seq.n_past + offset == len(prompt) - 1
                add(token, seq.n_past + offset, seq.slot.seq_id, last)
                if last:
                    seq.logits_index = n - 1
            seq.slot.tokens.extend(chunk)
            seq.n_past += len(chunk)
            budget -= len(chunk)
        batch.n_tokens = n

    def _draft(self, seq: _Sequence, budget: int) -> list[int]:
        """Tokens to decode after the pending one on speculation: none unless enabled,
        and never past the request's token budget or the context."""
        if not self._speculative:
            return []
        if seq.lookup is None:
            seq.lookup = PromptLookup(seq.request.prompt_tokens + seq.generated)
        room = min(
            budget,
            seq.request.max_new_tokens - len(seq.generated) - 1,
            self._context_length - seq.n_past - 1,
        )
        return seq.lookup.draft(room)

    def _accept(self, seq: _Sequence, token: int) -> bool:
        """One sampled token to the client; False when the sequence ended with it."""
        request = seq.request
        if C.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return False
        seq.generated.append(token)
        if seq.lookup is not None:
            seq.lookup.extend([token])
        end = emit_generated(
            request,
            seq.text,
            self._token_bytes(token),
            generated=len(seq.generated),
            n_past=seq.n_past,
            context_length=self._context_length,
        )
        if end is None:
            seq.pending_token = token
            return True
        self._finish(seq, end)
        return False

    def _finish(self, seq: _Sequence, reason: FinishReason, error: Failure | None = None) -> None:
        emit_finished(
            seq.request,
            reason,
            tail=seq.text.finish(),
            text=seq.text,
            completion_tokens=len(seq.generated),
            cached_tokens=seq.cached,
            error=error,
            drafted_tokens=seq.drafted,
            accepted_tokens=seq.accepted,
        )
        C.llama_sampler_free(seq.sampler)
        seq.slot.last_used = time.monotonic()
        if reason == "error" or not seq.request.use_cache:  # in doubt, or not to be kept
            C.llama_memory_seq_rm(self._memory, seq.slot.seq_id, -1, -1)
            seq.slot.tokens = []
        self._active.remove(seq)

    def _token_bytes(self, token: int) -> bytes:
        size = C.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = C.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            return buffer.raw[:size]
        return self._piece.raw[:size]

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = C.llama_vocab_get_text(self._vocab, token)
        return text.decode(errors="replace") if text else ""

    def _meta(self, key: str) -> str | None:
        size = C.llama_model_meta_val_str(self._model, key.encode(), None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        C.llama_model_meta_val_str(self._model, key.encode(), buffer, size + 1)
        return buffer.value.decode(errors="replace")
