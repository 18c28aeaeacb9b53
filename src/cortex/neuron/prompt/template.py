"""Rendering chat messages into a model's prompt with the model's own Jinja template.

Templates come from model files (GGUF metadata, tokenizer_config.json), so they
run in Jinja's immutable sandbox: a template may compute, never reach out.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cortex.errors import InvalidRequest

# ChatML, for models that ship without a template: the most common format.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the conversation: {message}")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    # HF templates expect non-ASCII kept as is (Jinja's own tojson escapes HTML).
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    # The same environment settings transformers uses, so templates render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text exactly as the model was trained to see it."""
    try:
        return _compile(template or FALLBACK_TEMPLATE).render(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except InvalidRequest:
        raise
    except TemplateError as exc:
        raise InvalidRequest(
            f"the model's chat template failed on this conversation: {exc}"
        ) from exc
