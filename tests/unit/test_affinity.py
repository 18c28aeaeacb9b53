"""Session keys: one per conversation, or per explicit x-session-id."""

from __future__ import annotations

from cortex.gateway.affinity import AffinityTable, session_key

OPENING = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]


def test_a_conversation_keeps_its_key_as_it_grows() -> None:
    first = session_key("m", {"messages": OPENING}, {})
    later = [*OPENING, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "?"}]
    assert first is not None and session_key("m", {"messages": later}, {}) == first
    other = [{"role": "user", "content": "Another topic."}]
    assert session_key("m", {"messages": other}, {}) != first
    assert session_key("other-model", {"messages": OPENING}, {}) != first


def test_an_explicit_session_id_wins_over_the_messages() -> None:
    one = session_key("m", {"messages": OPENING}, {"x-session-id": "s-1"})
    assert one == session_key(
        "m", {"messages": [{"role": "user", "content": "x"}]}, {"x-session-id": "s-1"}
    )
    assert one != session_key("m", {"messages": OPENING}, {"x-session-id": "s-2"})


def test_the_table_forgets_the_least_recently_used() -> None:
    table = AffinityTable(capacity=2)
    table.remember("a", "n1")
    table.remember("b", "n2")
    assert table.get("a") == "n1"  # a is now the most recent
    table.remember("c", "n3")
    assert table.get("b") is None and table.get("a") == "n1" and len(table) == 2
