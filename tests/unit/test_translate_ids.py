"""The stateless, reversible tool-call id mapping."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from cortex.translate.ids import message_id, to_anthropic_tool_id, to_backend_tool_id

LEGAL = re.compile(r"^[a-zA-Z0-9_-]+$")


def test_safe_ids_are_prefixed() -> None:
    assert to_anthropic_tool_id("call_3f9a") == "toolu_call_3f9a"
    assert to_backend_tool_id("toolu_call_3f9a") == "call_3f9a"


def test_unsafe_ids_are_encoded_and_legal() -> None:
    exposed = to_anthropic_tool_id("call.abc:1")
    assert LEGAL.match(exposed) and exposed.startswith("toolu_")
    assert to_backend_tool_id(exposed) == "call.abc:1"


def test_a_safe_id_that_looks_encoded_still_round_trips() -> None:
    assert to_backend_tool_id(to_anthropic_tool_id("b64-x")) == "b64-x"


def test_foreign_ids_pass_through() -> None:
    assert to_backend_tool_id("call_abc") == "call_abc"  # never minted by us
    assert to_backend_tool_id("toolu_01A09q90qw90lq917835lq9") == "01A09q90qw90lq917835lq9"
    assert to_backend_tool_id("toolu_b64-!!") == "b64-!!"


@given(st.text())
def test_every_backend_id_round_trips_through_a_legal_id(backend_id: str) -> None:
    exposed = to_anthropic_tool_id(backend_id)
    assert LEGAL.match(exposed)
    assert to_backend_tool_id(exposed) == backend_id


@given(st.text(), st.text())
def test_distinct_backend_ids_stay_distinct(a: str, b: str) -> None:
    if a != b:
        assert to_anthropic_tool_id(a) != to_anthropic_tool_id(b)


def test_message_ids() -> None:
    assert message_id("chatcmpl-9f2a") == "msg_chatcmpl9f2a"
    assert message_id(None).startswith("msg_") and len(message_id(None)) > 10
