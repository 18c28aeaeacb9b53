"""Bearer tokens and API keys: the scheme in any case, x-api-key beside it."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from cortex.bearer import bearer_token, token_matches
from cortex.errors import AuthenticationFailed
from cortex.gateway.auth import ANONYMOUS, ApiKeys, static_key_id


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer sk-1", "sk-1"),
        ("BEARER  sk-1 ", "sk-1"),
        ("Basic c2stMQ==", None),
        ("sk-1", None),  # no scheme is no bearer token
        ("Bearer", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header}) == token
    assert bearer_token({}) is None


def test_token_matches_any_secret() -> None:
    assert token_matches("b", ["a", "b"])
    assert not token_matches("c", ["a", "b"])
    assert not token_matches(None, ["a"])
    assert not token_matches("", [""])  # an empty token matches nothing
    assert token_matches("ключ", ["ключ"])  # not only ASCII


def _request(**headers: str) -> Request:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer sk-two"},
        {"authorization": "bearer sk-two"},
        {"x_api_key": "sk-one"},
        {"x_api_key": "wrong", "authorization": "Bearer sk-one"},  # either may carry it
    ],
)
async def test_api_keys_accept(headers: dict[str, str]) -> None:
    identity = await ApiKeys(["sk-one", "sk-two"]).authenticate(_request(**headers).headers)
    assert identity.key_id in (static_key_id("sk-one"), static_key_id("sk-two"))
    assert "sk-" not in identity.key_id  # an id, never the key


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": "sk-one"}, {"x_api_key": ""}],
)
async def test_api_keys_refuse(headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationFailed):
        await ApiKeys(["sk-one", "sk-two"]).authenticate(_request(**headers).headers)


async def test_no_keys_no_check() -> None:
    assert await ApiKeys([]).authenticate(Headers()) is ANONYMOUS


def test_a_route_outside_the_gate_is_refused() -> None:
    """Routes ask ``check``: a request the gate did not see is not let through."""
    with pytest.raises(AuthenticationFailed):
        ApiKeys([]).check(_request())
