"""A tensor-parallel group driven directly (rank 0 here, rank 1 a spawned process, gloo).

Tiny random Llama checkpoints, made here: one whose heads divide by 2 (transformers'
own TP plan) and one whose KV heads do not (the Megatron sharder). Both must give the
single-device logits; every fault must end in ``EngineFault`` with the pipes drained,
and ``close`` must leave no process and no port behind.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

import required
from procs import alive

torch = required.module("torch")
transformers = required.module("transformers")

from cortex.errors import InvalidRequest  # noqa: E402
from cortex.neuron.engines.base import EngineFault  # noqa: E402
from cortex.neuron.engines.dense.rank_model import LoadParams, RankModel  # noqa: E402
from cortex.neuron.engines.dense.tp import TensorParallelGroup  # noqa: E402

pytestmark = pytest.mark.slow

SHAPES = {"transformers": (4, 2), "megatron": (6, 3)}  # (query heads, KV heads)
PROMPT = [3, 17, 29, 41, 5, 8, 13, 21]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for kind, (heads, kv_heads) in SHAPES.items():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=256, hidden_size=96, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=128, tie_word_embeddings=True,
        )  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        model.save_pretrained(path, safe_serialization=True)
        out[kind] = path
    return out


def params(path: Path, sharding: str, world: int = 2) -> LoadParams:
    return LoadParams(str(path), "cpu", "float32", 1, sharding, world=world)  # type: ignore[arg-type]


def closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def assert_torn_down(group: TensorParallelGroup, pids: list[int], port: int) -> None:
    group.close()
    assert not [pid for pid in pids if alive(pid)]
    assert closed(port)


@pytest.mark.parametrize("sharding", ["transformers", "megatron"])
def test_two_ranks_give_the_single_device_logits(checkpoints, sharding: str) -> None:
    single = RankModel(params(checkpoints[sharding], "single", 1))
    group = TensorParallelGroup(params(checkpoints[sharding], sharding))
    pids, port = group.worker_pids(), group.port
    assert port is not None and len(pids) == 1
    try:
        steps = [
            (PROMPT, 0),  # prefill
            ([7], len(PROMPT)),  # decode
            ([9, 10], 4),  # back to a shared prefix of 4: the cache is cut
        ]
        for tokens, start in steps:
            a, b = single.forward(tokens, start), group.forward(tokens, start)
            assert torch.allclose(a, b, atol=1e-4), (sharding, start, (a - b).abs().max())
        group.clear()
        single.clear()
        a, b = single.forward(PROMPT[:3], 0), group.forward(PROMPT[:3], 0)
        assert torch.allclose(a, b, atol=1e-4)
    finally:
        assert_torn_down(group, pids, port)


def test_a_leader_error_after_the_collectives_drains_every_pipe(checkpoints) -> None:
    group = TensorParallelGroup(params(checkpoints["megatron"], "megatron"))
    pids, port = group.worker_pids(), group.port
    group.forward(PROMPT, 0)
    group.inject_fault("device_error")
    with pytest.raises(EngineFault, match="leader: RuntimeError: injected device error"):
        group.forward([7], len(PROMPT))
    # the worker answered that step, and its reply was read: nothing stale is left
    assert not any(worker.conn.poll(0) for worker in group._workers)
    # Refused at once, nothing sent: with its worker stopped, a group that sent the step
    # would wait out the step deadline for the reply and fail with "no reply" instead.
    (worker,) = pids
    os.kill(worker, signal.SIGSTOP)
    try:
        with pytest.raises(EngineFault, match="group is down"):
            group.forward([7], len(PROMPT))
    finally:
        os.kill(worker, signal.SIGCONT)
    assert_torn_down(group, pids, port)


def test_a_killed_worker_is_a_fault_naming_it(checkpoints) -> None:
    group = TensorParallelGroup(params(checkpoints["megatron"], "megatron"))
    pids, port = group.worker_pids(), group.port
    group.forward(PROMPT, 0)
    group.inject_fault("worker_crash")
    with pytest.raises(EngineFault, match=r"rank 1: worker died \(exit code -9\)"):
        group.forward([7], len(PROMPT))
    assert_torn_down(group, pids, port)


def test_a_hung_worker_is_a_fault_after_the_deadline_not_a_hang(checkpoints) -> None:
    group = TensorParallelGroup(params(checkpoints["megatron"], "megatron"), step_timeout_s=3)
    pids, port = group.worker_pids(), group.port
    group.forward(PROMPT, 0)
    group.inject_fault("hang")
    started = time.monotonic()
    with pytest.raises(EngineFault, match="rank 1: no reply before the deadline"):
        group.forward([7], len(PROMPT))
    # it waited for the deadline (a lower bound, which no slow machine breaks), then
    # gave up: the fault, not a hang (that would meet pytest's timeout instead)
    assert time.monotonic() - started >= 3
    assert_torn_down(group, pids, port)  # the hung worker is killed


def test_one_group_per_process(checkpoints) -> None:
    group = TensorParallelGroup(params(checkpoints["transformers"], "transformers"))
    pids, port = group.worker_pids(), group.port
    try:
        with pytest.raises(InvalidRequest, match="one process group per process"):
            TensorParallelGroup(params(checkpoints["transformers"], "transformers"))
    finally:
        assert_torn_down(group, pids, port)
