"""Two gateways over one PostgreSQL database and one neuron: a key made through one works
through the other, its rpm holds across both, its revocation reaches both, and its
usage is the same seen from either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, wait_for

pytestmark = pytest.mark.slow

ADMIN = "shared-admin-token"
HELLO = [{"role": "user", "content": "Say hi."}]
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
FIELDS = ("requests", "input_tokens", "output_tokens")


@pytest.fixture(scope="module")
def pair(
    neuron: Neuron, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    from postgres import new_database

    config = f"""
[gateway]
admin_token = "{ADMIN}"
database_url = "{new_database(postgres)}"
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n'
    started: list[Gateway] = []
    try:
        for name in ("a", "b"):
            tmp: Path = tmp_path_factory.mktemp(f"shared-{name}")
            started.append(Gateway(tmp, config, models, {MODEL}, admin_token=ADMIN))
        yield started[0], started[1]
    finally:
        for gateway in started:
            gateway.stop()


def new_key(gateway: Gateway, **limits: object) -> dict:
    made = httpx.post(
        gateway.url + "/admin/keys", json={"name": "t", **limits}, headers=AS_ADMIN, timeout=30
    )
    assert made.status_code == 201, made.text
    return made.json()


def ask(gateway: Gateway, key: str) -> tuple[int, int]:
    """The (input, output) tokens the client was told of."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    return reply.usage.prompt_tokens, reply.usage.completion_tokens


def test_rpm_holds_across_gateways(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    if time.time() % 60 > 45:  # the count in one calendar minute (not a timing check)
        time.sleep(61 - time.time() % 60)
    made = new_key(a, rpm=3)
    key = made["key"]
    told = [ask(a, key), ask(b, key), ask(a, key)]  # made through a, known to b
    for gateway in (b, a):  # each gateway alone has seen fewer than 3
        with pytest.raises(openai.RateLimitError, match="3 requests per minute"):
            ask(gateway, key)

    def usage(gateway: Gateway) -> tuple[int, int, int]:
        answer = httpx.get(
            gateway.url + "/admin/usage", params={"key": made["id"]}, headers=AS_ADMIN
        )
        rows = answer.json()["usage"]
        return tuple(sum(row[f] for row in rows) for f in FIELDS)  # type: ignore[return-value]

    expected = (3, sum(i for i, _ in told), sum(o for _, o in told))
    # each gateway flushes its own counts every second: both then see all three, exactly
    wait_for(
        lambda: usage(a) == expected and usage(b) == expected,
        f"the usage of both gateways, stored: {expected}",
    )


def test_a_revocation_reaches_the_other_gateway(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    made = new_key(a)
    ask(b, made["key"])  # in b's cache now
    revoked = httpx.delete(f"{a.url}/admin/keys/{made['id']}", headers=AS_ADMIN, timeout=30)
    assert revoked.status_code == 200, revoked.text

    def refused() -> bool:
        try:
            ask(b, made["key"])
        except openai.AuthenticationError:
            return True
        return False

    # within keys.CACHE_TTL_S (2 s); the wait's bound is only for a stuck state to fail
    wait_for(refused, "the revoked key refused by the other gateway", timeout_s=30)
