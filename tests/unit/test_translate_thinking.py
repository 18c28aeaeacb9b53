"""Splitting ``<think>…</think>`` reasoning from the answer, whole or in pieces."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cortex.translate.thinking import ThinkSplitter, signature_for


def split(text: str, cuts: list[int] | None = None) -> tuple[str, str]:
    """(thinking, text) after feeding ``text`` cut at ``cuts``."""
    bounds = [0, *sorted(cuts or []), len(text)]
    splitter = ThinkSplitter()
    pieces = []
    for start, end in itertools.pairwise(bounds):
        pieces += splitter.feed(text[start:end])
    pieces += splitter.finish()
    assert all(piece for _, piece in pieces)
    kinds = [kind for kind, _ in pieces]
    assert kinds == sorted(kinds, key=lambda k: k != "thinking"), "thinking comes first"
    thinking = "".join(p for k, p in pieces if k == "thinking")
    return thinking, "".join(p for k, p in pieces if k == "text")


def test_plain_text_passes_through() -> None:
    assert split("  Hello <think> world") == ("", "  Hello <think> world")


def test_leading_think_block_is_split_and_trimmed() -> None:
    assert split("<think>\nStep 1.\nStep 2.\n</think>\n\nAnswer.") == (
        "Step 1.\nStep 2.",
        "Answer.",
    )
    assert split("\n<think>x</think>y") == ("x", "y")


def test_empty_think_block_gives_no_thinking() -> None:
    assert split("<think>\n\n</think>\n\nHi") == ("", "Hi")


def test_unclosed_thinking_cut_by_the_token_limit() -> None:
    assert split("<think>still going</thi") == ("still going", "")


def test_a_text_that_only_starts_like_the_tag() -> None:
    assert split("<thi") == ("", "<thi")
    assert split("<thing>") == ("", "<thing>")


texts = st.text(alphabet=st.sampled_from(list("ab \n<>/thinkTHINK")), max_size=40)


@given(texts, texts, texts, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_cutting_splits_like_the_whole(
    prefix: str, thought: str, answer: str, cuts: list[int]
) -> None:
    for text in (prefix + answer, f"{prefix.strip()}<think>{thought}</think>{answer}"):
        bounded = [min(c, len(text)) for c in cuts]
        assert split(text, bounded) == split(text)


def test_signature_is_stable_and_opaque() -> None:
    assert signature_for("a") == signature_for("a") != signature_for("b")
    assert signature_for("")
