"""The leader/worker command protocol of tensor parallelism, and its drain rule.

The leader (rank 0, in the neuron's device thread) sends each worker process a
command over its own pipe; the worker answers with exactly one reply::

    ("load", LoadParams)                  -> ("ok", None) | ("error", detail)
    ("generate_step", tokens, start, fault) -> ("ok", None) | ("error", detail)
    ("clear_kv_cache",)                   -> ("ok", None) | ("error", detail)
    ("shutdown",)                         -> ("ok", None), then the process exits

Tensors never go through the pipes: they meet inside the model's collectives.

The drain rule: for every command the leader reads exactly one reply from every
worker it sent to, whatever its own outcome and whatever the other workers said,
within one deadline. A worker that dies (EOF) or stays silent past the deadline
makes the whole group faulty: no further command is ever sent to it, so no pipe
can hold a stale reply that the next command would mistake for its own. Leader and
worker errors are folded into one message, the leader's first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Reply = tuple[str, Any]


class Channel(Protocol):
    """One worker's end of the protocol, as the leader sees it."""

    rank: int

    def poll(self, timeout_s: float) -> bool: ...

    def recv(self) -> Any: ...

    def death(self) -> str | None:
        """How the worker process ended ("exit code -9"), or None while it runs."""


@dataclass(frozen=True)
class Drained:
    """The outcome of reading one reply from every worker."""

    errors: list[str]  # "rank N: detail", one per worker that failed
    lost: list[int]  # ranks whose pipe can no longer be trusted (died or silent)

    @property
    def ok(self) -> bool:
        return not self.errors


def drain(
    channels: Sequence[Channel],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> Drained:
    """Read exactly one reply from each channel, all within ``deadline`` (a ``clock`` time)."""
    errors: list[str] = []
    lost: list[int] = []
    for channel in channels:
        detail, trusted = _read_one(channel, deadline, clock)
        if detail is not None:
            errors.append(f"rank {channel.rank}: {detail}")
        if not trusted:
            lost.append(channel.rank)
    return Drained(errors, lost)


def _read_one(
    channel: Channel, deadline: float, clock: Callable[[], float]
) -> tuple[str | None, bool]:
    try:
        if not channel.poll(max(0.0, deadline - clock())):
            death = channel.death()
            if death is not None:
                return f"worker died ({death})", False
            return "no reply before the deadline", False
        reply = channel.recv()
    except (EOFError, OSError):
        death = channel.death()
        return f"worker died ({death or 'pipe closed'})", False
    if not (isinstance(reply, tuple) and len(reply) == 2):
        return f"malformed reply {reply!r}", False
    status, detail = reply
    if status != "ok":
        return str(detail), True
    return None, True


def combine(
    what: str, leader_error: BaseException | None, drained: Drained, sent_errors: list[str]
) -> str | None:
    """One message for everything that went wrong with command ``what``, or None."""
    parts = []
    if leader_error is not None:
        parts.append(f"leader: {type(leader_error).__name__}: {leader_error}")
    parts += sent_errors
    parts += drained.errors
    if not parts:
        return None
    return f"tensor-parallel {what} failed: " + "; ".join(parts)
