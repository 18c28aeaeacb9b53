from cortex.neuron.engines.textstream import StopMatcher, TextAssembler


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.feed(p) for p in pieces)
    return out + (matcher.flush() if matcher.matched is None else "")


def test_no_stops_passes_everything_through() -> None:
    assert feed_all(StopMatcher([]), ["a", "b"]) == "ab"


def test_stop_inside_one_piece() -> None:
    matcher = StopMatcher(["STOP"])
    assert feed_all(matcher, ["helloSTOPworld"]) == "hello"
    assert matcher.matched == "STOP"


def test_stop_split_across_pieces_at_every_boundary() -> None:
    text = "one two STOP three"
    for cut in range(1, len(text)):
        for second in range(cut + 1, len(text) + 1):
            matcher = StopMatcher(["STOP"])
            pieces = [text[:cut], text[cut:second], text[second:]]
            assert feed_all(matcher, pieces) == "one two ", (cut, second)
            assert matcher.matched == "STOP"


def test_partial_match_that_fails_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ""
    assert matcher.feed("AR") == "STAR"
    assert matcher.matched is None


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.feed("hello world") == "hel"
    assert matcher.matched == "lo"


def test_held_text_is_flushed_at_the_end() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.flush() == "ST"


def test_utf8_split_across_tokens_is_never_emitted_half() -> None:
    assembler = TextAssembler([])
    data = "héllo ✓".encode()
    out = "".join(assembler.feed(data[i : i + 1]) for i in range(len(data)))
    assert out + assembler.finish() == "héllo ✓"
    assert "\ufffd" not in out
