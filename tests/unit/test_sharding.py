"""Which sharder a tensor-parallel load gets, the shares it cuts, and that they add up."""

from __future__ import annotations

import threading

import pytest

import required
from cortex.errors import InvalidRequest
from cortex.neuron.engines.dense.sharding import (
    ModelShape,
    plan_sharding,
    rank_slices,
    split_evenly,
)

SMOLLM2 = ModelShape("llama", n_heads=9, n_kv_heads=3, head_dim=64, intermediate=1536,
                     has_tp_plan=True)  # fmt: skip


def test_one_rank_needs_no_sharder() -> None:
    assert plan_sharding(SMOLLM2, 1) == "single"


def test_heads_that_divide_go_to_transformers_own_plan() -> None:
    padded = ModelShape("llama", 12, 4, 64, 1536, has_tp_plan=True)
    assert plan_sharding(padded, 2) == "transformers"
    assert plan_sharding(padded, 4) == "transformers"
    assert plan_sharding(SMOLLM2, 3) == "transformers"  # 9 and 3 heads, 1536 wide


def test_heads_that_do_not_divide_go_to_the_megatron_sharder() -> None:
    assert plan_sharding(SMOLLM2, 2) == "megatron"
    no_plan = ModelShape("qwen2", 12, 4, 64, 1536, has_tp_plan=False)
    assert plan_sharding(no_plan, 2) == "megatron"


def test_more_ranks_than_kv_heads_is_refused_up_front() -> None:
    with pytest.raises(InvalidRequest, match="3 KV heads"):
        plan_sharding(SMOLLM2, 4)


def test_an_unknown_architecture_that_does_not_divide_is_refused() -> None:
    odd = ModelShape("gpt_neox", 9, 9, 64, 2048, has_tp_plan=True)
    with pytest.raises(InvalidRequest, match="gpt_neox"):
        plan_sharding(odd, 2)


def test_split_evenly_covers_everything_once() -> None:
    assert split_evenly(3, 2) == [range(0, 2), range(2, 3)]
    assert split_evenly(1536, 2) == [range(0, 768), range(768, 1536)]
    parts = split_evenly(10, 4)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert [i for p in parts for i in p] == list(range(10))


def test_kv_groups_stay_whole() -> None:
    """SmolLM2 over 2 ranks: KV heads 2+1, each with its 3 query heads: 6+3."""
    first, second = rank_slices(SMOLLM2, 0, 2), rank_slices(SMOLLM2, 1, 2)
    assert (first.q_rows, second.q_rows) == (range(0, 384), range(384, 576))
    assert (first.kv_rows, second.kv_rows) == (range(0, 128), range(128, 192))
    assert (first.mlp_rows, second.mlp_rows) == (range(0, 768), range(768, 1536))


@pytest.mark.parametrize("world", [2, 3])
def test_megatron_shards_sum_to_the_whole_model(world: int, monkeypatch) -> None:
    """N shards of a tiny Llama (6 query heads, 3 KV heads) in N threads, their
    all_reduce a barrier that sums: the same logits as the unsharded model."""
    torch = required.module("torch")
    transformers = required.module("transformers")
    from cortex.neuron.engines.dense import rank_model

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=64,
    )  # fmt: skip
    whole = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.inference_mode():
        expected = whole(input_ids=ids).logits
    shape = ModelShape.of(config)
    assert plan_sharding(shape, world) == "megatron"

    barrier = threading.Barrier(world)
    partials: dict[int, object] = {}

    def all_reduce(tensor) -> None:  # every rank's partial, summed, written back
        rank = int(threading.current_thread().name)
        partials[rank] = tensor.clone()
        barrier.wait()
        total = sum(partials[r] for r in range(world))
        barrier.wait()
        tensor.copy_(total)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    results: dict[int, object] = {}

    def run(rank: int) -> None:
        shard = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        shard.load_state_dict(whole.state_dict())
        rank_model.shard_megatron(shard, shape, rank, world)
        with torch.inference_mode():
            results[rank] = shard.eval()(input_ids=ids).logits

    threads = [threading.Thread(target=run, args=(r,), name=str(r)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for rank in range(world):
        assert torch.allclose(results[rank], expected, atol=1e-5), rank
