"""The KV cache's disk tier: what it keeps, finds, evicts, and refuses to hand back."""

from pathlib import Path

from cortex.neuron.engines.llamacpp.disk_cache import DiskCache, cache_key, file_identity

KEY = cache_key("model-a", context_length=2048, kv_cache_type="f16")
TOKENS = list(range(100, 164))  # 64 tokens: over the minimum kept


def test_a_saved_state_is_found_by_prefix_and_read_back_after_a_restart(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, KEY, 1 << 20)
    assert cache.put(TOKENS, b"state-of-64")
    again = DiskCache(tmp_path, KEY, 1 << 20)  # a new engine process, the same folder
    entry, shared = again.longest([*TOKENS, 7, 8])
    assert entry is not None and shared == len(TOKENS)
    assert again.read(entry) == b"state-of-64"
    assert again.longest([1, 2, 3]) == (None, 0)


def test_a_longer_save_replaces_the_entries_it_extends(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, KEY, 1 << 20)
    cache.put(TOKENS, b"short")
    cache.put([*TOKENS, *range(40)], b"longer")
    assert len(cache) == 1 and len(list((tmp_path / KEY).glob("*.kv"))) == 1
    assert cache.covers(TOKENS)


def test_short_or_oversized_states_are_not_kept(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, KEY, 100)
    assert not cache.put(TOKENS[:8], b"x")
    assert not cache.put(TOKENS, b"x" * 101)
    assert len(cache) == 0


def test_least_recently_used_entries_go_first_over_the_budget(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, KEY, 4000)  # room for two 1000-byte states and headers
    first, second = TOKENS, [t + 1000 for t in TOKENS]
    cache.put(first, b"a" * 1000)
    cache.put(second, b"b" * 1000)
    entry, _ = cache.longest(first)
    assert entry is not None and cache.read(entry)  # first is the more recently used now
    cache.put([t + 2000 for t in TOKENS], b"c" * 1000)
    assert cache.longest(first)[1] == len(first)
    assert cache.longest(second) == (None, 0)
    assert cache.used_bytes <= 4000


def test_a_corrupt_entry_is_removed_never_returned(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, KEY, 1 << 20)
    cache.put(TOKENS, b"good state bytes")
    (path,) = (tmp_path / KEY).glob("*.kv")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the state
    path.write_bytes(bytes(data))
    entry, _ = cache.longest(TOKENS)
    assert entry is not None and cache.read(entry) is None
    assert not path.exists() and len(cache) == 0


def test_a_cut_short_file_is_dropped_at_start(tmp_path: Path) -> None:
    DiskCache(tmp_path, KEY, 1 << 20).put(TOKENS, b"state")
    (path,) = (tmp_path / KEY).glob("*.kv")
    path.write_bytes(path.read_bytes()[:6])
    (tmp_path / KEY / "half.tmp").write_bytes(b"partial write")
    assert len(DiskCache(tmp_path, KEY, 1 << 20)) == 0
    assert list((tmp_path / KEY).iterdir()) == []


def test_another_models_entry_is_never_loaded(tmp_path: Path) -> None:
    other = cache_key("model-b", context_length=2048, kv_cache_type="f16")
    assert other != KEY
    assert cache_key("model-a", context_length=2048, kv_cache_type="q8_0") != KEY
    DiskCache(tmp_path, other, 1 << 20).put(TOKENS, b"model b's KV")
    (foreign,) = (tmp_path / other).glob("*.kv")
    (tmp_path / KEY).mkdir()
    (tmp_path / KEY / foreign.name).write_bytes(foreign.read_bytes())  # copied in by hand
    cache = DiskCache(tmp_path, KEY, 1 << 20)
    assert cache.longest(TOKENS) == (None, 0)
    assert not (tmp_path / KEY / foreign.name).exists()
    assert len(DiskCache(tmp_path, other, 1 << 20)) == 1  # its own folder is untouched


def test_file_identity_follows_content_and_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"x" * 10_000)
    b.write_bytes(b"x" * 10_000)
    assert file_identity(a) == file_identity(b)
    b.write_bytes(b"x" * 9_999 + b"y")
    assert file_identity(a) != file_identity(b)
    b.write_bytes(b"x" * 10_001)
    assert file_identity(a) != file_identity(b)
