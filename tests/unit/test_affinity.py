"""Explicit sessions: a key per x-session-id and model, none without the header."""

from __future__ import annotations

from cortex.gateway.affinity import AffinityTable, session_key


def test_only_an_explicit_session_id_makes_a_key() -> None:
    assert session_key("m", {}) is None
    one = session_key("m", {"x-session-id": "s-1"})
    assert one is not None and one == session_key("m", {"x-session-id": "s-1"})
    assert one != session_key("m", {"x-session-id": "s-2"})
    assert one != session_key("other-model", {"x-session-id": "s-1"})


def test_the_table_forgets_the_least_recently_used() -> None:
    table = AffinityTable(capacity=2)
    table.remember("a", "n1")
    table.remember("b", "n2")
    assert table.get("a") == "n1"  # a is now the most recent
    table.remember("c", "n3")
    assert table.get("b") is None and table.get("a") == "n1" and len(table) == 2
