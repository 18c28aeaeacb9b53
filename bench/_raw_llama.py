"""The raw llama.cpp decode loop: a child process (this file run as a script) and its handle.

Usage (by ``RawWorker`` only): ``python bench/_raw_llama.py JOB_JSON``
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _config import CONTEXT, LONG_PROMPTS, N_BATCH, THREADS
from _procs import model_path
from _streams import user

from cortex.neuron.engines.llamacpp.attention import uses_flash_attention
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec


class RawWorker:
    """The raw llama.cpp loop in a child process (``_raw_llama.py`` run as a script).

    It loads the model once, then runs one command at a time from its stdin and answers
    one JSON line each; between commands it sleeps on the pipe, so it never runs while
    the neuron does, and line 1 can alternate neuron and raw runs.
    """

    def __init__(
        self, stack: contextlib.ExitStack, log_dir: Path, extra_buffer_types: bool = True
    ) -> None:
        job = {
            "model": str(model_path()),
            "messages": user(LONG_PROMPTS[0]),
            "extra_buffer_types": extra_buffer_types,
            # the neuron's own choice for the bundled model's spec on this build
            "flash_attention": uses_flash_attention(
                ModelSpec(id="bench", source=BUNDLED_MODEL_SOURCE)
            ),
        }
        self.log_path = log_dir / "raw_worker.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        stack.callback(self.stop)
        self.prompt_tokens: int = self._reply()["prompt_tokens"]

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"raw llama.cpp worker died:\n{tail}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def raw_worker(job: dict[str, Any]) -> None:
    """Serve ``single`` and ``batched`` commands, one JSON line in and out each.

    single: greedy decode of ``n_tokens`` after the chat prompt, one sequence.
    batched: ``n_seq`` copies of the prompt, one token per sequence per ``llama_decode``,
    decode steps only: what llama.cpp itself gains from batching on this CPU.
    """
    import llama_cpp as C

    from cortex.neuron.prompt.template import render_chat

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever llama.cpp or a library prints must not corrupt the replies

    C.llama_backend_init()
    model_params = C.llama_model_default_params()
    model_params.n_gpu_layers = 0
    # as the neuron's canary chose: they die of SIGILL on a Xeon that hides AMX
    model_params.use_extra_bufts = job["extra_buffer_types"]
    model = C.llama_model_load_from_file(job["model"].encode(), model_params)
    vocab = C.llama_model_get_vocab(model)
    tokens = _raw_prompt_tokens(C, model, vocab, job["messages"], render_chat)
    contexts: dict[int, Any] = {}
    replies.write(json.dumps({"prompt_tokens": len(tokens)}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        n_seq = command.get("n_seq", 1)
        if n_seq not in contexts:
            contexts[n_seq] = _raw_context(C, model, n_seq, job["flash_attention"])
        ctx = contexts[n_seq]
        if command["cmd"] == "single":
            rate, out = _raw_single(C, ctx, tokens, command["n_tokens"])
            text = b"".join(_piece(C, vocab, t) for t in out if not C.llama_vocab_is_eog(vocab, t))
            reply = {"rate": rate, "text": text.decode(errors="replace")}
        else:
            reply = {"rate": _raw_batched(C, ctx, tokens, n_seq, command["steps"])}
        replies.write(json.dumps(reply) + "\n")


def _raw_context(C: Any, model: Any, n_seq: int, flash_attention: bool) -> Any:
    """A context set up as the neuron's engine sets its own (one KV stream per sequence)."""
    params = C.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = CONTEXT * n_seq, n_seq, False
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_threads = params.n_threads_batch = THREADS
    params.no_perf = True
    params.flash_attn_type = (
        C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    return C.llama_init_from_model(model, params)


def _greedy(C: Any) -> Any:
    sampler = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(sampler, C.llama_sampler_init_greedy())
    return sampler


def _raw_single(C: Any, ctx: Any, prompt: list[int], n_tokens: int) -> tuple[float, list[int]]:
    """Prefill, then decode one token at a time; rate timed from the first token to the last."""
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    sampler, batch = _greedy(C), C.llama_batch_init(N_BATCH, 0, 1)
    try:
        _decode(C, ctx, batch, [(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        out = [C.llama_sampler_sample(sampler, ctx, -1)]
        t_first = time.perf_counter()
        for pos in range(len(prompt), len(prompt) + n_tokens - 1):
            _decode(C, ctx, batch, [(out[-1], pos, 0, True)])
            out.append(C.llama_sampler_sample(sampler, ctx, -1))
        return len(out) / (time.perf_counter() - t_first), out
    finally:
        C.llama_sampler_free(sampler)
        C.llama_batch_free(batch)


def _raw_batched(C: Any, ctx: Any, prompt: list[int], n_seq: int, steps: int) -> float:
    """Aggregate tok/s of ``steps`` decode steps over ``n_seq`` sequences (prefill untimed)."""
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    sampler, batch = _greedy(C), C.llama_batch_init(N_BATCH, 0, 1)
    try:
        last = len(prompt) - 1
        for seq in range(n_seq):
            _decode(C, ctx, batch, [(t, i, seq, i == last) for i, t in enumerate(prompt)])
        tokens = [C.llama_sampler_sample(sampler, ctx, -1)] * n_seq
        started = time.perf_counter()
        for pos in range(len(prompt), len(prompt) + steps):
            _decode(C, ctx, batch, [(tokens[s], pos, s, True) for s in range(n_seq)])
            tokens = [C.llama_sampler_sample(sampler, ctx, s) for s in range(n_seq)]
        return n_seq * steps / (time.perf_counter() - started)
    finally:
        C.llama_sampler_free(sampler)
        C.llama_batch_free(batch)


def _decode(C: Any, ctx: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """One ``llama_decode`` of (token, position, sequence, wants logits) entries."""
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits
    batch.n_tokens = len(entries)
    if C.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")


def _raw_prompt_tokens(
    C: Any, model: Any, vocab: Any, messages: list[dict[str, str]], render: Callable[..., str]
) -> list[int]:
    """The prompt exactly as the neuron builds it: the GGUF's chat template, specials parsed."""
    size = C.llama_model_meta_val_str(model, b"tokenizer.chat_template", None, 0)
    buffer = ctypes.create_string_buffer(size + 1)
    C.llama_model_meta_val_str(model, b"tokenizer.chat_template", buffer, size + 1)

    def token_text(token: int) -> str:
        return C.llama_vocab_get_text(vocab, token).decode() if token >= 0 else ""

    bos = token_text(C.llama_vocab_bos(vocab))
    eos = token_text(C.llama_vocab_eos(vocab))
    text = render(buffer.value.decode(), messages, bos_token=bos, eos_token=eos)
    add_bos = bool(C.llama_vocab_get_add_bos(vocab)) and not (bos and text.startswith(bos))
    data = text.encode()
    out = (C.llama_token * (len(data) + 16))()
    count = C.llama_tokenize(vocab, data, len(data), out, len(out), add_bos, True)
    return list(out[:count])


def _piece(C: Any, vocab: Any, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(256)
    size = C.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[: max(size, 0)]


if __name__ == "__main__":
    raw_worker(json.loads(sys.argv[1]))
