"""The gateway's typed application state, built once in ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from cortex.config import GatewayConfig
from cortex.gateway.auth import ApiKeys
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.database import Database
from cortex.gateway.fleet import Fleet
from cortex.gateway.limits import Limiter
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.proxy import Proxy
from cortex.gateway.response_store import ResponseStore
from cortex.gateway.scheduler import Scheduler
from cortex.gateway.stats import RecentRequests
from cortex.gateway.usage import UsageLedger


@dataclass
class GatewayState:
    config: GatewayConfig
    fleet: Fleet
    catalogue: Catalogue
    scheduler: Scheduler
    proxy: Proxy
    keys: ApiKeys
    metrics: GatewayMetrics
    recent: RecentRequests
    database: Database
    limiter: Limiter  # virtual keys' limits
    usage: UsageLedger  # per key, model and day
    responses: ResponseStore  # the Responses API's stored responses


def state_of(request: Request) -> GatewayState:
    return request.app.state.gateway
