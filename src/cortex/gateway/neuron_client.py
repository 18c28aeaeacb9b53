"""Typed client for one neuron's HTTP API, over the gateway's pooled session."""

from __future__ import annotations

from typing import Any

import aiohttp

from cortex.config import NeuronEndpoint
from cortex.errors import CortexError, UpstreamError
from cortex.protocol.errors import error_from_openai_body


class NeuronUnreachable(UpstreamError):
    """The neuron refused or dropped the connection before answering."""


class NeuronClient:
    def __init__(self, endpoint: NeuronEndpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self._session = session

    def _admin_headers(self) -> dict[str, str]:
        token = self.endpoint.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def status(self, timeout_s: float) -> dict[str, Any]:
        return await self._json("GET", "/status", timeout_s=timeout_s)

    async def load(self, spec: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
        return await self._json(
            "POST", "/models/load", json=spec, headers=self._admin_headers(), timeout_s=timeout_s
        )

    async def estimate(self, spec: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        """The memory a load of ``spec`` would take, read from the model's files."""
        return await self._json(
            "POST",
            "/models/estimate",
            json=spec,
            headers=self._admin_headers(),
            timeout_s=timeout_s,
        )

    async def unload(self, model_id: str, timeout_s: float = 120) -> dict[str, Any]:
        return await self._json(
            "POST",
            "/models/unload",
            json={"id": model_id},
            headers=self._admin_headers(),
            timeout_s=timeout_s,
        )

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """POST and return the response once its headers arrive; the caller closes it."""
        try:
            return await self._session.post(
                self.endpoint.endpoint + path,
                data=body,
                headers={"Content-Type": "application/json", **headers},
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NeuronUnreachable(
                f"node '{self.endpoint.name}' is unreachable: {exc.__class__.__name__}"
            ) from exc

    async def _json(
        self, method: str, path: str, *, timeout_s: float, **kwargs: Any
    ) -> dict[str, Any]:
        try:
            async with self._session.request(
                method,
                self.endpoint.endpoint + path,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                **kwargs,
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    raise error_from_openai_body(
                        response.status, raw, response.headers.get("Retry-After")
                    )
                return await response.json(content_type=None)
        except CortexError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise NeuronUnreachable(
                f"node '{self.endpoint.name}' did not answer {path}: {exc.__class__.__name__} {exc}"
            ) from exc
