"""The model manager's lifecycle and the generation core, over fake engine processes.

Load, generate, fail to load, crash and recover on its own, the watchdog, the canary's
safe-settings fallback, cancellation and admission: each in milliseconds, with no
model files, llama.cpp or processes (see ``fakes.py``). The same paths with real
engine processes are in ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from fakes import (
    FakeFiles,
    canary_crash,
    eventually,
    prepared_for,
    running_manager,
    spec_of,
)

from cortex.errors import (
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    Overloaded,
)
from cortex.neuron.api.embeddings import embed
from cortex.neuron.api.generation import admit, collect, finish_error, generate, tokenize
from cortex.neuron.engines.base import EmbeddingJob, FailureKind, Finished, TextChunk
from cortex.neuron.runtime.engine_process import EngineExit, EngineLoadFailed
from cortex.neuron.runtime.manager import ModelManager, ModelState
from cortex.protocol.neuron import EngineFaultStatus

FALLBACK = "no extra buffer types after SIGSEGV in canary"


@pytest.fixture
def files(tmp_path: Path) -> FakeFiles:
    return FakeFiles(tmp_path)


def _state(manager: ModelManager, model_id: str) -> ModelState | None:
    model = next((m for m in manager.models() if m.id == model_id), None)
    return None if model is None else model.state


def _sample(manager: ModelManager, name: str, **labels: str) -> float:
    return manager.metrics.registry.get_sample_value(name, labels) or 0.0


def _recoveries(manager: ModelManager, model_id: str, result: str) -> float:
    return _sample(manager, "neuron_recoveries_total", model=model_id, result=result)


def _faults(manager: ModelManager, model_id: str, kind: str) -> float:
    return _sample(manager, "neuron_engine_faults_total", model=model_id, kind=kind)


def _requests(manager: ModelManager, model_id: str, finish: str) -> float:
    return _sample(manager, "neuron_requests_total", model=model_id, finish=finish)


async def _generate_once(manager: ModelManager, model_id: str, **options) -> tuple[str, Finished]:
    serving = manager.ready(model_id)
    return await collect(serving, admit(serving, prepared_for(serving, **options)))


async def _first_chunk(stream) -> TextChunk:
    first = await asyncio.wait_for(anext(stream), 2.0)
    assert isinstance(first, TextChunk)
    return first


async def _rest(stream) -> list[TextChunk | Finished]:
    """The stream's events to its end; a stream that never ends fails the test."""

    async def drain() -> list[TextChunk | Finished]:
        return [event async for event in stream]

    return await asyncio.wait_for(drain(), 2.0)


# -- load and generate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_new_tokens", "stop", "text", "reason", "completion"),
    [
        (16, [], "Hello world!", "stop", 3),  # the script ends as an EOS would
        (2, [], "Hello world", "length", 2),  # the budget ends it first
        (16, [" wor"], "Hello", "stop", 2),  # a stop string, withheld from the text
    ],
)
async def test_load_then_generate(
    files: FakeFiles, max_new_tokens: int, stop: list[str], text: str, reason: str, completion: int
) -> None:
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m"))
        assert loaded.state is ModelState.READY
        serving = manager.ready("m")
        assert serving.engine is files.engines[0]
        prepared = admit(serving, prepared_for(serving, "Hi there", max_new_tokens, stop))
        assert loaded.in_flight == 1

        got, finished = await collect(serving, prepared)

        assert got == text
        assert finished.reason == reason
        assert finished.prompt_tokens == len("Hi there")  # one token per character
        assert finished.completion_tokens == completion
        assert prepared.report()["completion_tokens"] == completion
        assert loaded.in_flight == 0  # the place admit reserved is given back
        assert _requests(manager, "m", reason) == 1
        assert _sample(manager, "neuron_batch_size_count", model="m") >= 1  # on_step


async def test_status_names_the_engine_process(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", context_length=128))
        status = loaded.status()
        assert status.state is ModelState.READY
        assert status.engine_pid == files.engines[0].pids[0]
        assert status.context_length == 128
        assert (status.restarts, status.last_fault, status.fallback) == (0, None, None)


async def test_the_nodes_host_cache_budget_is_shared_out_and_given_back(
    files: FakeFiles,
) -> None:
    async with running_manager(files, kv_host_cache_mb=1000) as manager:
        await manager.load(spec_of("a", kv_host_cache_mb=600))
        await manager.load(spec_of("b", kv_host_cache_mb=600))  # what is left: 400
        await manager.load(spec_of("c"))  # nothing left
        await manager.load(spec_of("d", prefix_cache=False))
        assert files.host_grants == [600, 400, 0, 0]
        assert [m.status().kv_host_cache_mb for m in manager.models()] == [600, 400, 0, 0]
        await manager.unload("a")
        await manager.load(spec_of("e", kv_host_cache_mb=900))
        assert files.host_grants[-1] == 600
    async with running_manager(files) as manager:  # no node budget: each spec's own
        await manager.load(spec_of("f", kv_host_cache_mb=70))
        assert files.host_grants[-1] is None


async def test_load_is_idempotent_for_the_same_spec(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        first = await manager.load(spec_of("m"))
        assert await manager.load(spec_of("m")) is first
        with pytest.raises(InvalidRequest) as refused:
            await manager.load(spec_of("m", max_batch=2))
        assert refused.value.status == 400
        assert len(files.launches) == 1
        assert manager.ready("m").engine is files.engines[0]


async def test_failed_load_leaves_nothing_loaded(files: FakeFiles) -> None:
    files.fail_launches(EngineLoadFailed("'m' failed to load: no such tensor"))
    async with running_manager(files) as manager:
        with pytest.raises(EngineLoadFailed, match="no such tensor"):
            await manager.load(spec_of("m"))
        assert manager.models() == []
        with pytest.raises(ModelNotFound):
            manager.ready("m")
        assert manager.devices_status()[0].memory_used_by_models_mb == 0
        assert files.launches == [True]  # not a crash: no retry

        await manager.load(spec_of("m"))  # the next load starts afresh
        assert (await _generate_once(manager, "m"))[0] == "Hello world!"


async def test_load_over_the_budget_is_refused_and_reserves_nothing(files: FakeFiles) -> None:
    async with running_manager(files, budget_mb=100) as manager:
        await manager.load(spec_of("a", memory_mb=60))

        with pytest.raises(InsufficientMemory) as refused:
            await manager.load(spec_of("b", memory_mb=50))
        assert refused.value.status == 507
        assert [m.id for m in manager.models()] == ["a"]
        assert manager.devices_status()[0].memory_used_by_models_mb == 60
        assert len(files.launches) == 1  # refused before any engine was started

        await manager.load(spec_of("c", memory_mb=40))  # what is left still fits
        assert manager.devices_status()[0].memory_used_by_models_mb == 100


async def test_an_unload_is_no_fault(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        await manager.unload("m")
        await asyncio.sleep(0.02)  # an exit, were there one, would have been handled
        assert manager.models() == []
        assert files.engines[0].closed
        assert files.engines[0].exit is not None and files.engines[0].exit.kind == "exited"
        assert _faults(manager, "m", "exited") == 0
        assert len(files.launches) == 1  # no recovery
        with pytest.raises(ModelNotFound):
            await manager.unload("m")


# -- crash and recovery ----------------------------------------------------------------------


async def test_a_crash_mid_request_poisons_the_model_and_it_recovers_on_its_own(
    files: FakeFiles,
) -> None:
    files.engine_options["endless"] = True
    files.step_delay_s = 0.001
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m"))
        serving = manager.ready("m")
        old = files.engines[0]
        stream = generate(serving, admit(serving, prepared_for(serving, max_new_tokens=10_000)))
        async with contextlib.aclosing(stream):
            await _first_chunk(stream)  # the request is in flight
            files.hold_launches()  # the relaunch waits, so the test sees the model recovering
            old.crash_next_step("SIGSEGV")
            rest = await _rest(stream)

        finished = rest[-1]
        assert all(isinstance(e, TextChunk) for e in rest[:-1])
        assert isinstance(finished, Finished) and finished.reason == "error"
        assert finished.error is not None and finished.error.kind is FailureKind.FAULT
        error = finish_error(finished, "m")
        assert isinstance(error, ModelRecovering) and error.status == 503
        assert error.retry_after_s
        assert loaded.in_flight == 0
        assert _requests(manager, "m", "error") == 1

        # (The exit reaches the manager just after the request's error, not before.)
        await eventually(lambda: files.waiting == 1)
        assert _state(manager, "m") is ModelState.RECOVERING
        assert old.closed  # the dead engine is let go before its replacement starts
        with pytest.raises(ModelRecovering):
            manager.ready("m")
        assert loaded.status().engine_pid is None

        files.release_launches()  # no operator call: the manager finishes on its own
        await eventually(lambda: _state(manager, "m") is ModelState.READY)

        new = files.engines[1]
        assert manager.ready("m").engine is new is not old
        assert loaded.restarts == 1
        assert loaded.last_fault is not None
        assert (loaded.last_fault.kind, loaded.last_fault.signal) == ("crash", "SIGSEGV")
        status = loaded.status()
        assert status.engine_pid == new.pids[0] != old.pids[0]
        assert status.restarts == 1
        assert status.last_fault == EngineFaultStatus(
            kind="crash", signal="SIGSEGV", at=loaded.last_fault.at
        )
        assert _faults(manager, "m", "crash") == 1
        assert _sample(manager, "neuron_engine_restarts_total", model="m") == 1
        assert _recoveries(manager, "m", "ok") == 1
        assert _recoveries(manager, "m", "failed") == 0
        assert (await _generate_once(manager, "m", max_new_tokens=3))[0] == "Hello world!"


@pytest.mark.parametrize(
    ("kind", "exit_kind", "signal"),
    [
        ("segfault", "crash", "SIGSEGV"),
        ("abort", "crash", "SIGABRT"),
        ("kill", "killed", "SIGKILL"),
        ("device_error", "device_error", None),
        ("hang", "hang", None),  # the watchdog kills it
    ],
)
async def test_an_injected_fault_ends_the_request_and_the_model_recovers(
    files: FakeFiles, kind: str, exit_kind: str, signal: str | None
) -> None:
    files.engine_options["endless"] = True
    files.step_delay_s = 0.001
    deadline_s = 0.05 if kind == "hang" else 5.0
    async with running_manager(files, step_deadline_s=deadline_s) as manager:
        loaded = await manager.load(spec_of("m"))
        serving = manager.ready("m")
        prepared = admit(serving, prepared_for(serving, max_new_tokens=10_000))
        stream = generate(serving, prepared)
        async with contextlib.aclosing(stream):
            await _first_chunk(stream)
            await manager.inject_fault("m", kind)
            finished = (await _rest(stream))[-1]

        assert isinstance(finished, Finished)
        assert isinstance(finish_error(finished, "m"), ModelRecovering)
        await eventually(lambda: _state(manager, "m") is ModelState.READY)
        assert loaded.last_fault is not None
        assert (loaded.last_fault.kind, loaded.last_fault.signal) == (exit_kind, signal)
        assert _faults(manager, "m", exit_kind) == 1
        assert loaded.restarts == 1
        assert (await _generate_once(manager, "m", max_new_tokens=3))[0] == "Hello world!"


async def test_an_unknown_fault_kind_is_refused(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        with pytest.raises(InvalidRequest) as refused:
            await manager.inject_fault("m", "meteor")
        assert refused.value.param == "kind"
        assert files.engines[0].exit is None


async def test_collect_raises_model_recovering_for_a_fault(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        files.engines[0].crash_next_step()
        with pytest.raises(ModelRecovering):
            await _generate_once(manager, "m")
        await eventually(lambda: _state(manager, "m") is ModelState.READY)


@pytest.mark.parametrize(
    "how", ["the relaunch fails to load", "its canary crashes, forced", "the model file is gone"]
)
async def test_a_failed_recovery_unloads_the_model_and_a_later_load_works(
    files: FakeFiles, how: str
) -> None:
    async with running_manager(files) as manager:
        spec = spec_of("m", extra_buffer_types=True) if "forced" in how else spec_of("m")
        loaded = await manager.load(spec)
        if how == "the relaunch fails to load":
            files.fail_launches(EngineLoadFailed("out of device memory"))
        elif "forced" in how:
            files.fail_launches(canary_crash())  # not retried: the spec forces the setting
        else:
            loaded.path.unlink()
        files.engines[0].crash_next_step()

        with pytest.raises(ModelRecovering):
            await _generate_once(manager, "m")
        await eventually(lambda: _recoveries(manager, "m", "failed") == 1)

        assert manager.models() == []
        with pytest.raises(ModelNotFound):
            manager.ready("m")
        assert all(engine.closed for engine in files.engines)
        assert _recoveries(manager, "m", "ok") == 0
        assert _sample(manager, "neuron_engine_restarts_total", model="m") == 0
        launched = 1 if how == "the model file is gone" else 2
        assert len(files.launches) == launched  # one try, no retry

        await manager.load(spec)  # afresh
        assert (await _generate_once(manager, "m"))[0] == "Hello world!"


async def test_a_request_holding_the_model_from_before_a_fault_does_not_hang(
    files: FakeFiles,
) -> None:
    """A handler takes the model (``ready``), awaits (rendering, tokenizing), and only
    then generates: a fault in between must not leave it waiting on a dead engine."""
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        stale = manager.ready("m")
        prepared = admit(stale, prepared_for(stale))
        files.engines[0].kill()
        with pytest.raises(ModelRecovering):
            await tokenize(stale, "Hi")  # the dead engine cannot answer
        await eventually(lambda: stale.loaded.restarts == 1)
        assert _state(manager, "m") is ModelState.READY

        with pytest.raises(ModelRecovering):
            await asyncio.wait_for(collect(stale, prepared), 2.0)
        assert stale.loaded.in_flight == 0
        assert files.engines[1].outstanding == 0  # nothing reached the new engine


async def test_a_request_holding_the_model_from_before_an_unload_does_not_hang(
    files: FakeFiles,
) -> None:
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        stale = manager.ready("m")
        prepared = admit(stale, prepared_for(stale))
        await manager.unload("m")

        with pytest.raises(ModelNotFound):
            await asyncio.wait_for(collect(stale, prepared), 2.0)
        assert stale.loaded.in_flight == 0


# -- the watchdog ----------------------------------------------------------------------------


async def test_the_watchdog_kills_a_silent_engine_with_work_and_the_model_recovers(
    files: FakeFiles,
) -> None:
    async with running_manager(files, step_deadline_s=0.05) as manager:
        loaded = await manager.load(spec_of("m"))
        old = files.engines[0]
        old.hang()
        files.hold_launches()  # the request must end at the kill, not after the relaunch
        request = asyncio.create_task(_generate_once(manager, "m"))
        await eventually(lambda: old.outstanding == 1)
        # past the deadline (the watchdog may already have killed it: silent_for is 0 then)
        await eventually(lambda: old.silent_for() > 0.05 or old.exit is not None)

        with pytest.raises(ModelRecovering):
            await asyncio.wait_for(request, 10.0)  # a bound, not a timing check
        assert old.exit is not None and old.exit.kind == "hang"
        assert _state(manager, "m") is ModelState.RECOVERING
        assert loaded.in_flight == 0

        files.release_launches()
        await eventually(lambda: _state(manager, "m") is ModelState.READY)
        assert manager.ready("m").engine is files.engines[1] is not old
        assert loaded.last_fault is not None and loaded.last_fault.kind == "hang"
        assert _faults(manager, "m", "hang") == 1
        assert _recoveries(manager, "m", "ok") == 1
        assert (await _generate_once(manager, "m"))[0] == "Hello world!"


async def test_the_watchdog_never_kills_an_idle_engine(files: FakeFiles) -> None:
    async with running_manager(files, step_deadline_s=0.05) as manager:
        await manager.load(spec_of("m"))
        engine = files.engines[0]
        await _generate_once(manager, "m")
        engine.hang()  # silent, as an idle engine is, but with nothing asked of it

        await asyncio.sleep(0.2)  # four deadlines, twenty looks

        assert engine.silent_for() == 0
        assert engine.exit is None
        assert manager.ready("m").engine is engine
        assert _faults(manager, "m", "hang") == 0


async def test_the_watchdog_spares_a_slow_engine_that_keeps_answering(
    files: FakeFiles,
) -> None:
    files.engine_options["endless"] = True
    files.step_delay_s = 0.02  # each step well inside the deadline, all of them far past it
    async with running_manager(files, step_deadline_s=0.1) as manager:
        await manager.load(spec_of("m"))
        _, finished = await _generate_once(manager, "m", max_new_tokens=10)  # 0.2 s
        assert finished.reason == "length" and finished.completion_tokens == 10
        assert files.engines[0].exit is None
        assert _faults(manager, "m", "hang") == 0


# -- the canary's safe-settings fallback ----------------------------------------------------


async def test_a_canary_crash_with_extra_buffer_types_is_retried_without_them(
    files: FakeFiles,
) -> None:
    files.crash_with_extra_buffer_types = True
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m"))  # extra_buffer_types="auto"

        assert files.launches == [True, False]
        assert loaded.use_extra_buffer_types is False
        assert loaded.fallback == FALLBACK
        assert loaded.status().fallback == FALLBACK
        assert (await _generate_once(manager, "m"))[0] == "Hello world!"

        # A recovery starts from the settings the canary proved safe: no second crash.
        files.engines[0].kill()
        await eventually(lambda: loaded.restarts == 1 and _state(manager, "m") is ModelState.READY)
        assert files.launches == [True, False, False]
        assert files.engines[1].use_extra_buffer_types is False
        assert loaded.fallback == FALLBACK


async def test_after_one_canary_crash_later_loads_start_without_extra_buffer_types(
    files: FakeFiles,
) -> None:
    """The crash is the CPU's: a second model is not made to crash its canary too,
    while one whose spec forces them still gets them."""
    files.crash_with_extra_buffer_types = True
    async with running_manager(files) as manager:
        await manager.load(spec_of("m"))
        second = await manager.load(spec_of("n"))
        assert files.launches == [True, False, False]
        assert second.fallback == (
            "no extra buffer types: they crashed on this node (SIGSEGV in m's canary)"
        )
        chosen = await manager.load(spec_of("o", extra_buffer_types=False))
        assert chosen.fallback is None
        files.crash_with_extra_buffer_types = False
        forced = await manager.load(spec_of("p", extra_buffer_types=True))
        assert files.launches == [True, False, False, False, True]
        assert forced.fallback is None


@pytest.mark.parametrize("signal", ["SIGILL", "SIGSEGV"])
async def test_a_crash_while_serving_on_extra_buffer_types_recovers_without_them(
    files: FakeFiles, signal: str
) -> None:
    """The canary cannot try every shape a request takes (a Xeon's AMX kernels died of
    SIGILL on any batch of two tokens): a native crash while serving on the optional
    layouts rebuilds the engine without them, and it stays so."""
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m"))  # extra_buffer_types="auto"
        assert loaded.use_extra_buffer_types is True and loaded.fallback is None
        files.engines[0].crash_next_step(signal)
        with pytest.raises(ModelRecovering):
            await _generate_once(manager, "m")
        await eventually(lambda: _state(manager, "m") is ModelState.READY)

        assert files.launches == [True, False]
        assert loaded.fallback == f"no extra buffer types after {signal} while serving"
        assert loaded.status().fallback == loaded.fallback
        assert (await _generate_once(manager, "m"))[0] == "Hello world!"


@pytest.mark.parametrize("setting", [True, False])
async def test_a_crash_while_serving_keeps_a_forced_setting(
    files: FakeFiles, setting: bool
) -> None:
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", extra_buffer_types=setting))
        files.engines[0].crash_next_step()
        with pytest.raises(ModelRecovering):
            await _generate_once(manager, "m")
        await eventually(lambda: _state(manager, "m") is ModelState.READY)
        assert files.launches == [setting, setting]
        assert loaded.fallback is None


async def test_a_device_error_while_serving_keeps_extra_buffer_types(files: FakeFiles) -> None:
    """Only a native crash blames the optional layouts; a device error does not."""
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m"))
        await manager.inject_fault("m", "device_error")
        with pytest.raises(ModelRecovering):
            await _generate_once(manager, "m")
        await eventually(lambda: _state(manager, "m") is ModelState.READY)
        assert files.launches == [True, True]
        assert loaded.fallback is None


async def test_a_canary_crash_is_not_retried_when_the_spec_forces_extra_buffer_types(
    files: FakeFiles,
) -> None:
    files.crash_with_extra_buffer_types = True
    async with running_manager(files) as manager:
        with pytest.raises(EngineLoadFailed) as failed:
            await manager.load(spec_of("m", extra_buffer_types=True))
        assert failed.value.exit is not None and failed.value.exit.signal == "SIGSEGV"
        assert files.launches == [True]
        assert manager.models() == []


@pytest.mark.parametrize(
    "exit",
    [None, EngineExit("exited", None, "the engine process exited with code 1", 0.0)],
    ids=["reported", "exited"],
)
async def test_a_load_failure_that_is_not_a_crash_is_not_retried(
    files: FakeFiles, exit: EngineExit | None
) -> None:
    files.fail_launches(EngineLoadFailed("'m' failed to load: bad magic", exit))
    async with running_manager(files) as manager:
        with pytest.raises(EngineLoadFailed, match="bad magic"):
            await manager.load(spec_of("m"))
        assert files.launches == [True]
        assert manager.models() == []


async def test_extra_buffer_types_off_in_the_spec_is_honoured(files: FakeFiles) -> None:
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", extra_buffer_types=False))
        assert files.launches == [False]
        assert loaded.fallback is None  # chosen, not fallen back to


# -- cancellation and admission ------------------------------------------------------------


async def test_closing_a_generation_early_cancels_it_and_frees_its_place(
    files: FakeFiles,
) -> None:
    files.engine_options["endless"] = True
    files.step_delay_s = 0.002
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", max_batch=1, max_queue=0))
        serving = manager.ready("m")
        engine = files.engines[0]
        stream = generate(serving, admit(serving, prepared_for(serving, max_new_tokens=10_000)))
        async with contextlib.aclosing(stream):
            assert (await _first_chunk(stream)).text == "Hello"
            assert loaded.in_flight == 1
            with pytest.raises(Overloaded) as refused:  # the one place is taken
                admit(serving, prepared_for(serving))
            assert refused.value.status == 429
        # The client went away: its place is free at once, its sequence within a step.
        assert loaded.in_flight == 0
        assert len(engine.cancelled) == 1
        await eventually(lambda: [f.reason for f in engine.engine.emitted] == ["cancelled"])
        assert engine.outstanding == 0
        # counted once the engine says how far it got
        await eventually(lambda: _requests(manager, "m", "cancelled") == 1)
        # what it generated before it was cancelled is counted, not zero
        cancelled = engine.engine.emitted[0].completion_tokens
        assert cancelled >= 1
        assert _sample(manager, "neuron_generated_tokens_total", model="m") == cancelled

        text, _ = await _generate_once(manager, "m", max_new_tokens=3)  # the freed place
        assert text == "Hello world!"


async def test_embedding_jobs_count_against_the_same_admission_limit(files: FakeFiles) -> None:
    files.engine_options["endless"] = True
    files.step_delay_s = 0.002
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", max_batch=1, max_queue=0))
        serving = manager.ready("m")
        stream = generate(serving, admit(serving, prepared_for(serving, max_new_tokens=10_000)))
        async with contextlib.aclosing(stream):
            await _first_chunk(stream)
            with pytest.raises(Overloaded):  # the one place is taken by the generation
                await embed(serving, EmbeddingJob(inputs=[[1, 2]]), "float")
        await eventually(lambda: loaded.in_flight == 0)
        answer = await embed(serving, EmbeddingJob(inputs=[[1, 2]]), "float")
        assert len(answer.data) == 1
        assert loaded.in_flight == 0  # given back


async def test_admission_beyond_batch_and_queue_is_overloaded(files: FakeFiles) -> None:
    files.step_delay_s = 0.002
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", max_batch=2, max_queue=1))

        async def request() -> str:
            serving = manager.ready("m")
            text, _ = await collect(serving, admit(serving, prepared_for(serving)))
            return text

        results = await asyncio.gather(*(request() for _ in range(6)), return_exceptions=True)

        served = [r for r in results if r == "Hello world!"]
        refused = [r for r in results if isinstance(r, Overloaded)]
        assert (len(served), len(refused)) == (3, 3)  # 2 running + 1 waiting; the rest 429
        assert all(r.status == 429 and r.retry_after_s for r in refused)
        assert files.engines[0].engine.max_step_sequences == 2  # never beyond max_batch
        assert loaded.in_flight == 0
