"""Prompt lookup drafts what followed the sequence's latest n-gram, and adapts its length."""

from cortex.neuron.engines.prompt_lookup import MAX_DRAFT, MIN_DRAFT, START_DRAFT, PromptLookup


def test_drafts_what_followed_the_last_trigram_before() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 7, 9, 2, 3])
    assert lookup.draft(3) == [4, 5, 6]


def test_the_latest_occurrence_wins() -> None:
    lookup = PromptLookup([7, 8, 9, 1, 7, 8, 9, 2, 0, 7, 8, 9])
    assert lookup.draft(1) == [2]


def test_falls_back_to_a_bigram_and_to_nothing() -> None:
    assert PromptLookup([5, 6, 1, 2, 8, 6, 1]).draft(2) == [2, 8]
    assert PromptLookup([1, 2, 3, 4]).draft(4) == []
    assert PromptLookup([]).draft(4) == []


def test_tokens_appended_later_are_found() -> None:
    lookup = PromptLookup([1, 2, 3])
    lookup.extend([4, 5, 1, 2, 3])
    assert lookup.draft(2) == [4, 5]


def test_draft_never_exceeds_the_limit_or_the_length() -> None:
    lookup = PromptLookup([*range(40), 0, 1, 2])
    assert len(lookup.draft(3)) == 3
    assert len(lookup.draft(100)) == START_DRAFT
    assert lookup.draft(0) == []


def test_length_grows_on_whole_acceptance_and_shrinks_on_a_miss() -> None:
    lookup = PromptLookup([])
    lookup.record(START_DRAFT, START_DRAFT)
    assert lookup.draft_length == min(MAX_DRAFT, START_DRAFT * 2)
    for _ in range(5):
        lookup.record(lookup.draft_length, lookup.draft_length)
    assert lookup.draft_length == MAX_DRAFT
    lookup.record(MAX_DRAFT, 3)
    assert lookup.draft_length == 4
    lookup.record(4, 0)
    assert lookup.draft_length == MIN_DRAFT
    lookup.record(0, 0)  # nothing drafted: nothing learnt
    assert lookup.draft_length == MIN_DRAFT
