"""Fair queues with real keys on a real gateway and neuron: one key's flood does not
starve another key's request (issue 17: A floods 50 requests, B sends 1 a moment later,
B's request starts within the next ``max_batch`` admissions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow

ADMIN = "admin-fair-queue"
MAX_BATCH = 4  # the session neuron's (tests/conftest.py)
FLOOD = 50


@pytest.fixture(scope="module")
def gateway(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = (
        f'[gateway]\nadmin_token = "{ADMIN}"\npoll_interval_s = 0.5\n\n'
        f'[[neurons]]\nname = "{neuron.name}"\nendpoint = "{neuron.url}"\n'
    )
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n'
    process = Gateway(tmp_path_factory.mktemp("fair"), config, models, {MODEL}, admin_token=ADMIN)
    yield process
    process.stop()


def new_key(gateway: Gateway, name: str) -> str:
    made = httpx.post(
        gateway.url + "/admin/keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return made.json()["key"]


async def first_token_at(client: httpx.AsyncClient, key: str, n: int) -> float:
    """When the request's first generated text arrived (a stream: the role chunk comes
    before any token, so the first content is the sign that it was admitted)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me a story about a robot, take {n}."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as sse:
        assert sse.status_code == 200, await sse.aread()
        seen = None
        async for line in sse.aiter_lines():  # to the end: then its place is given back
            if seen is None and '"content":"' in line and '"content":""' not in line:
                seen = time.monotonic()
    assert seen is not None, "the stream ended without text"
    return seen


async def flood_then_one(
    gateway: Gateway, flooder: str, late: str
) -> tuple[list[float], float, float]:
    limits = httpx.Limits(max_connections=FLOOD + 8)
    timeout = httpx.Timeout(600)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=timeout) as client:
        flood = [asyncio.create_task(first_token_at(client, flooder, n)) for n in range(FLOOD)]
        while not any(task.done() for task in flood):  # the first wave is running
            await asyncio.sleep(0.05)
        late_sent = time.monotonic()
        late_first = await first_token_at(client, late, FLOOD)
        return list(await asyncio.gather(*flood)), late_sent, late_first


def test_one_key_flooding_does_not_starve_another(gateway: Gateway) -> None:
    flooder, late = new_key(gateway, "flood"), new_key(gateway, "late")
    flood, late_sent, late_first = asyncio.run(flood_then_one(gateway, flooder, late))
    # the flood's requests that got going while the late one waited: first come, first
    # served, that would be nearly all of them; with the fair queue, the late one gets the
    # next place. A first token is admission plus a prefill, so requests admitted in the
    # same step as the late one may show theirs just before it: hence up to two batches.
    overtook = sum(1 for at in flood if late_sent < at < late_first)
    assert overtook <= 2 * MAX_BATCH, f"{overtook} of {FLOOD} flood requests went first"
    assert sum(1 for at in flood if at > late_first) >= FLOOD - 3 * MAX_BATCH
