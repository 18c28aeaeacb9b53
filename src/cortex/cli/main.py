"""``cortex``: run the gateway, and look at or drive a running one."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from rich.console import Console

from cortex.cli.client import admin_headers, call
from cortex.cli.keys import add_parsers as add_key_parsers
from cortex.config import (
    ConfigError,
    GatewayConfig,
    ModelsConfig,
    NeuronEndpoint,
    load_gateway_config,
    load_models_config,
    parse_host_port,
)
from cortex.protocol.fleet import FleetView, ModelListing
from cortex.protocol.parsing import describe_validation_error
from cortex.spec import BUNDLED_MODEL_ID, BUNDLED_MODEL_SOURCE, ModelSpec

DEFAULT_GATEWAY = "http://127.0.0.1:31313"
M = TypeVar("M", bound=BaseModel)


def embedded_models() -> ModelsConfig:
    """The bundled model, pinned, answering to Claude Code's model names too."""
    return ModelsConfig(
        models=[
            ModelSpec(
                id=BUNDLED_MODEL_ID,
                source=BUNDLED_MODEL_SOURCE,
                context_length=8192,
                max_batch=4,
                pinned=True,
                aliases=["claude-*"],
            )
        ]
    )


def _load_configs(args: argparse.Namespace) -> tuple[GatewayConfig, ModelsConfig, bool]:
    """The configs to run, and whether this is the embedded default."""
    config_path = args.config or (Path("cortex.toml") if Path("cortex.toml").exists() else None)
    if config_path is None:
        config, models, embedded = GatewayConfig(), embedded_models(), True
    else:
        config = load_gateway_config(Path(config_path))
        models_path = args.models or Path(config_path).with_name("models.toml")
        models = (
            load_models_config(Path(models_path))
            if args.models or Path(models_path).exists()
            else ModelsConfig()
        )
        embedded = False
    if args.models and embedded:
        models = load_models_config(Path(args.models))
    overrides = {}
    for key in ("listen", "metrics_listen", "ollama_listen"):
        value = getattr(args, key)
        if value:
            parse_host_port(value)
            overrides[key] = value
    if overrides:
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update=overrides)})
    return config, models, embedded


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from cortex.gateway.app import SHUTDOWN_FLUSH_S, admin_token, begin_shutdown, create_app
    from cortex.gateway.local_neuron import LocalNeuron
    from cortex.gateway.metrics_server import start_metrics_server
    from cortex.http_server import serve
    from cortex.logs import setup_logging

    setup_logging(args.log_format)
    console = Console(stderr=True)
    try:
        config, models, embedded = _load_configs(args)
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]cortex: {exc}[/red]")
        return 2
    # SIGTERM unwinds like Ctrl-C, so the finally below always stops the child neuron.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    local = None
    metrics = None
    try:
        if embedded:
            console.print(
                "cortex: no cortex.toml, running the embedded default "
                f"(local neuron serving {BUNDLED_MODEL_ID})"
            )
            local = LocalNeuron("local", [])
            local.wait_healthy()
            local.supervise()  # restarted with backoff if it exits or stops answering
            config = config.model_copy(
                update={
                    "neurons": [
                        NeuronEndpoint(name="local", endpoint=local.endpoint, token=local.token)
                    ]
                }
            )
        registry = CollectorRegistry()
        supervised = {"local": lambda: local.restarts} if local is not None else None
        app = create_app(config, models, registry=registry, supervised=supervised)
        # protect_ui: the scrapes need the admin token too
        token = admin_token(config) if config.gateway.protect_ui else None
        metrics_at = parse_host_port(config.gateway.metrics_listen)
        metrics = start_metrics_server(*metrics_at, registry, token)
        host, port = parse_host_port(config.gateway.listen)
        gateway = config.gateway
        tls = (gateway.tls_cert, gateway.tls_key) if gateway.tls_cert and gateway.tls_key else None
        scheme = "https" if tls else "http"
        console.print(
            f"cortex: serving on {scheme}://{host}:{port} "
            f"(metrics on {config.gateway.metrics_listen})"
        )
        also = [parse_host_port(gateway.ollama_listen)] if gateway.ollama_listen else []
        if gateway.ollama_listen:
            console.print(f"cortex: and for Ollama clients on {scheme}://{gateway.ollama_listen}")
        serve(
            app,
            host,
            port,
            header_timeout_s=gateway.header_timeout_s,
            graceful_s=gateway.shutdown_grace_s + SHUTDOWN_FLUSH_S,
            on_shutdown=lambda: begin_shutdown(app),
            also=also,
            tls=tls,
        )
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        console.print(f"[red]cortex: {exc}[/red]")
        return 1
    finally:
        if local is not None:
            local.stop()
        if metrics is not None:
            metrics.shutdown()
    return 0


def _call(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = True, **kwargs: Any
) -> Any:
    """``admin``: an admin route, which takes the admin token (``cli.client``)."""
    return call(args, method, path, admin=admin, **kwargs)


class InvalidAnswer(Exception):
    """The gateway answered with a body that is not its ``protocol.fleet`` type."""


def _parse(answer_type: type[M], path: str, body: Any) -> M:
    try:
        return answer_type.model_validate(body)
    except ValidationError as exc:
        problems, _ = describe_validation_error(exc)
        raise InvalidAnswer(
            f"the gateway answered {path} with an invalid body: {problems}"
        ) from None


def _call_typed(
    args: argparse.Namespace, answer_type: type[M], path: str, *, admin: bool = True
) -> tuple[M, Any]:
    """``GET path`` parsed as ``answer_type``, and the JSON as it came (for ``--json``)."""
    body = _call(args, "GET", path, admin=admin)
    try:
        return _parse(answer_type, path, body), body
    except InvalidAnswer as exc:
        raise SystemExit(f"cortex: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from cortex.cli.views import render_fleet

    if getattr(args, "watch", False):
        return _watch_status(args)
    fleet, raw = _call_typed(args, FleetView, "/fleet")
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        render_fleet(fleet, Console())
    return 0


def _watch_status(args: argparse.Namespace) -> int:
    """``cortex status --watch``: the fleet view, refreshed in place until Ctrl-C. A
    gateway that stops answering is shown as such (with its last answer) and retried."""
    from rich.live import Live

    from cortex.cli.views import watch_view

    interval = max(0.2, args.interval)
    url = args.gateway.rstrip("/") + "/fleet"
    fleet: FleetView | None = None
    updated_at: float | None = None
    # SIGTERM ends the watch like Ctrl-C: the last frame stays on screen, exit status 0.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with Live(console=Console(), auto_refresh=False, redirect_stderr=False) as live:
            while True:
                error = None
                try:
                    headers = admin_headers(args)
                    response = httpx.get(url, headers=headers, timeout=max(2, interval))
                    if response.status_code == 200:
                        fleet = _parse(FleetView, "/fleet", response.json())
                        updated_at = time.time()
                    else:
                        error = f"{response.status_code}: {_error_message(response)}"
                except InvalidAnswer as exc:
                    error = str(exc)
                except (httpx.HTTPError, ValueError) as exc:
                    error = str(exc) or type(exc).__name__
                frame = watch_view(
                    fleet,
                    gateway=args.gateway,
                    interval_s=interval,
                    updated_at=updated_at,
                    error=error,
                )
                live.update(frame, refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def cmd_models(args: argparse.Namespace) -> int:
    from cortex.cli.views import render_models

    models, raw = _call_typed(args, ModelListing, "/v1/models", admin=False)  # an API route
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        render_models(models, Console())
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    body = {"model": args.model, **({"node": args.node} if args.node else {})}
    with Console(stderr=True).status(f"loading {args.model}..."):
        result = _call(args, "POST", "/fleet/load", json=body)
    print(f"{result['model']} loaded on {result['node']}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    body = {"model": args.model, **({"node": args.node} if args.node else {})}
    result = _call(args, "POST", "/fleet/unload", json=body)
    print(f"{result['model']} unloaded from {', '.join(result['nodes'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortex", description="one API over a fleet of LLM hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (with no config: the embedded default)")
    serve.add_argument("--config", type=Path, help="cortex.toml (default: ./cortex.toml if any)")
    serve.add_argument("--models", type=Path, help="models.toml (default: beside the config)")
    serve.add_argument("--listen", help="HOST:PORT for the API (overrides the config)")
    serve.add_argument("--metrics-listen", help="HOST:PORT for /metrics (overrides the config)")
    serve.add_argument(
        "--ollama-listen", help="HOST:PORT for Ollama clients too, e.g. 127.0.0.1:11434"
    )
    serve.add_argument("--log-format", choices=["auto", "json", "text"], default="auto")
    serve.set_defaults(run=cmd_serve)
    gateway_default = os.environ.get("CORTEX_GATEWAY", DEFAULT_GATEWAY)
    for name, run, text in (
        ("status", cmd_status, "the fleet: nodes, devices, models and their state"),
        ("models", cmd_models, "the merged model catalogue"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--gateway", default=gateway_default, help="gateway URL")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(run=run)
        if name == "status":
            cmd.add_argument("--admin-token", help="the admin token ($CORTEX_ADMIN_TOKEN)")
            cmd.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
            cmd.add_argument(
                "--interval", type=float, default=2.0, help="seconds between refreshes (--watch)"
            )
    for name, run, text in (
        ("load", cmd_load, "place and load a model"),
        ("unload", cmd_unload, "unload a model"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("model")
        cmd.add_argument("--node", help="only on this node")
        cmd.add_argument("--gateway", default=gateway_default, help="gateway URL")
        cmd.add_argument("--admin-token", help="the gateway's admin token ($CORTEX_ADMIN_TOKEN)")
        cmd.set_defaults(run=run)
    add_key_parsers(sub, gateway_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
