"""The CLI's HTTP calls to a gateway, with the credential each route takes: the admin
token on admin routes (``--admin-token`` or ``$CORTEX_ADMIN_TOKEN``; a gateway with
no key at all needs none), the API key (``$CORTEX_API_KEY``) on API routes."""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx


def admin_headers(args: argparse.Namespace | None = None) -> dict[str, str]:
    token = getattr(args, "admin_token", None) or os.environ.get("CORTEX_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def api_headers() -> dict[str, str]:
    key = os.environ.get("CORTEX_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def call(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = True, **kwargs: Any
) -> Any:
    """``method path`` on ``args.gateway``; the JSON answer, or ``SystemExit`` with the
    gateway's message on any status but 2xx."""
    url = args.gateway.rstrip("/") + path
    headers = admin_headers(args) if admin else api_headers()
    try:
        response = httpx.request(method, url, headers=headers, timeout=1800, **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cortex: cannot reach the gateway at {args.gateway}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if not 200 <= response.status_code < 300:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message", response.text) if isinstance(error, dict) else response.text
        raise SystemExit(f"cortex: {response.status_code}: {message}")
    return body
