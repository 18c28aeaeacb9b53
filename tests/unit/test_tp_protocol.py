"""The drain rule: one reply read from every worker for every command, within a deadline."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from typing import Any

from cortex.neuron.engines.dense.tp_protocol import Drained, combine, drain


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeChannel:
    """Replies queued in advance; ``None`` in the queue means the pipe closed (EOF)."""

    def __init__(self, rank: int, replies: list[Any], clock: FakeClock, exit_code=None) -> None:
        self.rank = rank
        self.replies = deque(replies)
        self.clock = clock
        self.exit_code = exit_code
        self.reads = 0

    def poll(self, timeout_s: float) -> bool:
        if self.replies:
            return True
        self.clock.now += timeout_s  # silent: the whole wait passes
        return False

    def recv(self) -> Any:
        self.reads += 1
        reply = self.replies.popleft()
        if reply is None:
            raise EOFError
        return reply

    def death(self) -> str | None:
        return None if self.exit_code is None else f"exit code {self.exit_code}"


def test_all_ok_reads_one_reply_each_and_leaves_the_rest() -> None:
    clock = FakeClock()
    channels = [FakeChannel(r, [("ok", None), ("ok", "next")], clock) for r in (1, 2)]
    assert drain(channels, deadline=10, clock=clock) == Drained([], [])
    assert [c.reads for c in channels] == [1, 1]
    assert [len(c.replies) for c in channels] == [1, 1]


def test_an_error_reply_is_reported_and_the_others_are_still_read() -> None:
    clock = FakeClock()
    bad = FakeChannel(1, [("error", "RuntimeError: boom")], clock)
    good = FakeChannel(2, [("ok", None)], clock)
    drained = drain([bad, good], deadline=10, clock=clock)
    assert drained.errors == ["rank 1: RuntimeError: boom"]
    assert drained.lost == []  # it answered: its pipe is in step
    assert good.reads == 1


def test_a_dead_worker_is_lost_with_its_exit_code() -> None:
    clock = FakeClock()
    dead = FakeChannel(1, [None], clock, exit_code=-9)
    good = FakeChannel(2, [("ok", None)], clock)
    drained = drain([dead, good], deadline=10, clock=clock)
    assert drained.errors == ["rank 1: worker died (exit code -9)"]
    assert drained.lost == [1]
    assert good.reads == 1


def test_a_silent_worker_costs_one_deadline_not_one_each() -> None:
    clock = FakeClock()
    silent = [FakeChannel(r, [], clock) for r in (1, 2)]
    late = FakeChannel(3, [("ok", None)], clock)
    drained = drain([*silent, late], deadline=5, clock=clock)
    assert clock.now == 5  # the second silent worker had no time left to wait
    assert drained.errors == [
        "rank 1: no reply before the deadline",
        "rank 2: no reply before the deadline",
    ]
    assert drained.lost == [1, 2]
    assert late.reads == 1  # a reply already there is still read


def test_a_malformed_reply_makes_the_pipe_untrusted() -> None:
    clock = FakeClock()
    drained = drain([FakeChannel(1, ["what"], clock)], deadline=5, clock=clock)
    assert drained.lost == [1]


def test_leader_and_worker_errors_fold_into_one_message_leader_first() -> None:
    drained = Drained(["rank 1: worker died (exit code -9)"], [1])
    message = combine("generate_step", RuntimeError("gloo: connection reset"), drained, [])
    assert message == (
        "tensor-parallel generate_step failed: leader: RuntimeError: gloo: connection reset; "
        "rank 1: worker died (exit code -9)"
    )
    assert combine("load", None, Drained([], []), []) is None
    assert "rank 2: cannot send" in combine("load", None, Drained([], []), ["rank 2: cannot send"])


def test_drain_over_real_pipes_sees_a_closed_end_as_death() -> None:
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()

    class Channel:
        rank = 1

        def poll(self, timeout_s: float) -> bool:
            return mine.poll(timeout_s)

        def recv(self) -> Any:
            return mine.recv()

        def death(self) -> str | None:
            return None

    theirs.send(("ok", None))
    assert drain([Channel()], deadline=time.monotonic() + 5).ok
    theirs.close()
    drained = drain([Channel()], deadline=time.monotonic() + 5)
    assert drained.errors == ["rank 1: worker died (pipe closed)"]
