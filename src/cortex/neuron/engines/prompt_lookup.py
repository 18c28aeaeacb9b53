"""Draft tokens for speculative decoding, looked up in the sequence's own tokens.

Prompt lookup (n-gram drafting): the last few tokens of a sequence are searched for
earlier in it (prompt and output alike), and what followed them there is the draft.
Coding agents rewrite text they have just read (a file with one change, a diff that
repeats its context), where these drafts are mostly right and cost no draft model.

An index from each n-gram to where its latest continuation starts is kept up to date
as tokens arrive, so a lookup is a dict probe, not a scan of the whole context on
every step. The draft length adapts: it grows while drafts are accepted whole and
shrinks after a miss, so a sequence that stops repeating stops paying for drafts.
"""

from __future__ import annotations

NGRAM_SIZES = (3, 2)  # longest first: a longer match is likelier to continue alike
MIN_DRAFT = 2
MAX_DRAFT = 16
START_DRAFT = 8


class PromptLookup:
    """The n-gram index of one sequence's tokens and its adaptive draft length."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens: list[int] = []
        # n-gram -> index of the token that followed its latest occurrence
        self._next: dict[tuple[int, ...], int] = {}
        self.draft_length = START_DRAFT
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Tokens appended to the sequence (prompt, then each accepted token)."""
        for token in tokens:
            end = len(self._tokens)  # the n-grams ending just before ``token`` now continue
            for n in NGRAM_SIZES:
                if end >= n:
                    self._next[tuple(self._tokens[end - n : end])] = end
            self._tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(limit, draft_length)`` tokens likely to follow the sequence."""
        length = min(limit, self.draft_length)
        if length <= 0:
            return []
        tokens = self._tokens
        for n in NGRAM_SIZES:
            if len(tokens) <= n:
                continue
            start = self._next.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start : start + length]
        return []

    def record(self, drafted: int, accepted: int) -> None:
        """How many of ``drafted`` tokens the model agreed with: adapt the length."""
        if drafted == 0:
            return
        if accepted == drafted:
            self.draft_length = min(MAX_DRAFT, self.draft_length * 2)
        else:
            self.draft_length = max(MIN_DRAFT, min(self.draft_length, accepted + 1))
