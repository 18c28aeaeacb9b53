"""How the gateway talks to one neuron: the ``NeuronClient`` protocol, and its HTTP
implementation over the gateway's pooled session.

Everything in the gateway holds clients through the protocol and gets them from
``create_app``'s client factory, so tests can pass in-memory neurons instead.
Answers come back as ``protocol.neuron`` types; an answer that is not one is an
``NeuronAnswerInvalid`` naming the field, never a ``KeyError`` later.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ValidationError

from cortex.config import NeuronEndpoint
from cortex.errors import CortexError, InsufficientMemory, UpstreamError
from cortex.protocol.errors import error_from_openai_body
from cortex.protocol.neuron import (
    EstimateAnswer,
    FinishedRequest,
    LoadAnswer,
    MemoryRefusal,
    NodeStatus,
    UnloadAnswer,
    UnloadRequest,
    incompatibility,
)
from cortex.protocol.parsing import describe_validation_error
from cortex.spec import ModelSpec

M = TypeVar("M", bound=BaseModel)


class NeuronUnreachable(UpstreamError):
    """The neuron refused or dropped the connection before answering."""


class NeuronAnswerInvalid(UpstreamError):
    """The neuron answered with a body that is not what the contract says."""


class NeuronIncompatible(UpstreamError):
    """The neuron speaks another major version of the contract (or none)."""

    def __init__(self, message: str, contract: str | None) -> None:
        super().__init__(message, code="neuron_incompatible")
        self.contract = contract


class StreamBody(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class UpstreamResponse(Protocol):
    """What the proxy reads of an open response (``aiohttp.ClientResponse`` is one)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> StreamBody: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class NeuronClient(Protocol):
    """One neuron, as the gateway uses it. Errors are ``CortexError``s: the neuron's own
    (as it sent them), ``NeuronUnreachable``, ``NeuronAnswerInvalid``, ``NeuronIncompatible``."""

    async def status(self, timeout_s: float) -> NodeStatus: ...

    async def load(
        self, spec: ModelSpec, timeout_s: float = 1800, devices: Sequence[str] = ()
    ) -> LoadAnswer:
        """The model once ready; a load of it already under way on the node is joined
        (``outcome``). ``InsufficientMemory`` when the node refuses: it does not fit now.
        ``devices``: where placement put a multi-device model, main first (contract 1.4)."""
        ...

    async def estimate(self, spec: ModelSpec, timeout_s: float = 60) -> EstimateAnswer:
        """The memory a load of ``spec`` would take, read from the model's files."""
        ...

    async def unload(self, model_id: str, timeout_s: float = 120) -> UnloadAnswer: ...

    async def finished(self, request_id: str, timeout_s: float = 5) -> FinishedRequest | None:
        """A finished generation's counts (contract 1.3); None while it runs, once the
        node has forgotten it, or from an older node."""
        ...

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        """POST and return the response once its headers arrive; the caller closes it."""
        ...


# Builds the client for each configured neuron; ``create_app`` takes one (tests: fakes).
ClientFactory = Callable[[NeuronEndpoint], NeuronClient]


class HttpNeuronClient:
    """``NeuronClient`` over HTTP."""

    def __init__(self, endpoint: NeuronEndpoint, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self._session = session

    def _admin_headers(self) -> dict[str, str]:
        token = self.endpoint.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def status(self, timeout_s: float) -> NodeStatus:
        body = await self._json(
            "GET", "/status", headers=self._admin_headers(), timeout_s=timeout_s
        )
        if not isinstance(body, dict):
            raise self._invalid("/status", "not a JSON object")
        # The version first: in another major, the rest may not parse, or mean something else.
        contract = body.get("contract") if isinstance(body.get("contract"), str) else None
        reason = incompatibility(contract)
        if reason is not None:
            raise NeuronIncompatible(reason, contract)
        return self._parse(NodeStatus, "/status", body)

    async def finished(self, request_id: str, timeout_s: float = 5) -> FinishedRequest | None:
        path = f"/requests/{quote(request_id, safe='')}"
        try:
            body = await self._json("GET", path, headers=self._admin_headers(), timeout_s=timeout_s)
        except CortexError as error:
            if error.status == 404:
                return None
            raise
        return self._parse(FinishedRequest, "/requests", body)

    async def load(
        self, spec: ModelSpec, timeout_s: float = 1800, devices: Sequence[str] = ()
    ) -> LoadAnswer:
        # a query, so that a 1.3 neuron (which knows no such key) still loads, picking
        path = "/models/load" + (f"?devices={','.join(devices)}" if devices else "")
        body = await self._admin(path, spec, timeout_s)
        return self._parse(LoadAnswer, "/models/load", body)

    async def estimate(self, spec: ModelSpec, timeout_s: float = 60) -> EstimateAnswer:
        body = await self._admin("/models/estimate", spec, timeout_s)
        return self._parse(EstimateAnswer, "/models/estimate", body)

    async def unload(self, model_id: str, timeout_s: float = 120) -> UnloadAnswer:
        body = await self._admin("/models/unload", UnloadRequest(id=model_id), timeout_s)
        return self._parse(UnloadAnswer, "/models/unload", body)

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        try:
            return await self._session.post(
                self.endpoint.endpoint + path,
                data=body,
                # the neuron's token on every route, inference included
                headers={"Content-Type": "application/json", **self._admin_headers(), **headers},
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NeuronUnreachable(
                f"node '{self.endpoint.name}' is unreachable: {exc.__class__.__name__}"
            ) from exc

    def _parse(self, answer_type: type[M], path: str, body: Any) -> M:
        try:
            return answer_type.model_validate(body)
        except ValidationError as exc:
            problems, _ = describe_validation_error(exc)
            raise self._invalid(path, problems) from exc

    def _invalid(self, path: str, problems: str) -> NeuronAnswerInvalid:
        return NeuronAnswerInvalid(
            f"node '{self.endpoint.name}' answered {path} with an invalid body: {problems}",
            code="neuron_answer_invalid",
        )

    async def _admin(self, path: str, body: BaseModel, timeout_s: float) -> Any:
        # Only the fields set away from their defaults: an older neuron refuses a spec key
        # it does not know (ModelSpec forbids unknown keys), and a key at its default means
        # the same to it left out, so a mixed-version fleet loads whatever it can.
        return await self._json(
            "POST",
            path,
            json=body.model_dump(mode="json", exclude_defaults=True),
            headers=self._admin_headers(),
            timeout_s=timeout_s,
        )

    async def _json(self, method: str, path: str, *, timeout_s: float, **kwargs: Any) -> Any:
        try:
            async with self._session.request(
                method,
                self.endpoint.endpoint + path,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                **kwargs,
            ) as response:
                raw = await response.read()
                if response.status == 401:  # the operator's to fix, not the client's key
                    raise NeuronUnreachable(
                        f"node '{self.endpoint.name}' refused the gateway's token for it: "
                        "check `token` under its [[neurons]] entry in cortex.toml"
                    )
                if response.status == 507:
                    raise memory_refusal(raw)
                if response.status != 200:
                    raise error_from_openai_body(
                        response.status, raw, response.headers.get("Retry-After")
                    )
        except CortexError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NeuronUnreachable(
                f"node '{self.endpoint.name}' did not answer {path}: {exc.__class__.__name__} {exc}"
            ) from exc
        try:
            return json.loads(raw)
        except ValueError:
            raise self._invalid(path, "not JSON") from None


def memory_refusal(raw: bytes) -> InsufficientMemory:
    """A neuron's 507 as the typed error the scheduler re-plans on (the numbers too,
    where the neuron sent them), never a relayed status passed on to the client."""
    try:
        detail = json.loads(raw).get("error")
        refusal = MemoryRefusal.model_validate(detail)
    except (ValueError, AttributeError, ValidationError):
        refusal = MemoryRefusal()
    return InsufficientMemory(
        refusal.message or "the node has no memory left for this model",
        need_mb=refusal.need_mb,
        free_mb=refusal.free_mb,
        device=refusal.device,
    )
