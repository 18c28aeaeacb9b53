"""Which attention kernel a GGUF load asks llama.cpp for (engines/llamacpp/attention.py)."""

from __future__ import annotations

import pytest

from cortex.neuron.engines.llamacpp import attention
from cortex.neuron.engines.llamacpp.attention import uses_flash_attention
from cortex.spec import ModelSpec


def spec(**fields) -> ModelSpec:
    return ModelSpec(id="m", source="pkg:x/y.gguf", **fields)


@pytest.mark.parametrize("offloads", [True, False])
def test_auto_follows_whether_the_build_offloads(monkeypatch, offloads: bool) -> None:
    monkeypatch.setattr(attention, "build_offloads", lambda: offloads)
    assert uses_flash_attention(spec()) is offloads


@pytest.mark.parametrize("offloads", [True, False])
def test_an_explicit_choice_wins_over_the_build(monkeypatch, offloads: bool) -> None:
    monkeypatch.setattr(attention, "build_offloads", lambda: offloads)
    assert uses_flash_attention(spec(flash_attention=True)) is True
    assert uses_flash_attention(spec(flash_attention=False)) is False


def test_a_quantised_kv_cache_always_gets_flash_attention(monkeypatch) -> None:
    monkeypatch.setattr(attention, "build_offloads", lambda: False)
    assert uses_flash_attention(spec(kv_cache_type="q8_0")) is True
    with pytest.raises(ValueError, match="needs flash attention"):
        spec(kv_cache_type="q4_0", flash_attention=False)
