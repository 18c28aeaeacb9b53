"""``/v1/embeddings`` through the gateway, driven by the official openai SDK."""

from __future__ import annotations

import threading

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from cortex.neuron.files.sources import parse_source, resolve_local
from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow

EMBEDDING_SIZE = 576  # SmolLM2-135M's hidden size
CAT = "The cat sat on the windowsill watching the birds."
KITTEN = "A kitten rested by the window, looking at birds outside."
TAX = "Capital gains tax rates depend on how long you held the asset."
COLORS = [{"role": "user", "content": "List three primary colors."}]


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def vectors(reply: openai.types.CreateEmbeddingResponse) -> list[np.ndarray]:
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return [np.asarray(d.embedding, dtype=np.float32) for d in reply.data]


def embed(client: openai.OpenAI, text: str | list[str], **options) -> list[np.ndarray]:
    return vectors(client.embeddings.create(model=MODEL, input=text, **options))


def tokens_of(text: str) -> list[int]:
    """The model's own tokenizer, read from the GGUF (as the neuron tokenizes: no BOS)."""
    path = resolve_local(parse_source(BUNDLED), None)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode(), add_bos=False, special=True)


def test_base64_and_float_give_the_same_unit_vectors(gateway: Gateway, client) -> None:
    reply = client.embeddings.create(model=MODEL, input=CAT)  # the SDK asks for base64
    assert reply.object == "list" and reply.model == MODEL
    assert reply.data[0].object == "embedding"
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 5
    (as_base64,) = vectors(reply)
    (as_float,) = embed(client, CAT, encoding_format="float")
    assert as_base64.shape == (EMBEDDING_SIZE,)
    np.testing.assert_array_equal(as_base64, as_float)
    assert abs(float(np.linalg.norm(as_base64.astype(np.float64))) - 1) < 1e-5
    # on the wire: a string of float32 bytes when asked for, numbers by default
    url = gateway.url + "/v1/embeddings"
    raw = httpx.post(url, json={"model": MODEL, "input": CAT, "encoding_format": "base64"})
    assert isinstance(raw.json()["data"][0]["embedding"], str)
    plain = httpx.post(url, json={"model": MODEL, "input": CAT}).json()
    assert np.array_equal(np.asarray(plain["data"][0]["embedding"], np.float32), as_float)
    assert client.embeddings.create(model=MODEL, input=CAT, dimensions=EMBEDDING_SIZE).data


def test_a_batch_answers_in_order_each_as_if_alone(client: openai.OpenAI) -> None:
    texts = [TAX, CAT, "Hi", KITTEN]
    batch = embed(client, texts)
    assert len(batch) == len(texts)
    for text, vector in zip(texts, batch, strict=True):
        (alone,) = embed(client, text)
        np.testing.assert_allclose(vector, alone, atol=1e-4)


def test_closer_meanings_are_closer_vectors(client: openai.OpenAI) -> None:
    cat, kitten, tax = embed(client, [CAT, KITTEN, TAX])
    # measured: 0.92 for the two about cats, 0.61 and 0.58 against the one about tax
    assert float(cat @ kitten) > max(float(cat @ tax), float(kitten @ tax)) + 0.1


def test_token_ids_equal_the_text(client: openai.OpenAI) -> None:
    cat, tax = tokens_of(CAT), tokens_of(TAX)
    (from_text,) = embed(client, CAT)
    (from_ids,) = embed(client, cat)  # one list of token ids
    np.testing.assert_array_equal(from_ids, from_text)
    reply = client.embeddings.create(model=MODEL, input=[cat, tax])  # a list of them
    assert reply.usage.prompt_tokens == len(cat) + len(tax)
    np.testing.assert_array_equal(vectors(reply)[1], embed(client, TAX)[0])


def test_unknown_model_is_a_404_in_openai_shape(gateway: Gateway, client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input=CAT)
    assert "text-embedding-3-small" in caught.value.message
    raw = httpx.post(
        gateway.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}
    )
    assert raw.status_code == 404
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_an_input_longer_than_the_context_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=["short", "word " * 5000])
    assert caught.value.code == "context_length_exceeded"
    assert "4096" in caught.value.message and caught.value.param == "input"


def test_bad_inputs_are_400s(gateway: Gateway, neuron: Neuron, client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=CAT, dimensions=64)
    assert caught.value.param == "dimensions" and "576" in caught.value.message
    url = gateway.url + "/v1/embeddings"
    for body in ({"model": MODEL}, {"model": MODEL, "input": []}):
        answer = httpx.post(url, json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "input"
    assert httpx.post(url, json={"model": MODEL, "input": [[]]}).status_code == 400
    assert httpx.post(url, json={"model": MODEL, "input": ["a", 1]}).status_code == 400
    # A token id outside the vocabulary is the client's error: it must not reach
    # llama.cpp, whose failed decode would poison the model (completions too).
    for path, field in (("/v1/embeddings", "input"), ("/v1/completions", "prompt")):
        answer = httpx.post(gateway.url + path, json={"model": MODEL, field: [1, 999_999]})
        assert answer.status_code == 400, answer.text
        assert "999999" in answer.json()["error"]["message"]
    assert neuron.model(MODEL)["state"] == "ready"


def test_the_embedding_context_is_counted_in_the_models_memory(neuron: Neuron, client) -> None:
    embed(client, "Hello")  # the context exists from here on
    spec = neuron.model(MODEL)["spec"]
    estimate = httpx.post(neuron.url + "/models/estimate", json=spec, timeout=30).json()
    parts = estimate["estimate"]
    assert parts["embedding_mb"] > 0
    assert neuron.model(MODEL)["memory_mb"] == parts["total_mb"] + parts["embedding_mb"]


def test_chat_is_unchanged_by_embeddings_beside_it(client: openai.OpenAI) -> None:
    def chat() -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=COLORS, temperature=0, max_tokens=40
        )
        return reply.choices[0].message.content

    before = chat()
    expected = embed(client, [CAT, TAX, KITTEN])
    during: list[list[np.ndarray]] = []
    worker = threading.Thread(
        target=lambda: during.extend(embed(client, [CAT, TAX, KITTEN]) for _ in range(3))
    )
    worker.start()  # embeddings and the chat share decode steps on the one device thread
    assert chat() == before
    worker.join()
    assert len(during) == 3
    for got in during:
        for vector, want in zip(got, expected, strict=True):
            np.testing.assert_array_equal(vector, want)
    assert chat() == before
