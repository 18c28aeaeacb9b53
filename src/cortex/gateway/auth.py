"""Who may call what: API keys (static ones from cortex.toml, virtual ones from the
database) on API routes, the admin token on admin routes.

``AuthGate``, a pure ASGI middleware, decides for every request before routing, by path:

- public (``/``, ``/health``, ``/ready``, ``/openapi.json``, and ``/ui`` unless
  ``protect_ui``): no credential;
- admin (``/fleet``, ``/fleet/*``, ``/admin/*``, ``/debug/*``; ``/ui`` with
  ``protect_ui``): the admin token when one is configured. Without one, a cortex.toml key
  still opens ``/fleet`` and ``/debug`` (as before admin tokens existed) but not
  ``/admin``; with no key and no token at all, everything is open, as before;
- every other route is an API route: a key is needed once any is configured (static,
  or a virtual key created in the database). The admin token is not an API key.

A virtual key's limits are taken before the request goes on (``limits.Limiter``) and
its place given back when the response has ended; its usage is then accounted. A key
is never logged: its id is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.bearer import bearer_token, token_matches
from cortex.error_handlers import error_body, error_status
from cortex.errors import AuthenticationFailed, CortexError, RateLimited
from cortex.gateway.fair_queue import Tenant, current_tenant
from cortex.gateway.keys import KEY_PREFIX, KeyRecord, KeyStore
from cortex.gateway.recording import RequestRecord, meter_late_counts, record
from cortex.protocol.errors import error_headers

if TYPE_CHECKING:  # state.py imports this module
    from cortex.gateway.state import GatewayState

log = logging.getLogger("cortex.gateway.auth")

Access = Literal["public", "admin", "api"]
_PUBLIC = frozenset({"/", "/health", "/ready", "/openapi.json"})
_ADMIN_PREFIXES = ("/fleet/", "/admin/", "/debug/")
_SCOPE_KEY = "cortex.identity"


@dataclass(frozen=True)
class Identity:
    """Who a request is from: ``key_id`` names it in usage and logs (never the key)."""

    key_id: str  # a virtual key's id, "static-<8 hex of its hash>", "admin" or "anonymous"
    key: KeyRecord | None = None  # a virtual key's record: its limits

    @property
    def models(self) -> tuple[str, ...]:
        return self.key.models if self.key is not None else ()

    def tenant(self) -> Tenant | None:
        if self is ANONYMOUS:
            return None
        priority = self.key.priority if self.key is not None else "normal"
        return Tenant(self.key_id, priority)  # type: ignore[arg-type]


ANONYMOUS = Identity("anonymous")
ADMIN = Identity("admin")
current_identity: ContextVar[Identity] = ContextVar("cortex_identity", default=ANONYMOUS)


def identity_of(request: Request) -> Identity:
    return request.scope.get(_SCOPE_KEY, ANONYMOUS)


def static_key_id(key: str) -> str:
    return "static-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _refused(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code="invalid_api_key")


_NO_KEY = (
    "Invalid or missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
)


class ApiKeys:
    """The credentials this gateway takes; ``check`` is what a route asks."""

    def __init__(
        self,
        keys: list[str],
        *,
        admin_token: str | None = None,
        store: KeyStore | None = None,
        protect_ui: bool = False,
    ) -> None:
        self._keys = list(keys)
        self._static_ids = {key: static_key_id(key) for key in keys}
        self.admin_token = admin_token or None
        self.store = store
        self.protect_ui = protect_ui
        if self._keys and not self.admin_token:
            log.warning(
                "api_keys without an admin_token: /fleet, /admin and /debug stay closed "
                "(cortex status and the dashboard cannot read the fleet); set [gateway] "
                "admin_token (or CORTEX_ADMIN_TOKEN) to open them to its holder"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or bool(self.store and self.store.any_keys)

    def check(self, request: Request) -> None:
        """Routes call it: ``AuthGate`` has decided already, so this only makes sure it
        did (a route mounted outside the gate would otherwise be open)."""
        if _SCOPE_KEY not in request.scope:
            raise _refused(_NO_KEY)

    def access(self, path: str) -> Access:
        if path in _PUBLIC:
            return "public"
        if path == "/ui" or path.startswith("/ui/"):
            return "admin" if self.protect_ui else "public"
        if path == "/fleet" or path.startswith(_ADMIN_PREFIXES):
            return "admin"
        return "api"

    def check_admin(self, path: str, headers: Headers) -> Identity:
        supplied = (headers.get("x-api-key"), bearer_token(headers))
        if self.admin_token is not None:
            if any([token_matches(token, [self.admin_token]) for token in supplied]):
                return ADMIN
            raise AuthenticationFailed(
                "This route needs the admin token: 'Authorization: Bearer <admin_token>'.",
                code="invalid_admin_token",
            )
        # An API key never opens an admin route: whoever may generate may not unload
        # the fleet's models or read its keys.
        if self._keys or (self.store is not None and self.store.any_keys):
            raise AuthenticationFailed(
                "This route needs the admin token, and none is set: set [gateway] "
                "admin_token in cortex.toml or CORTEX_ADMIN_TOKEN.",
                code="invalid_admin_token",
            )
        return ADMIN  # no key, no token: open, as on a loopback default

    async def authenticate(self, headers: Headers) -> Identity:
        """The identity of an API request, or ``AuthenticationFailed``."""
        store = self.store
        # OpenAI's SDKs send a Bearer token, Anthropic's x-api-key (or a Bearer token).
        for token in (headers.get("x-api-key"), bearer_token(headers)):
            if not token:
                continue
            if self._keys and token_matches(token, self._keys):
                return Identity(self._static_ids[token])
            # looked up even before this gateway knows keys exist: one made through
            # another gateway a moment ago is this key's, with its limits
            if store is not None and token.startswith(KEY_PREFIX):
                found = await store.lookup(token)
                if found is not None:
                    return Identity(found.id, found)
        if not self._keys and (store is None or not await store.maybe_refresh_any()):
            return ANONYMOUS  # no key anywhere: open, as before keys
        raise _refused(_NO_KEY)


class AuthGate:
    """ASGI middleware: authenticates, takes a virtual key's limits, accounts usage."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        state: GatewayState = scope["app"].state.gateway
        auth = state.keys
        path = scope["path"]
        access = auth.access(path)
        try:
            if access == "public":
                identity = ANONYMOUS
            elif access == "admin":
                identity = auth.check_admin(path, Headers(scope=scope))
            else:
                identity = await auth.authenticate(Headers(scope=scope))
        except CortexError as error:
            await _reply(scope, receive, send, error)
            return
        scope[_SCOPE_KEY] = identity
        token = current_identity.set(identity)
        # the fair queue serves keys in turn (weighted by priority); no key: one tenant
        tenant = current_tenant.set(identity.tenant() if access == "api" else None)
        current = record()
        try:
            if current is None or access != "api":
                await self._app(scope, receive, send)
                return
            await self._limited(state, identity, current, scope, receive, send)
        finally:
            current_tenant.reset(tenant)
            current_identity.reset(token)

    async def _limited(
        self,
        state: GatewayState,
        identity: Identity,
        current: RequestRecord,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        current.key_id = identity.key_id
        release = None
        if identity.key is not None:
            try:
                release = await state.limiter.admit(identity.key)
            except RateLimited as refused:
                state.metrics.rate_limited.labels(identity.key_id, refused.reason).inc()
                log.info("key=%s refused: %s", identity.key_id, refused.reason)
                await _reply(scope, receive, send, refused)
                return
        try:
            await self._app(scope, receive, send)
        finally:
            if release is not None:
                release()
            _account(state, identity, current)


_recounts: set[asyncio.Task[None]] = set()


def _account(state: GatewayState, identity: Identity, done: RequestRecord) -> None:
    """The request's usage, once its response has ended. A client that left mid-answer
    took the neuron's report with it: its request is accounted once the node has said
    what it generated up to the cut (a background task; the response is long gone)."""
    if not done.client_left:
        _add_usage(state, identity, done)
        return
    task = asyncio.create_task(_account_after_cut(state, identity, done))
    _recounts.add(task)
    task.add_done_callback(_recounts.discard)


async def _account_after_cut(state: GatewayState, identity: Identity, done: RequestRecord) -> None:
    ended = time.perf_counter()
    try:
        finished = await state.proxy.finished_counts(done.node, done.request_id)
    except Exception:  # accounting must happen, with what is known, whatever the node does
        log.exception("request %s: no count from node %s", done.request_id, done.node)
        finished = None
    if finished is not None:
        done.apply_report(finished.model_dump())
        meter_late_counts(state.metrics, done)  # Prometheus's token counters, as usage
    _add_usage(state, identity, done, duration_s=ended - done.started)


def _add_usage(
    state: GatewayState, identity: Identity, done: RequestRecord, duration_s: float | None = None
) -> None:
    tokens = done.prompt_tokens + done.completion_tokens
    if identity.key is not None:
        state.limiter.spend(identity.key_id, tokens)
    state.usage.add(
        identity.key_id,
        done.model or "-",
        input_tokens=done.prompt_tokens,
        cached_tokens=done.cached_tokens,
        output_tokens=done.completion_tokens,
        duration_s=time.perf_counter() - done.started if duration_s is None else duration_s,
        error=not 0 < done.status < 400,
    )


async def _reply(scope: Scope, receive: Receive, send: Send, error: CortexError) -> None:
    """An error before routing, in the dialect of the path (as the route would answer)."""
    request = Request(scope)
    response = JSONResponse(
        error_body(request, error),
        status_code=error_status(request, error),
        headers=error_headers(error),
    )
    await response(scope, receive, send)
