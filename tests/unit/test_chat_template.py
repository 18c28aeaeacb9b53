import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.prompt.template import FALLBACK_TEMPLATE, render_chat

CHATML = FALLBACK_TEMPLATE


def test_chatml_render_with_generation_prompt() -> None:
    text = render_chat(
        CHATML, [{"role": "user", "content": "Hi"}], bos_token="", eos_token="<|im_end|>"
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_template_errors_are_client_errors() -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        render_chat(template, [], bos_token="", eos_token="")
    with pytest.raises(InvalidRequest, match="chat template failed"):
        render_chat("{{ messages[5]['content'].x.y }}", [], bos_token="", eos_token="")


def test_the_sandbox_refuses_to_reach_out() -> None:
    template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequest):
        render_chat(template, [], bos_token="", eos_token="")


def test_tojson_keeps_unicode_and_tools_reach_the_template() -> None:
    template = "{{ tools | tojson }}"
    tools = [{"type": "function", "function": {"name": "météo"}}]
    assert "météo" in render_chat(template, [], bos_token="", eos_token="", tools=tools)
