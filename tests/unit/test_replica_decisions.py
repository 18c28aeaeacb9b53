"""Replica decisions: pure functions over a snapshot, like eviction's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cortex.gateway.replicas import AddCopy, Copy, ModelLoad, RetireCopy, decide
from cortex.spec import ModelSpec


def load(**fields: object) -> ModelLoad:
    base = dict(
        model_id="m",
        min_replicas=1,
        max_replicas=2,
        max_batch=4,
        scale_up_after_s=10,
        scale_down_after_s=300,
        copies=(Copy("n1", idle_s=0, busy=True),),
    )
    return ModelLoad(**{**base, **fields})  # type: ignore[arg-type]


def test_a_queue_deep_long_enough_adds_a_copy_away_from_the_first() -> None:
    [decision] = decide([load(waiting=9, deep_for_s=12)])
    assert isinstance(decision, AddCopy)
    assert decision.avoid_nodes == {"n1"} and "9 waiting" in decision.reason


@pytest.mark.parametrize(
    "fields",
    [
        {"waiting": 9, "deep_for_s": 5},  # not long enough yet
        {"waiting": 4, "deep_for_s": 60},  # the batch takes them all: not deep
        {"waiting": 9, "deep_for_s": 60, "max_replicas": 1},  # the default: one copy
        {"waiting": 9, "deep_for_s": 60, "loading": 1},  # a copy is on its way
        {"copies": (), "waiting": 9, "deep_for_s": 60},  # not loaded: a cold load does it
    ],
)
def test_no_copy_is_added(fields: dict[str, object]) -> None:
    assert decide([load(**fields)]) == []


def test_never_above_max_replicas() -> None:
    two = (Copy("n1", 0, busy=True), Copy("n2", 0, busy=True))
    assert decide([load(copies=two, waiting=30, deep_for_s=100)]) == []
    [up] = decide([load(copies=two, max_replicas=3, waiting=30, deep_for_s=100)])
    assert isinstance(up, AddCopy) and up.avoid_nodes == {"n1", "n2"}


def test_min_replicas_keeps_copies_warm_without_requests() -> None:
    [first] = decide([load(copies=(), min_replicas=2)])
    assert isinstance(first, AddCopy) and "min_replicas=2" in first.reason
    [second] = decide([load(copies=(Copy("n1", 500),), min_replicas=2)])
    assert isinstance(second, AddCopy) and second.avoid_nodes == {"n1"}
    assert decide([load(copies=(Copy("n1", 500),), loading=1, min_replicas=2)]) == []


def test_the_idlest_copy_beyond_min_retires_one_per_round() -> None:
    copies = (Copy("n1", 400), Copy("n2", 900), Copy("n3", 10, busy=True))
    [down] = decide([load(copies=copies, max_replicas=3)])
    assert down == RetireCopy("m", "n2", down.reason)
    assert "idle 900 s" in down.reason


@pytest.mark.parametrize(
    "fields",
    [
        {"copies": (Copy("n1", 9000),)},  # the last copy: idle unload's business, not ours
        {"copies": (Copy("n1", 9000), Copy("n2", 9000)), "min_replicas": 2},
        {"copies": (Copy("n1", 100), Copy("n2", 200))},  # not idle long enough
        {"copies": (Copy("n1", 0, busy=True), Copy("n2", 900)), "waiting": 9},  # still deep
    ],
)
def test_no_copy_retires(fields: dict[str, object]) -> None:
    assert decide([load(**fields)]) == []


def test_the_spec_bounds_replicas() -> None:
    spec = ModelSpec(id="m", source="file:/m.gguf", min_replicas=2, max_replicas=3)
    assert (spec.min_replicas, spec.max_replicas, spec.scale_up_after_s) == (2, 3, 10)
    assert ModelSpec(id="m", source="file:/m.gguf", min_replicas=2).max_replicas == 2
    with pytest.raises(ValidationError, match="below min_replicas"):
        ModelSpec(id="m", source="file:/m.gguf", min_replicas=3, max_replicas=2)
