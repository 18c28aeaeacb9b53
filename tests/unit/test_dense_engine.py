"""The dense engine's scheduling over a fake model: serialised, prefix reuse, faults."""

from __future__ import annotations

import pytest

import required
from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import (
    EngineFault,
    EngineInfo,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextChunk,
)
from cortex.spec import ModelSpec

torch = required.module("torch")

from cortex.neuron.engines.dense.engine import DenseEngine, create_dense_engine  # noqa: E402

VOCAB = 50
EOS = 0


class FakeRunner:
    """Predicts ``last token + 1`` (EOS after ``stop_at``) and records every call."""

    can_trim = True

    def __init__(self, stop_at: int = 10**9) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at
        self.fail = False

    def forward(self, tokens: list[int], start: int) -> torch.Tensor:
        self.calls.append(("forward", list(tokens), start))
        if self.fail:
            raise RuntimeError("device lost")
        nxt = tokens[-1] + 1
        logits = torch.zeros(VOCAB)
        logits[EOS if nxt >= self.stop_at else nxt % VOCAB] = 1.0
        return logits

    def clear(self) -> None:
        self.calls.append(("clear",))

    def close(self) -> None:
        self.calls.append(("close",))


class FakeStream:
    def feed(self, token: int) -> str:
        return f"<{token}>"

    def finish(self) -> str:
        return ""


class FakeTokenizer:
    eos_ids = frozenset({EOS})

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def text_stream(self, prompt: list[int]) -> FakeStream:
        return FakeStream()


class Sink:
    def __init__(self) -> None:
        self.events: list = []

    def put(self, event) -> None:
        self.events.append(event)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextChunk))

    @property
    def finished(self) -> Finished:
        assert isinstance(self.events[-1], Finished)
        return self.events[-1]


def engine(runner: FakeRunner, prefix_cache: bool = True) -> DenseEngine:
    info = EngineInfo(
        context_length=64, max_batch=1, chat_template=None, bos_token="", eos_token="",
        n_vocab=VOCAB, embedding_size=8,
    )  # fmt: skip
    built = DenseEngine.__new__(DenseEngine)
    built._setup(runner, FakeTokenizer(), info, prefix_cache)  # type: ignore[arg-type]
    return built


def request(prompt: list[int], tokens: int = 3, stop: list[str] | None = None, **sampling):
    sink = Sink()
    params = SamplingParams(temperature=0, **sampling)
    return GenerationRequest(prompt, tokens, params, stop or [], sink), sink


def drive(e: DenseEngine) -> None:
    for _ in range(1000):
        if not e.has_work():
            return
        e.step()
    raise AssertionError("the engine never finished")


def test_requests_run_one_after_the_other_in_arrival_order() -> None:
    runner = FakeRunner()
    e = engine(runner, prefix_cache=False)
    first, first_sink = request([1, 2, 3])
    second, second_sink = request([20, 21])
    e.submit(first)
    e.submit(second)
    drive(e)
    assert first_sink.text == "<4><5><6>" and first_sink.finished.reason == "length"
    assert second_sink.text == "<22><23><24>"
    # the first sequence's three decode steps all came before the second one's prefill
    forwards = [c for c in runner.calls if c[0] == "forward"]
    assert forwards[:3] == [("forward", [1, 2, 3], 0), ("forward", [4], 3), ("forward", [5], 4)]
    assert ("clear",) in runner.calls[3:]
    assert forwards[3] == ("forward", [20, 21], 0)


def test_a_shared_prefix_is_not_run_again() -> None:
    runner = FakeRunner()
    e = engine(runner)
    first, _ = request([1, 2, 3, 4])
    e.submit(first)
    drive(e)
    second, sink = request([1, 2, 3, 9])  # shares 3 tokens with what the cache holds
    e.submit(second)
    drive(e)
    assert ("forward", [9], 3) in runner.calls
    assert sink.finished.cached_tokens == 3
    same, again = request([1, 2, 3, 9])  # all of it cached: the last token runs again
    e.submit(same)
    drive(e)
    assert again.finished.cached_tokens == 3
    assert again.text == sink.text


def test_eos_and_stop_strings_end_a_sequence() -> None:
    e = engine(FakeRunner(stop_at=6))
    eos, sink = request([3], tokens=10)
    e.submit(eos)
    drive(e)
    assert (sink.text, sink.finished.reason, sink.finished.completion_tokens) == (
        "<4><5>",
        "stop",
        2,
    )
    e = engine(FakeRunner())
    stopped, sink = request([10], tokens=10, stop=["<13>"])
    e.submit(stopped)
    drive(e)
    assert (sink.text, sink.finished.stop_sequence) == ("<11><12>", "<13>")


def test_a_failed_forward_is_an_engine_fault_and_abort_all_answers_everyone() -> None:
    runner = FakeRunner()
    e = engine(runner)
    running, running_sink = request([1, 2])
    waiting, waiting_sink = request([5])
    e.submit(running)
    e.submit(waiting)
    e.step()
    runner.fail = True
    with pytest.raises(EngineFault, match="device lost"):
        e.step()
    e.abort_all("engine fault: device lost")  # what the device worker does next
    assert running_sink.finished.reason == "error"
    assert waiting_sink.finished.reason == "error"
    assert not e.has_work()


def test_cancelled_requests_free_the_engine_at_the_next_step() -> None:
    e = engine(FakeRunner())
    running, running_sink = request([1], tokens=50)
    waiting, waiting_sink = request([2])
    e.submit(running)
    e.submit(waiting)
    e.step()
    running.cancelled = waiting.cancelled = True
    e.step()
    assert running_sink.finished.reason == "cancelled"
    assert waiting_sink.finished.reason == "cancelled"
    assert not e.has_work()


def test_what_a_forward_would_choke_on_is_refused_at_submit() -> None:
    e = engine(FakeRunner())
    with pytest.raises(InvalidRequest, match="grammar"):
        e.submit(request([1], grammar='root ::= "a"')[0])
    with pytest.raises(InvalidRequest, match="vocabulary"):
        e.submit(request([1, VOCAB])[0])
    with pytest.raises(InvalidRequest, match="empty"):
        e.submit(request([])[0])
    assert not e.has_work()


def test_a_quantised_kv_cache_is_refused_before_any_load(tmp_path) -> None:
    spec = ModelSpec(id="m", source=f"file:{tmp_path}", kv_cache_type="q8_0")
    with pytest.raises(InvalidRequest, match="kv_cache_type 'q8_0'") as refused:
        create_dense_engine(tmp_path, spec, "cpu", 1)  # an empty directory: nothing read
    assert refused.value.param == "kv_cache_type"


def test_speculative_decoding_is_refused_before_any_load(tmp_path) -> None:
    spec = ModelSpec(id="m", source=f"file:{tmp_path}", speculative="ngram")
    with pytest.raises(InvalidRequest, match="speculative 'ngram'") as refused:
        create_dense_engine(tmp_path, spec, "cpu", 1)
    assert refused.value.param == "speculative"
