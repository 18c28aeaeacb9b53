"""``neuron serve``: the per-host daemon's command line."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from pydantic import ValidationError

from cortex.config import ConfigError, format_validation_error, parse_host_port
from cortex.http_server import serve
from cortex.logs import setup_logging
from cortex.neuron.settings import NeuronSettings
from cortex.spec import ModelSpec


def _parse_load(text: str) -> ModelSpec:
    model_id, sep, source = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ID=SOURCE, got '{text}'")
    try:
        return ModelSpec(id=model_id, source=source)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuron", description="cortex node daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve this host's devices over HTTP")
    serve.add_argument("--config", type=Path, help="neuron.toml (flags override it)")
    serve.add_argument("--listen", default=None, help="HOST:PORT to listen on")
    serve.add_argument("--name", default=None, help="node name (default: the host name)")
    serve.add_argument(
        "--memory-budget-mb", type=int, default=None, help="cap on what models may use per device"
    )
    serve.add_argument(
        "--load",
        action="append",
        type=_parse_load,
        default=[],
        metavar="ID=SOURCE",
        help="load a model at start-up (repeatable)",
    )
    serve.add_argument(
        "--token",
        default=None,
        help="the token every route but /health needs (visible in ps: prefer --token-file "
        "or $NEURON_TOKEN)",
    )
    serve.add_argument(
        "--token-file", type=Path, default=None, help="read the token from this file"
    )
    serve.add_argument(
        "--enable-fault-injection", action="store_true", help="mount /debug/fault (testing only)"
    )
    serve.add_argument(
        "--step-deadline-s",
        type=float,
        default=None,
        help="a decode step longer than this is a hang; the model reloads (default 60)",
    )
    serve.add_argument(
        "--header-timeout-s",
        type=float,
        default=None,
        help="a request's headers must arrive within this, else a 408 (default 30)",
    )
    serve.add_argument(
        "--cpu-tp-ranks",
        type=int,
        default=1,
        help="let tensor_parallel use N CPU ranks over gloo (testing)",
    )
    serve.add_argument(
        "--kv-cache-dir",
        type=Path,
        default=None,
        help="keep KV cache prefixes on disk here, across unloads and restarts (default: none)",
    )
    serve.add_argument(
        "--kv-host-cache-mb",
        type=int,
        default=None,
        help="host RAM for all models' KV host tiers together (default: a tenth of the "
        "RAM available at start)",
    )
    serve.add_argument("--log-format", choices=["auto", "json", "text"], default="auto")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file, else $NEURON_TOKEN (neuron.toml's ``token`` below all)."""
    if args.token:
        return args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc}") from None
        if not token:
            raise ConfigError(f"--token-file: {args.token_file} is empty")
        return token
    return os.environ.get("NEURON_TOKEN") or None


def load_settings(args: argparse.Namespace) -> NeuronSettings:
    """``neuron.toml`` (when given) with the command-line flags on top."""
    fields: dict = {}
    if args.config is not None:
        try:
            fields = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
    flags = {
        "listen": args.listen,
        "name": args.name,
        "memory_budget_mb": args.memory_budget_mb,
        "token": _token(args),
        "enable_fault_injection": args.enable_fault_injection,
        "step_deadline_s": args.step_deadline_s,
        "header_timeout_s": args.header_timeout_s,
        "cpu_tp_ranks": args.cpu_tp_ranks,
        "kv_cache_dir": args.kv_cache_dir,
        "kv_host_cache_mb": args.kv_host_cache_mb,
    }
    fields.update({key: value for key, value in flags.items() if value is not None})
    fields["load"] = [*fields.get("load", []), *args.load]
    try:
        return NeuronSettings.model_validate(fields)
    except ValidationError as exc:
        where = args.config or "command line"
        problems = "\n".join(f"  {line}" for line in format_validation_error(exc))
        raise ConfigError(f"{where}: invalid settings:\n{problems}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    try:
        settings = load_settings(args)
        host, port = parse_host_port(settings.listen)
    except (ValueError, ConfigError) as exc:
        print(f"neuron: {exc}", file=sys.stderr)
        return 2
    from cortex.neuron.app import create_app

    serve(
        create_app(settings),
        host,
        port,
        header_timeout_s=settings.header_timeout_s,
        graceful_s=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
