"""The OpenAI Responses API on a real gateway and neuron, driven by the official
``openai`` SDK (``client.responses``), plus raw HTTP checks of what the SDK hides
(event names and sequence numbers, error envelopes)."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config, metric, wait_for

GREEDY = {"temperature": 0}
QUESTION = "What is the capital of France? Answer in one word."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def shape(response: object) -> dict:
    """A response as plain JSON, without what the SDK's stream helper adds (``parsed``)."""
    dumped = response.model_dump(mode="json", exclude_none=True)
    for item in dumped["output"]:
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return dumped


def text_of(item: object) -> str:
    content = item.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_a_string_input(client: openai.OpenAI, gateway: Gateway) -> None:
    counted = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    before = metric(counted, "cortex_requests_total", dialect="responses", status="200")
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, **GREEDY)
    wait_for(  # counted under its own dialect, apart from chat completions
        lambda: (
            metric(counted, "cortex_requests_total", dialect="responses", status="200")
            == before + 1
        ),
        "the request counted with dialect=responses",
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == MODEL
    assert [item.type for item in response.output] == ["message"]
    message = response.output[0]
    assert message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert "Paris" in response.output_text
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert response.temperature == 0 and response.max_output_tokens == 24  # echoed


def test_an_item_list_with_instructions_and_a_developer_message(client: openai.OpenAI) -> None:
    items = [
        {"role": "developer", "content": "Answer in one word."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    response = client.responses.create(
        model=MODEL, instructions="You are a geography quiz.", input=items, **GREEDY
    )
    assert response.instructions == "You are a geography quiz."
    assert "Paris" in response.output_text
    # the same words as a plain string give the same answer: the developer text is the
    # system prompt either way, after the instructions
    asked = client.responses.create(
        model=MODEL,
        instructions="You are a geography quiz.\n\nAnswer in one word.",
        input=QUESTION,
        **GREEDY,
    )
    assert asked.output_text == response.output_text
    assert asked.usage.input_tokens == response.usage.input_tokens


def test_a_length_cut_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Write a long essay about rivers.", max_output_tokens=5
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5
    assert response.output[-1].status == "incomplete"


def test_a_stream_folds_to_the_stored_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=24, **GREEDY) as s:
        events = list(s)
        final = s.get_final_response()
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.output_text.delta" in types
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Paris" in deltas and final.output_text == deltas
    assert final.status == "completed" and final.usage.output_tokens > 0
    assert shape(client.responses.retrieve(final.id)) == shape(final)
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, **GREEDY)
    assert whole.output_text == final.output_text


def test_retrieve_and_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=8)
    assert client.responses.retrieve(response.id).model_dump() == response.model_dump()
    deleted = client.responses.delete(response.id)
    assert deleted is None  # the SDK returns nothing; the gateway said deleted
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=8, store=False
    )
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="And?", previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"


def test_a_follow_up_continues_the_previous_response(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="My name is Zoltan. Remember it.",
        instructions="Be brief.",
        max_output_tokens=24,
        **GREEDY,
    )
    follow = client.responses.create(
        model=MODEL,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=24,
        **GREEDY,
    )
    assert follow.previous_response_id == first.id
    # the earlier question and answer reached the model: more prompt than both alone
    alone = client.responses.create(
        model=MODEL, input="What is my name?", max_output_tokens=24, **GREEDY
    )
    assert follow.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    assert "Zoltan" in follow.output_text
    listed = client.responses.input_items.list(follow.id, order="asc")
    texts = [text_of(item) for item in listed.data if item.type == "message"]
    assert texts[0] == "My name is Zoltan. Remember it."
    assert texts[-1] == "What is my name?"
    assert any(item.role == "assistant" for item in listed.data if item.type == "message")


@pytest.mark.slow  # three generations with tools: about 50 s on 2 busy cores
def test_a_forced_tool_call_and_its_output(client: openai.OpenAI) -> None:
    ask = "What is the weather in Paris?"
    response = client.responses.create(
        model=MODEL,
        input=ask,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
        **GREEDY,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and response.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.id.startswith("fc_") and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    answer = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": ask},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": "Sunny, 31 degrees Celsius.",
            },
        ],
        tools=[WEATHER],
        max_output_tokens=48,
        **GREEDY,
    )
    assert answer.status == "completed" and answer.output_text.strip()
    # the same through previous_response_id: only the tool's output is new
    chained = client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": "Sunny, 31 degrees Celsius.",
            }
        ],
        tools=[WEATHER],
        max_output_tokens=48,
        **GREEDY,
    )
    assert chained.output_text.strip()


def test_a_streamed_tool_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=64,
        **GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    call = next(item for item in final.output if item.type == "function_call")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done[0].arguments == deltas == call.arguments
    json.loads(call.arguments)


def test_a_json_schema_text_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Invent a person: a name and an age.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        },
        max_output_tokens=64,
        **GREEDY,
    )
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema"


def test_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.body["code"] == "model_not_found"


def test_a_prompt_over_the_context_names_the_numbers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="word " * 9000, max_output_tokens=10)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["param"] == "input"
    numbers = [int(n) for n in re.findall(r"\d+", caught.value.message)]
    assert 4096 in numbers and any(n > 9000 for n in numbers)  # the context, the prompt


def test_malformed_json_is_400(gateway: Gateway) -> None:
    answer = httpx.post(
        gateway.url + "/v1/responses",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_a_hosted_tool_is_left_out(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=QUESTION,
        tools=[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}],
        max_output_tokens=24,
        **GREEDY,
    )
    assert "Paris" in response.output_text
    assert [tool.type for tool in response.tools] == ["web_search", "file_search"]


def test_a_codex_like_request_is_answered(gateway: Gateway) -> None:
    """What Codex CLI sends (stream, store false, two developer messages, a namespace
    of functions, web_search, its extra fields), read as raw events."""
    shell = {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command and returns its output.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "array", "items": {"type": "string"}}},
            "required": ["command"],
            "additionalProperties": False,
        },
    }
    agents = {
        "type": "namespace",
        "name": "agents",
        "description": "Sub-agents",
        "tools": [
            {
                "type": "function",
                "name": "spawn_agent",
                "description": "Starts a sub-agent on a task.",
                "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
            }
        ],
    }
    body = {
        "model": MODEL,
        "instructions": "You are a coding agent. Be brief.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Sandbox: read-only."}],
            },
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Approvals: never."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {
                        "type": "input_text",
                        "text": "<environment_context><cwd>/tmp</cwd></environment_context>",
                    }
                ],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": QUESTION}],
            },
        ],
        "tools": [shell, agents, {"type": "web_search", "external_web_access": False}],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a8c2-0000-7000-8000-000000000000",
        "client_metadata": {"x-codex-turn": "1"},
        "text": {"verbosity": "medium"},
        "max_output_tokens": 48,
        "temperature": 0,
    }
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=120) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        frames = [frame for frame in answer.read().decode().split("\n\n") if frame.strip()]
    events = []
    for frame in frames:
        if frame.startswith(":"):
            continue
        name, data = frame.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == "event: " + payload["type"]  # Codex dispatches on the type
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    last = events[-1]
    assert last["type"] == "response.completed", last
    assert last["response"]["store"] is False and last["response"]["output"]
    response_id = last["response"]["id"]
    assert httpx.get(gateway.url + f"/v1/responses/{response_id}", timeout=10).status_code == 404


def test_a_node_dying_mid_stream_ends_with_response_failed_then_error(tmp_path) -> None:
    node = Neuron(tmp_path, "a", [f"{MODEL}={BUNDLED}"])
    gateway = Gateway(tmp_path, gateway_config(node), "", {MODEL})
    try:
        body = {"model": MODEL, "input": "Write a very long essay about rivers.", "stream": True}
        frames: list[str] = []
        url = gateway.url + "/v1/responses"
        with httpx.stream("POST", url, json=body, timeout=60) as answer:
            buffer = ""
            for text in answer.iter_text():
                buffer += text
                *complete, buffer = buffer.split("\n\n")
                frames += complete
                if len(frames) >= 8 and node.proc.poll() is None:
                    node.kill()
        names = [frame.split("\n", 1)[0] for frame in frames]
        assert names[0] == "event: response.created"
        assert names[-2:] == ["event: response.failed", "event: error"]
        failed = json.loads(frames[-2].split("data: ", 1)[1])["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert "mid-stream" in failed["error"]["message"]
        assert failed["output"][0]["content"][0]["text"]  # what came before the cut
        assert "event: response.completed" not in names
        # kept as it ended, as OpenAI keeps failed responses
        stored = httpx.get(url + "/" + failed["id"], timeout=10).json()
        assert stored["status"] == "failed" and stored["output"] == failed["output"]
    finally:
        gateway.stop()
        node.stop()
