"""Who may call which route: the path's class, and the admin token's rules."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from cortex.errors import AuthenticationFailed
from cortex.gateway.auth import ADMIN, ApiKeys, static_key_id


def bearer(token: str) -> Headers:
    return Headers({"authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    ("path", "access", "protected_ui"),
    [
        ("/health", "public", "public"),
        ("/openapi.json", "public", "public"),
        ("/ui", "public", "admin"),
        ("/ui/app.js", "public", "admin"),
        ("/fleet", "admin", "admin"),
        ("/fleet/load", "admin", "admin"),
        ("/admin/keys", "admin", "admin"),
        ("/debug/anything", "admin", "admin"),
        ("/fleetx", "api", "api"),  # a prefix only counts as a whole segment
        ("/v1/chat/completions", "api", "api"),
        ("/api/tags", "api", "api"),
        ("/no/such/route", "api", "api"),  # unknown paths need a key too
    ],
)
def test_paths_by_class(path: str, access: str, protected_ui: str) -> None:
    assert ApiKeys([]).access(path) == access
    assert ApiKeys([], admin_token="t", protect_ui=True).access(path) == protected_ui


def test_the_admin_token_opens_admin_routes_and_nothing_else() -> None:
    keys = ApiKeys(["sk-1"], admin_token="admin-t")
    assert keys.check_admin("/fleet", bearer("admin-t")) is ADMIN
    assert keys.check_admin("/admin/keys", Headers({"x-api-key": "admin-t"})) is ADMIN
    for credential in ("sk-1", "admin-tx", ""):
        with pytest.raises(AuthenticationFailed):
            keys.check_admin("/fleet", bearer(credential))


async def test_the_admin_token_is_no_api_key() -> None:
    keys = ApiKeys(["sk-1"], admin_token="admin-t")
    with pytest.raises(AuthenticationFailed):
        await keys.authenticate(bearer("admin-t"))
    assert (await keys.authenticate(bearer("sk-1"))).key_id == static_key_id("sk-1")


@pytest.mark.parametrize("path", ["/fleet", "/fleet/load", "/admin/keys", "/debug/x"])
def test_without_an_admin_token_keys_close_every_admin_route(path: str) -> None:
    """Issue 17: admin routes need the admin token whenever any key is configured; a
    key is never one, so with none set they are closed, saying why."""
    keys = ApiKeys(["sk-1"])
    for supplied in ("sk-1", "sk-2"):
        with pytest.raises(AuthenticationFailed, match="none is set"):
            keys.check_admin(path, bearer(supplied))


def test_no_key_and_no_token_is_open_as_before() -> None:
    assert ApiKeys([]).check_admin("/admin/keys", Headers()) is ADMIN
