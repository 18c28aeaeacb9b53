"""Catalogue parity: a model in ``/v1/models`` is in ``/api/tags``, and the same greedy
request gives the same text through all four dialects (OpenAI Chat Completions,
Anthropic Messages, OpenAI Responses, Ollama chat), each driven by its official client,
streamed and not."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

from procs import Gateway

SYSTEM = "You are a helpful assistant. Answer briefly."
QUESTION = "Name three colours of the rainbow."
TOKENS = 24


@pytest.fixture(scope="module")
def model(gateway: Gateway) -> str:
    listed = openai.OpenAI(base_url=gateway.url + "/v1", api_key="-").models.list()
    ids = [card.id for card in listed.data]
    tags = ollama.Client(host=gateway.url).list()
    assert {tag.model for tag in tags.models} >= set(ids)
    return ids[0]


def by_chat(gateway: Gateway, model: str, stream: bool) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="-", timeout=120)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    if not stream:
        answer = client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=TOKENS
        )
        return answer.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=TOKENS, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def by_messages(gateway: Gateway, model: str, stream: bool) -> str:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="-", timeout=120)
    asked = dict(
        model=model,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=TOKENS,
        # this SDK has no temperature argument any more; the API still takes the field
        extra_body={"temperature": 0},
    )
    if not stream:
        return "".join(b.text for b in client.messages.create(**asked).content if b.type == "text")
    with client.messages.stream(**asked) as events:
        return "".join(events.text_stream)


def by_responses(gateway: Gateway, model: str, stream: bool) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="-", timeout=120)
    asked = dict(
        model=model,
        instructions=SYSTEM,
        input=QUESTION,
        max_output_tokens=TOKENS,
        temperature=0,
        store=False,
    )
    if not stream:
        return client.responses.create(**asked).output_text
    # Read from the events: a max_output_tokens cut ends with response.incomplete, as
    # OpenAI's does, and the SDK's get_final_response() wants response.completed.
    deltas, final = [], None
    with client.responses.stream(**asked) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert final is not None and final.output_text == "".join(deltas)
    return final.output_text


def by_ollama(gateway: Gateway, model: str, stream: bool) -> str:
    client = ollama.Client(host=gateway.url, timeout=120)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    options = {"temperature": 0, "num_predict": TOKENS}
    if not stream:
        return client.chat(model=model, messages=messages, options=options).message.content or ""
    parts = client.chat(model=model, messages=messages, options=options, stream=True)
    return "".join(part.message.content or "" for part in parts)


DIALECTS = {
    "chat": by_chat,
    "messages": by_messages,
    "responses": by_responses,
    "ollama": by_ollama,
}


def test_the_same_greedy_answer_in_every_dialect(gateway: Gateway, model: str) -> None:
    answers = {
        (name, stream): ask(gateway, model, stream)
        for name, ask in DIALECTS.items()
        for stream in (False, True)
    }
    reference = answers[("chat", False)]
    assert reference.strip(), "the model said nothing"
    differing = {key: text for key, text in answers.items() if text != reference}
    assert not differing, f"reference {reference!r}; differing: {differing}"
