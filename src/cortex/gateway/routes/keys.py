"""The admin API of virtual keys and usage: ``/admin/keys`` (create, list, show, update,
revoke) and ``/admin/usage``. ``AuthGate`` lets only the admin token in (docs/keys.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from cortex.errors import CortexError, InvalidRequest
from cortex.gateway.keys import KeyRecord, KeyStore
from cortex.gateway.state import GatewayState, state_of
from cortex.protocol.admin import KeyCreate, KeyList, KeyUpdate, UsageReport
from cortex.protocol.parsing import parse_body


class KeyNotFound(CortexError):
    status = 404
    kind = "not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"No key with id '{key_id}'.", param="id", code="key_not_found")


def _wire(answer: BaseModel, status_code: int = 200) -> Response:
    return Response(answer.model_dump_json(), status_code, media_type="application/json")


def _store(state: GatewayState) -> KeyStore:
    assert state.keys.store is not None
    return state.keys.store


async def create_key(request: Request) -> Response:
    state = state_of(request)
    if state.keys.admin_token is None:
        # Without one, the first virtual key would lock every admin route (docs/keys.md).
        raise InvalidRequest(
            "Set [gateway] admin_token in cortex.toml (or CORTEX_ADMIN_TOKEN) before "
            "creating virtual keys: they are managed with it.",
            code="admin_token_required",
        )
    asked = parse_body(KeyCreate, await request.body())
    created = await _store(state).create(asked)
    return _wire(created, 201)


async def list_keys(request: Request) -> Response:
    keys = await _store(state_of(request)).all()
    return _wire(KeyList(keys=[key.view() for key in keys]))


async def _found(request: Request, key: KeyRecord | None) -> Response:
    if key is None:
        raise KeyNotFound(request.path_params["key_id"])
    return _wire(key.view())


async def show_key(request: Request) -> Response:
    store = _store(state_of(request))
    return await _found(request, await store.get(request.path_params["key_id"]))


async def update_key(request: Request) -> Response:
    store = _store(state_of(request))
    changes = parse_body(KeyUpdate, await request.body())
    return await _found(request, await store.update(request.path_params["key_id"], changes))


async def revoke_key(request: Request) -> Response:
    store = _store(state_of(request))
    return await _found(request, await store.revoke(request.path_params["key_id"]))


async def usage(request: Request) -> Response:
    """``?key=ID&since=YYYY-MM-DD&model=M&by=day``: totals per key and model (and day)."""
    state = state_of(request)
    query = request.query_params
    since = _day(query.get("since"))
    by = query.get("by")
    if by not in (None, "day"):
        raise InvalidRequest("by: only 'day' is supported.", param="by")
    await state.usage.flush()  # what this gateway has counted so far, included
    rows = await state.usage.report(
        key_id=query.get("key") or None,
        since_day=since,
        model=query.get("model") or None,
        by_day=by == "day",
    )
    names = await _store(state).names()
    for row in rows:
        row.key_name = names.get(row.key_id)
    return _wire(UsageReport(since=since, usage=rows))


def _day(text: str | None) -> str | None:
    """A date (``YYYY-MM-DD``) or an RFC 3339 time, as the UTC day it falls on."""
    if not text:
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            "since: expected YYYY-MM-DD or an RFC 3339 time.", param="since"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date().isoformat()


async def keys(request: Request) -> Response:
    """``/admin/keys``: one route per path, as the OpenAPI document lists them."""
    return await (create_key if request.method == "POST" else list_keys)(request)


async def key(request: Request) -> Response:
    """``/admin/keys/{key_id}``: show, update (PATCH), revoke (DELETE)."""
    handler = {"PATCH": update_key, "DELETE": revoke_key}.get(request.method, show_key)
    return await handler(request)
