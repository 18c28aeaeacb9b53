"""The host-RAM tier's bookkeeping: longest prefix, superseded entries, LRU eviction."""

from __future__ import annotations

import random

from cortex.neuron.engines.llamacpp.host_cache import MIN_SAVED_TOKENS, HostCache, shared_prefix

N = MIN_SAVED_TOKENS


def test_shared_prefix_matches_a_plain_scan() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(10))]
        pairs = enumerate(zip(a, b, strict=False))
        expected = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
        assert shared_prefix(a, b) == expected


def test_the_longest_shared_prefix_wins() -> None:
    cache = HostCache(10_000)
    header = list(range(N))
    cache.put(header + [1] * N, b"a" * 10)
    cache.put(header + [2] * N, b"b" * 10)
    entry, shared = cache.longest(header + [2] * (N + 5))
    assert entry is not None and entry.state == b"b" * 10 and shared == 2 * N
    assert cache.longest([9] * N) == (None, 0)


def test_a_longer_save_of_a_conversation_replaces_the_shorter() -> None:
    cache = HostCache(10_000)
    turn1 = list(range(N))
    cache.put(turn1, b"x" * 10)
    cache.put(turn1 + [7] * N, b"y" * 20)
    assert len(cache) == 1 and cache.used_bytes == 20
    assert cache.covers(turn1) and cache.covers(turn1 + [7] * N)
    assert not cache.covers([*turn1, 8])


def test_least_recently_used_goes_first_within_the_budget() -> None:
    cache = HostCache(30)
    old, used, new = ([k] * N for k in (1, 2, 3))
    cache.put(old, b"o" * 10)
    cache.put(used, b"u" * 10)
    cache.take(cache.longest(old)[0])  # restored: recently used now
    cache.put(new, b"n" * 15)
    assert cache.used_bytes <= 30
    assert cache.longest(used) == (None, 0)  # the least recently used one went
    assert cache.longest(old)[1] == N and cache.longest(new)[1] == N


def test_what_cannot_fit_or_is_too_short_is_not_kept() -> None:
    cache = HostCache(10)
    assert not cache.put([1] * N, b"z" * 11)
    assert not cache.put([1] * (N - 1), b"z")
    assert len(cache) == 0 and cache.used_bytes == 0
