"""Authentication on every route of both apps, read from their own route tables.

The gateway with ``api_keys`` and a neuron with ``--token`` (fault injection on, so
``/debug/fault`` is mounted) are asked on every route and method: without a key or
token, and with a wrong one. A route is guarded unless it is on a public list below,
each entry saying why, so a route added to either app is tested from the start (and
fails until it checks the key, or is listed as public with a reason).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from starlette.routing import BaseRoute

from cortex.gateway.app import ROUTES as GATEWAY_ROUTES
from cortex.neuron.routes import DEBUG_ROUTES as NEURON_DEBUG_ROUTES
from cortex.neuron.routes import ROUTES as NEURON_ROUTES
from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow

KEYS = ["sk-one", "sk-two"]
ADMIN = "gateway-admin-s3cret"
TOKEN = "neuron-admin-s3cret"
HELLO = [{"role": "user", "content": "Say hi."}]

# Gateway routes answered without an API key. Everything else needs one.
GATEWAY_PUBLIC = {
    "/": "liveness: Claude Code probes HEAD / before its first request",
    "/health": "liveness for load balancers and the CLI: up or not, no fleet data",
    "/ready": "readiness for load balancers and orchestrators, which send no key",
    "/openapi.json": "the API's description: routes and types, nothing of this gateway's",
    "/ui": "the dashboard page: static, no data; its script sends the key the user pastes",
    "/ui/{asset}": "the dashboard's static script and stylesheet",
}
# (The gateway's Prometheus exposition is a separate listener, metrics_listen, not an
# API route: it is not in the route table and scrapers send no key.)

# Neuron routes answered without its token (README "Security"): every other route needs
# it, inference and /status included, so that a neuron listening beyond loopback cannot
# be used past the gateway's keys.
NEURON_PUBLIC = {
    "/health": "liveness, for supervisors and probes",
}

# Bodies a route would act on if it let the request through: a missing check shows as
# a 200 (or the route's own error), never as the 401 the tests expect. Any new route
# gets ``{}``, which is no 401 either.
GATEWAY_BODIES = {
    "/v1/chat/completions": {"model": MODEL, "messages": HELLO, "max_tokens": 1},
    "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 1},
    "/v1/embeddings": {"model": MODEL, "input": "Hi"},
    "/v1/messages": {"model": MODEL, "messages": HELLO, "max_tokens": 1},
    "/v1/messages/count_tokens": {"model": MODEL, "messages": HELLO},
    "/fleet/load": {"model": MODEL},
    # a real unload would take the session's model away: a missing check answers 404
    "/fleet/unload": {"model": "no-such-model"},
    "/api/chat": {"model": MODEL, "messages": HELLO, "stream": False,
                  "options": {"num_predict": 1}},
    "/api/generate": {"model": MODEL, "prompt": "Hi", "stream": False,
                      "options": {"num_predict": 1}},
    "/api/embed": {"model": MODEL, "input": "Hi"},
    "/api/embeddings": {"model": MODEL, "prompt": "Hi"},
    "/api/show": {"model": MODEL},
    "/api/pull": {"model": MODEL, "stream": False},
}  # fmt: skip
SPARE = {"id": "spare", "source": BUNDLED, "context_length": 512, "max_batch": 1}
NEURON_BODIES = {
    "/models/load": SPARE,
    "/models/estimate": SPARE,
    "/models/unload": {"id": "spare"},
    "/debug/fault": {"model": "spare", "kind": "device_error"},
}
PATH_PARAMS = {"asset": "app.js"}


def is_admin(path: str) -> bool:
    """The gateway's admin routes: the admin token opens them, an API key never does."""
    return path == "/fleet" or path.startswith(("/fleet/", "/admin/", "/debug/"))


def calls(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) for every method of every route; GET for a mount (static files)."""
    found = [
        (method, route.path)  # type: ignore[attr-defined]
        for route in routes
        # Starlette adds HEAD to every GET route
        for method in sorted(getattr(route, "methods", None) or {"GET"})
    ]
    assert found
    return found


def url_path(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_PARAMS.get(m[1], "x"), path)


def send(base: str, method: str, path: str, body: dict | None, **headers: str):
    json_body = (body or {}) if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(
        method, base + url_path(path), json=json_body, headers=headers, timeout=120
    )


def test_the_public_lists_name_real_routes() -> None:
    """A stale entry (a route renamed or removed) would leave its successor unguarded."""
    assert set(GATEWAY_PUBLIC) <= {route.path for route in GATEWAY_ROUTES}
    assert set(NEURON_PUBLIC) <= {route.path for route in NEURON_ROUTES + NEURON_DEBUG_ROUTES}


# -- the gateway ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = f"""
[gateway]
api_keys = {KEYS!r}
admin_token = "{ADMIN}"
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n'
    tmp = tmp_path_factory.mktemp("keyed")
    process = Gateway(tmp, config, models, {MODEL}, api_key=KEYS[1], admin_token=ADMIN)
    yield process
    process.stop()


@pytest.mark.parametrize(("method", "path"), calls(GATEWAY_ROUTES))
def test_every_gateway_route_needs_a_key_unless_public(keyed: Gateway, method: str, path: str):
    body = GATEWAY_BODIES.get(path, {})
    if path in GATEWAY_PUBLIC:
        answer = send(keyed.url, method, path, body)
        assert answer.status_code == 200, (GATEWAY_PUBLIC[path], answer.text)
        return
    anthropic_route = path.startswith("/v1/messages")
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"x-api-key": "sk-wrong"},
        {"Authorization": f"Bearer {KEYS[0]}x"},  # a key with a valid key as its prefix
    ):
        answer = send(keyed.url, method, path, body, **headers)
        assert answer.status_code == 401, (headers, answer.text)
        if method == "HEAD":
            continue
        if anthropic_route:  # in the dialect's own envelope
            assert answer.json()["type"] == "error", answer.text
            assert answer.json()["error"]["type"] == "authentication_error"
        elif path.startswith("/api/"):  # Ollama's: one string
            assert "API key" in answer.json()["error"], answer.text
        elif is_admin(path):
            assert answer.json()["error"]["code"] == "invalid_admin_token", answer.text
        else:
            assert answer.json()["error"]["code"] == "invalid_api_key", answer.text
    # the right key, either way it may be sent, gets past the check (to the route's own
    # answer: a model that does not exist is a 404 there, and costs no generation)
    past = {**body, "model": "no-such-model"} if "model" in body else body
    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"x-api-key": KEYS[1]}):
        answer = send(keyed.url, method, path, past, **headers)
        if is_admin(path):  # an API key never opens an admin route
            assert answer.status_code == 401, (headers, answer.text)
        else:
            assert answer.status_code != 401, (headers, answer.text)
    if is_admin(path):  # the admin token does, sent either way
        for headers in ({"Authorization": f"Bearer {ADMIN}"}, {"x-api-key": ADMIN}):
            answer = send(keyed.url, method, path, past, **headers)
            assert answer.status_code != 401, (headers, answer.text)


def test_keys_without_an_admin_token_close_the_admin_routes(neuron: Neuron, tmp_path: Path) -> None:
    """No admin token set: the fleet's admin routes stay closed, to the keys too, and the
    gateway says so at start-up and in each refusal."""
    config = f"""
[gateway]
api_keys = ["{KEYS[0]}"]

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    gateway = Gateway(tmp_path, config, f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n')
    try:
        key = {"Authorization": f"Bearer {KEYS[0]}"}
        for path in ("/fleet", "/fleet/stats", "/admin/keys"):
            answer = httpx.get(gateway.url + path, headers=key, timeout=10)
            assert answer.status_code == 401, answer.text
            assert "none is set" in answer.json()["error"]["message"]
        models = httpx.get(gateway.url + "/v1/models", headers=key, timeout=10)
        assert models.status_code == 200  # the key still serves the API
        assert "/fleet, /admin and /debug stay closed" in gateway.log_path.read_text()
    finally:
        gateway.stop()


def test_the_sdks_see_a_401_in_their_own_shape(keyed: Gateway) -> None:
    wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    right = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEYS[0], max_retries=0)
    reply = right.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert reply.usage.completion_tokens == 1
    # the Anthropic SDK sends x-api-key, and gets a 401 in its own envelope
    claude = anthropic.Anthropic(base_url=keyed.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert caught.value.body["type"] == "error"
    claude = anthropic.Anthropic(base_url=keyed.url, api_key=KEYS[1], max_retries=0)
    message = claude.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert message.usage.output_tokens == 1
    # the Ollama client sends the headers it is given (or OLLAMA_API_KEY as a Bearer token)
    wrong_ollama = ollama.Client(host=keyed.url, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(ollama.ResponseError) as refused:
        wrong_ollama.list()
    assert refused.value.status_code == 401 and "API key" in refused.value.error
    right_ollama = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert [m.model for m in right_ollama.list().models] == [MODEL]


# -- the neuron -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neuron]:
    """A neuron with an admin token and fault injection, serving nothing at first."""
    process = Neuron(
        tmp_path_factory.mktemp("guarded"),
        "guarded",
        extra=["--token", TOKEN, "--enable-fault-injection"],
    )
    yield process
    process.stop()


@pytest.mark.parametrize(("method", "path"), calls(NEURON_ROUTES + NEURON_DEBUG_ROUTES))
def test_every_neuron_route_needs_the_token_unless_public(
    guarded: Neuron, method: str, path: str
) -> None:
    body = NEURON_BODIES.get(path, {"model": "no-such-model"})
    if path in NEURON_PUBLIC:
        answer = send(guarded.url, method, path, body)
        assert answer.status_code == 200, (NEURON_PUBLIC[path], answer.text)
        return
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},  # the token as a prefix
        {"x-api-key": TOKEN},  # the neuron takes its token as a Bearer token only
    ):
        answer = send(guarded.url, method, path, body, **headers)
        assert answer.status_code == 401, (headers, answer.text)
        if method != "HEAD":
            assert "token" in answer.json()["error"]["message"], answer.text
    assert guarded.status()["models"] == []  # nothing was loaded on the way
    # the token gets past the check, to the route's own answer
    if path == "/models/load":
        missing = {"id": "x", "source": "file:/nonexistent/model.gguf"}
        answer = send(guarded.url, method, path, missing, **guarded.headers)
        assert answer.status_code == 422, answer.text
    else:
        answer = send(guarded.url, method, path, body, **guarded.headers)
        assert answer.status_code != 401, answer.text


# -- the gateway's own use of the neuron's token ---------------------------------------------


def token_gateway(tmp: Path, neuron: Neuron, token: str) -> Gateway:
    config = f"""
[gateway]
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
token = "{token}"
"""
    models = (
        f'[[models]]\nid = "spare"\nsource = "{BUNDLED}"\ncontext_length = 512\nmax_batch = 1\n'
    )
    return Gateway(tmp, config, models)


def test_the_gateway_sends_the_neurons_token_on_a_cold_load(guarded: Neuron, tmp_path) -> None:
    gateway = token_gateway(tmp_path, guarded, TOKEN)
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.with_raw_response.create(
            model="spare", messages=HELLO, max_tokens=2
        )
        assert reply.headers["x-cortex-node"] == "guarded"
        assert reply.parse().usage.completion_tokens == 2
        assert guarded.model("spare")["state"] == "ready"
        # and on an unload
        unloaded = httpx.post(gateway.url + "/fleet/unload", json={"model": "spare"}, timeout=60)
        assert unloaded.status_code == 200, unloaded.text
        assert guarded.model("spare") is None
    finally:
        gateway.stop()


def test_a_wrong_neuron_token_is_a_clear_gateway_error(guarded: Neuron, tmp_path) -> None:
    """The neuron refuses every request with the wrong token, polls included: the node is
    down, the operator's views say why, and a client is told to retry, not that its own
    key is wrong (a 401 would make its SDK report a bad API key)."""
    gateway = token_gateway(tmp_path, guarded, "not-the-token")
    try:
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "spare", "messages": HELLO, "max_tokens": 2},
            timeout=60,
        )
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert guarded.model("spare") is None  # nothing was loaded
        (node,) = httpx.get(gateway.url + "/fleet", timeout=10).json()["nodes"]
        assert node["name"] == "guarded" and node["up"] is False
        assert "token" in node["error"] and "cortex.toml" in node["error"], node["error"]
    finally:
        gateway.stop()
