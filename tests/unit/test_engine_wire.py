"""What crosses the pipe between the neuron and an engine process (``runtime/wire.py``):
events and errors come back as what went in."""

from __future__ import annotations

import pytest

from cortex import errors
from cortex.neuron.engines.base import (
    UNLOADED,
    EngineFault,
    Failure,
    FailureKind,
    Finished,
    TextChunk,
)
from cortex.neuron.runtime import engine_host, wire


def _through_the_pipe(item: list) -> list:
    return wire.decode(wire.encode(item))


@pytest.mark.parametrize(
    "event",
    [
        TextChunk("Hello"),
        TextChunk(""),
        TextChunk('naïve "quotes" \\ 日本語 🙂\n'),
        Finished("stop", prompt_tokens=8, completion_tokens=3),
        Finished("stop", 8, 2, cached_tokens=5, stop_sequence=" wor"),
        Finished("length", 8, 16, cached_tokens=0),
        Finished("cancelled", 8, 0),
        Finished("error", 8, 0, error=Failure(FailureKind.FAULT, "died of SIGSEGV")),
        Finished("error", 8, 1, error=Failure(FailureKind.GRAMMAR, "bad grammar")),
        Finished("error", 8, 0, error=UNLOADED),
    ],
    ids=repr,
)
def test_an_event_survives_the_pipe(event: TextChunk | Finished) -> None:
    item = _through_the_pipe(wire.encode_event(7, event))
    assert item[1] == 7  # the request it belongs to
    assert wire.decode_event(item) == event


def test_a_failure_comes_back_as_its_kind() -> None:
    event = Finished("error", 3, 0, error=Failure(FailureKind.FAULT, "gone"))
    decoded = wire.decode_event(_through_the_pipe(wire.encode_event(1, event)))
    assert isinstance(decoded, Finished)
    assert decoded.error is not None and decoded.error.kind is FailureKind.FAULT


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidRequest("The prompt is empty.", param="prompt", code="empty_prompt"),
        errors.InvalidRequest("no param, no code"),
        errors.Overloaded("busy", code="queue_full"),
        errors.UpstreamError("engine said no", code="engine_error"),
        errors.Unavailable("not now"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_cortex_error_keeps_its_class_message_param_and_code(error: errors.CortexError) -> None:
    back = wire.error_from(_through_the_pipe([wire.error_of(error)])[0])

    assert type(back) is type(error)
    assert back.status == error.status
    assert (back.message, back.param, back.code) == (error.message, error.param, error.code)


@pytest.mark.parametrize(
    "error", [RuntimeError("llama_decode returned -1"), ValueError("bad"), KeyError("k")]
)
def test_an_unknown_exception_becomes_an_upstream_error(error: Exception) -> None:
    data = _through_the_pipe([wire.error_of(error)])[0]
    back = wire.error_from(data)

    assert type(back) is errors.UpstreamError
    assert back.status == 502
    assert back.code == "engine_error"
    assert type(error).__name__ in back.message  # what it was stays readable
    assert str(error) in back.message


def test_an_error_not_in_the_cortex_tree_becomes_an_upstream_error() -> None:
    # EngineFault lives beside the engines, not in cortex.errors: found by name nowhere.
    back = wire.error_from(wire.error_of(EngineFault("the canary generation failed")))
    assert type(back) is errors.UpstreamError
    assert back.message == "the canary generation failed"


def test_a_garbled_error_becomes_an_upstream_error() -> None:
    assert type(wire.error_from({})) is errors.UpstreamError
    # A name the errors module holds that is no cortex error (typing.Any) is not built.
    assert type(wire.error_from({"class": "Any", "message": "x"})) is errors.UpstreamError
    assert wire.error_from({"class": None}).message == "engine error"


def test_a_cortex_error_with_its_own_constructor_keeps_its_status() -> None:
    error = errors.ModelNotFound("m")
    back = wire.error_from(_through_the_pipe([wire.error_of(error)])[0])
    assert back.status == 404
    assert back.message == error.message


# -- the engine's side: every step is heard ------------------------------------------------


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[list] = []

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(wire.decode(data))


class _EmbeddingSliceEngine:
    """An engine busy with a long embeddings job: a step decodes one slice of it, and
    neither emits an event nor runs a sequence."""

    step_sequences = 0

    def has_work(self) -> bool:
        return True

    def step(self) -> None:
        pass


def test_a_step_that_emits_nothing_is_still_heard() -> None:
    """The neuron's watchdog counts silence from the engine's last message: a step that
    sends none (a slice of a long embeddings job) would make a busy engine look hung."""
    pipe = _Pipe()
    host = engine_host._Host(pipe, _EmbeddingSliceEngine())  # type: ignore[arg-type]

    host._step()
    host._step()

    assert pipe.sent == [[wire.EVENTS, 0, []], [wire.EVENTS, 0, []]]
