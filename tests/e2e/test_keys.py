"""Virtual keys, their limits and their usage, through a real gateway and neuron, with the
official SDKs (OpenAI, Anthropic) and httpx for Ollama; keys made by the CLI and by the
admin API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, metric, wait_for

pytestmark = pytest.mark.slow

ADMIN = "admin-s3cret-token"
STATIC = "sk-static-key"
HELLO = [{"role": "user", "content": "Say hi."}]


def cortex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **env},
    )


def config(neuron: Neuron, extra: str = "") -> str:
    return f"""
[gateway]
api_keys = ["{STATIC}"]
admin_token = "{ADMIN}"
poll_interval_s = 0.5
{extra}

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""


MODELS = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\naliases = ["claude-*"]\n'


@pytest.fixture(scope="module")
def gateway(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    process = Gateway(
        tmp_path_factory.mktemp("keys"), config(neuron), MODELS, {MODEL}, admin_token=ADMIN
    )
    yield process
    process.stop()


def admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=60, **kwargs)


def new_key(gateway: Gateway, **limits: Any) -> dict[str, Any]:
    made = admin(gateway, "POST", "/admin/keys", json={"name": "t", **limits})
    assert made.status_code == 201, made.text
    return made.json()


def chat(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def claude(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def ollama_chat(gateway: Gateway, key: str, **body: Any) -> httpx.Response:
    asked = {"model": MODEL, "messages": HELLO, "stream": False, **body}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(gateway.url + "/api/chat", json=asked, headers=headers, timeout=120)


def early_in_a_minute() -> None:
    """Rate windows are calendar minutes: start a count well inside one, so the requests
    of one check cannot straddle a minute's end (not a timing check)."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def usage_of(gateway: Gateway, key_id: str) -> dict[str, Any]:
    done = cortex("usage", "--gateway", gateway.url, "--key", key_id, "--json",
                  CORTEX_ADMIN_TOKEN=ADMIN)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["usage"]
    assert {row["key_id"] for row in rows} <= {key_id}
    return {
        name: sum(row[name] for row in rows)
        for name in ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens")
    }


# -- keys and the admin token ------------------------------------------------------------------


def test_the_cli_manages_keys_with_the_admin_token(gateway: Gateway) -> None:
    made = cortex("keys", "create", "--gateway", gateway.url, "--admin-token", ADMIN,
                  "--name", "cli-team", "--models", f"{MODEL},other*", "--rpm", "100",
                  "--budget-tokens", "100000", "--budget-period", "month",
                  "--priority", "high", "--expires", "2999-01-01")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("ck-") and " " not in key
    listed = json.loads(cortex("keys", "list", "--gateway", gateway.url, "--json",
                               CORTEX_ADMIN_TOKEN=ADMIN).stdout)  # fmt: skip
    (mine,) = [k for k in listed["keys"] if k["name"] == "cli-team"]
    assert key.startswith(mine["prefix"]) and key not in json.dumps(listed)
    assert mine["models"] == [MODEL, "other*"] and mine["priority"] == "high"
    assert mine["rpm"] == 100 and mine["budget_period"] == "month"
    assert mine["expires_at"].startswith("2999-01-01")
    # the key works at once, in every dialect
    reply = chat(gateway, key).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert reply.usage.completion_tokens == 1
    updated = cortex("keys", "update", mine["id"], "--gateway", gateway.url, "--rpm", "none",
                     "--tpm", "500", "--json", CORTEX_ADMIN_TOKEN=ADMIN)  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["rpm"] is None and json.loads(updated.stdout)["tpm"] == 500
    shown = cortex("keys", "show", mine["id"], "--gateway", gateway.url, CORTEX_ADMIN_TOKEN=ADMIN)
    assert "cli-team" in shown.stdout and "500" in shown.stdout
    # the table for people
    table = cortex("keys", "list", "--gateway", gateway.url, CORTEX_ADMIN_TOKEN=ADMIN).stdout
    assert "cli-team" in table and mine["prefix"] in table and key not in table
    # revoked: refused at once on this gateway (others: within keys.CACHE_TTL_S)
    revoked = cortex("keys", "revoke", mine["id"], "--gateway", gateway.url, "--json",
                     CORTEX_ADMIN_TOKEN=ADMIN)  # fmt: skip
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, key).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    with pytest.raises(anthropic.AuthenticationError):
        claude(gateway, key).messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert ollama_chat(gateway, key).status_code == 401


def test_admin_routes_take_the_admin_token_only(gateway: Gateway) -> None:
    key = new_key(gateway)["key"]
    for credential in (None, STATIC, key, ADMIN + "x"):
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        for path in ("/fleet", "/admin/keys", "/admin/usage"):
            answer = httpx.get(gateway.url + path, headers=headers, timeout=30)
            assert answer.status_code == 401, (credential, path, answer.text)
    assert admin(gateway, "GET", "/fleet").status_code == 200
    # and the admin token is no API key
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, ADMIN).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    # the CLI sends it: from the flag, or the environment
    assert cortex("status", "--gateway", gateway.url, "--admin-token", ADMIN).returncode == 0
    assert cortex("status", "--gateway", gateway.url, CORTEX_ADMIN_TOKEN=ADMIN).returncode == 0
    refused = cortex("status", "--gateway", gateway.url, CORTEX_API_KEY=STATIC)
    assert refused.returncode != 0 and "401" in refused.stderr
    # the static key still works on the API, and `cortex models` sends it there
    listed = cortex("models", "--gateway", gateway.url, "--json", CORTEX_API_KEY=STATIC)
    assert [m["id"] for m in json.loads(listed.stdout)["data"]] == [MODEL]


def test_a_key_sees_only_its_models(gateway: Gateway) -> None:
    key = new_key(gateway, models=["other-*"])["key"]
    with pytest.raises(openai.NotFoundError) as caught:
        chat(gateway, key).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError):  # through an alias too
        claude(gateway, key).messages.create(model="claude-haiku-4", max_tokens=1, messages=HELLO)
    assert ollama_chat(gateway, key).status_code == 404
    assert chat(gateway, key).models.list().data == []
    tags = httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"})
    assert tags.json()["models"] == []
    # a glob over its aliases lets it in by that name
    aliased = new_key(gateway, models=["claude-*"])["key"]
    message = claude(gateway, aliased).messages.create(
        model="claude-haiku-4", max_tokens=1, messages=HELLO
    )
    assert message.usage.output_tokens == 1


# -- limits ------------------------------------------------------------------------------------


def test_rpm_is_a_429_with_retry_after_in_each_dialect(gateway: Gateway) -> None:
    early_in_a_minute()
    made = new_key(gateway, rpm=2)
    key = made["key"]
    client = chat(gateway, key)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert caught.value.status_code == 429
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    error = caught.value.body
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("rate limit: 2 requests per minute")
    with pytest.raises(anthropic.RateLimitError) as refused:  # 429, not Anthropic's 529
        claude(gateway, key).messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert refused.value.status_code == 429 and "retry-after" in refused.value.response.headers
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert "2 requests per minute" in refused.value.body["error"]["message"]
    answer = ollama_chat(gateway, key)
    assert answer.status_code == 429 and "retry-after" in answer.headers
    assert answer.json()["error"].startswith("rate limit: 2 requests per minute")
    metrics = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    assert metric(metrics, "cortex_rate_limited_total", key_id=made["id"], reason="rpm") == 3


def test_a_spent_budget_says_budget(gateway: Gateway) -> None:
    key = new_key(gateway, budget_tokens=5, budget_period="day")["key"]
    client = chat(gateway, key)
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)  # > 5 tokens
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert caught.value.body["code"] == "insufficient_quota"
    assert caught.value.body["message"].startswith("token budget of 5 per day spent")
    assert int(caught.value.response.headers["retry-after"]) <= 86400
    with pytest.raises(anthropic.RateLimitError, match="budget"):
        claude(gateway, key).messages.create(model=MODEL, max_tokens=1, messages=HELLO)


def test_max_parallel_counts_streams_until_they_end(gateway: Gateway) -> None:
    key = new_key(gateway, max_parallel=1)["key"]
    client = chat(gateway, key)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stream=True)
    next(iter(stream))  # under way
    with pytest.raises(openai.RateLimitError, match="1 requests at once"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    stream.close()  # cancelled: its place comes back when the gateway sees it end
    wait = time.monotonic() + 30
    while True:
        try:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
            break
        except openai.RateLimitError:
            assert time.monotonic() < wait, "the cancelled stream's place never came back"
            time.sleep(0.1)


# -- exact usage -------------------------------------------------------------------------------


def test_usage_equals_what_the_clients_were_told(gateway: Gateway, neuron: Neuron) -> None:
    dialects = ("openai", "anthropic", "ollama", "responses", "cut")
    keys = {dialect: new_key(gateway) for dialect in dialects}
    told = {d: {"requests": 0, "input_tokens": 0, "cached_tokens": 0, "output_tokens": 0}
            for d in keys}  # fmt: skip

    def tell(dialect: str, input_tokens: int, output_tokens: int, cached: int = 0) -> None:
        told[dialect]["requests"] += 1
        told[dialect]["input_tokens"] += input_tokens
        told[dialect]["output_tokens"] += output_tokens
        told[dialect]["cached_tokens"] += cached

    oa = chat(gateway, keys["openai"]["key"])
    an = claude(gateway, keys["anthropic"]["key"])
    rs = chat(gateway, keys["responses"]["key"])
    for i in range(30):  # 240 requests, 60 per dialect, half of them streamed
        messages = [{"role": "user", "content": f"Count to {i}."}]
        reply = oa.chat.completions.create(model=MODEL, messages=messages, max_tokens=1 + i % 8)
        details = reply.usage.prompt_tokens_details
        tell("openai", reply.usage.prompt_tokens, reply.usage.completion_tokens,
             details.cached_tokens if details else 0)  # fmt: skip
        stream = oa.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=1 + i % 8, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        usage = [chunk.usage for chunk in stream if chunk.usage][-1]
        details = usage.prompt_tokens_details
        tell("openai", usage.prompt_tokens, usage.completion_tokens,
             details.cached_tokens if details else 0)  # fmt: skip
        message = an.messages.create(model=MODEL, max_tokens=1 + i % 8, messages=messages)
        tell("anthropic", message.usage.input_tokens, message.usage.output_tokens)
        with an.messages.stream(model=MODEL, max_tokens=1 + i % 8, messages=messages) as events:
            final = events.get_final_message()
        tell("anthropic", final.usage.input_tokens, final.usage.output_tokens)
        for stream_it in (False, True):
            answer = ollama_chat(gateway, keys["ollama"]["key"], messages=messages,
                                 stream=stream_it, options={"num_predict": 1 + i % 8})  # fmt: skip
            assert answer.status_code == 200, answer.text
            last = json.loads(answer.text.strip().splitlines()[-1])
            tell("ollama", last["prompt_eval_count"], last["eval_count"])
        response = rs.responses.create(
            model=MODEL, input=messages[0]["content"], max_output_tokens=1 + i % 8
        )
        cached = response.usage.input_tokens_details.cached_tokens
        tell("responses", response.usage.input_tokens, response.usage.output_tokens, cached)
        events = rs.responses.create(
            model=MODEL, input=messages[0]["content"], max_output_tokens=1 + i % 8, stream=True
        )
        # the last event: response.completed, or response.incomplete after a length cut
        # (which the SDK's .stream() helper does not fold into a final response)
        final = [event for event in events][-1].response
        cached = final.usage.input_tokens_details.cached_tokens
        tell("responses", final.usage.input_tokens, final.usage.output_tokens, cached)
    # Streams cancelled after their first token: the client is told nothing of usage, so
    # what counts is what the neuron generated before the cut, by its own count of each
    # request (GET /requests/{id}, contract 1.3), which the gateway asks for afterwards.
    cut = chat(gateway, keys["cut"]["key"])
    cut_ids = [f"cut-{uuid.uuid4().hex}" for _ in range(3)]
    for request_id in cut_ids:
        stream = cut.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=64, stream=True,
            extra_headers={"x-request-id": request_id},
        )  # fmt: skip
        next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
        stream.close()
    # the usage flush runs every second; `cortex usage` reads what is stored
    for dialect in ("openai", "anthropic", "ollama", "responses"):
        expected = {**told[dialect], "errors": 0}
        if dialect in ("anthropic", "ollama"):  # their clients are not told of cached tokens
            expected["cached_tokens"] = usage_of(gateway, keys[dialect]["id"])["cached_tokens"]
        assert usage_of(gateway, keys[dialect]["id"]) == expected, dialect
    generated = {"requests": 3, "errors": 0, "input_tokens": 0, "cached_tokens": 0,
                 "output_tokens": 0}  # fmt: skip
    for request_id in cut_ids:
        finished = neuron_count(neuron, request_id)
        assert finished["finish"] == "cancelled", finished
        generated["input_tokens"] += finished["prompt_tokens"]
        generated["cached_tokens"] += finished["cached_tokens"]
        generated["output_tokens"] += finished["completion_tokens"]
    assert 3 <= generated["output_tokens"] < 3 * 64  # the first chunks came; the rest did not
    wait_for(
        lambda: usage_of(gateway, keys["cut"]["id"]) == generated,
        f"the cancelled streams counted as the neuron generated them: {generated}",
        timeout_s=30,
        interval_s=0.3,
    )


def neuron_count(neuron: Neuron, request_id: str) -> dict[str, Any]:
    """The neuron's own count of a finished generation (once the cut has reached it)."""
    url = f"{neuron.url}/requests/{request_id}"
    wait_for(
        lambda: httpx.get(url, headers=neuron.headers, timeout=5).status_code == 200,
        f"neuron's count of {request_id}",
    )
    return httpx.get(url, headers=neuron.headers, timeout=5).json()


def test_protect_ui_puts_the_dashboard_and_metrics_behind_the_admin_token(
    neuron: Neuron, tmp_path: Path
) -> None:
    gateway = Gateway(tmp_path, config(neuron, "protect_ui = true"), MODELS, {MODEL},
                      admin_token=ADMIN)  # fmt: skip
    try:
        metrics = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
        for url in (gateway.url + "/ui", gateway.url + "/ui/app.js", metrics):
            for credential in (None, STATIC):
                headers = {"Authorization": f"Bearer {credential}"} if credential else {}
                assert httpx.get(url, headers=headers).status_code == 401, (url, credential)
            answer = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"})
            assert answer.status_code == 200, url
        assert "cortex_requests_total" in answer.text
        assert httpx.get(gateway.url + "/health").status_code == 200  # liveness stays open
    finally:
        gateway.stop()


def test_usage_outlives_a_restart(neuron: Neuron, tmp_path: Path) -> None:
    """No keys: requests count as "anonymous", in the database the next process reads
    (the flush at shutdown itself: test_keys_store's ``close``)."""
    plain = f'[gateway]\npoll_interval_s = 0.5\n\n[[neurons]]\nname = "{neuron.name}"\n'
    plain += f'endpoint = "{neuron.url}"\n'
    first = Gateway(tmp_path, plain, MODELS, {MODEL})
    try:
        client = openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
        told = 0
        for _ in range(3):
            told += client.chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=2
            ).usage.completion_tokens
    finally:
        assert first.stop() == 0
    second = Gateway(tmp_path, plain, MODELS, {MODEL})  # the same state dir, so database
    try:
        (row,) = httpx.get(second.url + "/admin/usage", timeout=30).json()["usage"]
        assert (row["key_id"], row["model"], row["requests"]) == ("anonymous", MODEL, 3)
        assert row["output_tokens"] == told
    finally:
        second.stop()
