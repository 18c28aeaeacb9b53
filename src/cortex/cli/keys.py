"""``cortex keys create|list|show|update|revoke`` and ``cortex usage``: the admin API
(``/admin/keys``, ``/admin/usage``) from a terminal, a rich table for people and
``--json`` for scripts. ``keys create`` prints the new key alone on its last line."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from cortex.cli.client import call
from cortex.protocol.admin import KeyCreated, KeyList, KeyView, UsageReport


def add_parsers(sub: Any, gateway_default: str) -> None:
    """The ``keys`` and ``usage`` commands, on the main parser's subcommands."""

    def common(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--gateway", default=gateway_default, help="gateway URL")
        cmd.add_argument("--admin-token", help="the gateway's admin token ($CORTEX_ADMIN_TOKEN)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    keys = sub.add_parser("keys", help="virtual API keys: create, list, show, update, revoke")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once (last line)")
    create.add_argument("--name", required=True)
    _limit_options(create)
    common(create)
    create.set_defaults(run=cmd_create)
    listed = actions.add_parser("list", help="every key (never the secrets)")
    common(listed)
    listed.set_defaults(run=cmd_list)
    for name, run, text in (("show", cmd_show, "one key"), ("revoke", cmd_revoke, "revoke a key")):
        cmd = actions.add_parser(name, help=text)
        cmd.add_argument("id", help="the key's id (key_...)")
        common(cmd)
        cmd.set_defaults(run=run)
    update = actions.add_parser("update", help="change a key's name or limits")
    update.add_argument("id", help="the key's id (key_...)")
    update.add_argument("--name")
    _limit_options(update, clearable=True)
    common(update)
    update.set_defaults(run=cmd_update)

    usage = sub.add_parser("usage", help="tokens and requests per key and model")
    usage.add_argument("--key", help="one key's id")
    usage.add_argument("--since", help="first day counted, YYYY-MM-DD (UTC)")
    usage.add_argument("--model", help="one model")
    usage.add_argument("--by-day", action="store_true", help="a row per day")
    common(usage)
    usage.set_defaults(run=cmd_usage)


def _limit_options(cmd: argparse.ArgumentParser, *, clearable: bool = False) -> None:
    hint = " (0 or 'none' clears it)" if clearable else ""
    cmd.add_argument("--models", help="comma-separated globs of the models it may use" + hint)
    for flag, text in (
        ("--rpm", "requests per minute"),
        ("--tpm", "tokens per minute"),
        ("--max-parallel", "requests at once"),
        ("--budget-tokens", "tokens per budget period"),
    ):
        cmd.add_argument(flag, help=text + hint)
    cmd.add_argument("--budget-period", choices=["day", "month"])
    cmd.add_argument("--priority", choices=["high", "normal", "low"])
    cmd.add_argument("--expires", help="YYYY-MM-DD or an RFC 3339 time (UTC unless given)")


def _limits(args: argparse.Namespace, *, clearable: bool) -> dict[str, Any]:
    """The limits given on the command line, as the admin API's fields."""
    body: dict[str, Any] = {}
    if args.models is not None:
        cleared = clearable and args.models.strip().lower() in ("", "none", "0")
        body["models"] = [] if cleared else [m.strip() for m in args.models.split(",")]
    for name in ("rpm", "tpm", "max_parallel", "budget_tokens"):
        value = getattr(args, name)
        if value is None:
            continue
        if clearable and value.strip().lower() in ("0", "none"):
            body[name] = None
            continue
        try:
            body[name] = int(value)
        except ValueError:
            raise SystemExit(f"cortex: --{name.replace('_', '-')}: not a number: {value}") from None
    if args.budget_period:
        body["budget_period"] = args.budget_period
    if args.priority:
        body["priority"] = args.priority
    if args.expires:
        body["expires_at"] = _expiry(args.expires)
    return body


def _expiry(text: str) -> str:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise SystemExit(f"cortex: --expires: expected YYYY-MM-DD, got {text!r}") from None


def _show(args: argparse.Namespace, raw: Any, view: KeyView) -> None:
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        Console().print(_keys_table([view]))


def cmd_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, **_limits(args, clearable=False)}
    raw = call(args, "POST", "/admin/keys", json=body)
    created = KeyCreated.model_validate(raw)
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        Console(stderr=True).print(_keys_table([created]))
        Console(stderr=True).print("The key is shown once; keep it now:")
    print(created.key)  # alone on the last line, for scripts
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    raw = call(args, "GET", "/admin/keys")
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        Console().print(_keys_table(KeyList.model_validate(raw).keys))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    raw = call(args, "GET", f"/admin/keys/{args.id}")
    _show(args, raw, KeyView.model_validate(raw))
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    body = _limits(args, clearable=True)
    if args.name:
        body["name"] = args.name
    raw = call(args, "PATCH", f"/admin/keys/{args.id}", json=body)
    _show(args, raw, KeyView.model_validate(raw))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    raw = call(args, "DELETE", f"/admin/keys/{args.id}")
    _show(args, raw, KeyView.model_validate(raw))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    params = {"key": args.key, "since": args.since, "model": args.model}
    params = {name: value for name, value in params.items() if value}
    if args.by_day:
        params["by"] = "day"
    raw = call(args, "GET", "/admin/usage", params=params)
    if args.json:
        print(json.dumps(raw, indent=2))
    else:
        Console().print(_usage_table(UsageReport.model_validate(raw)))
    return 0


def _keys_table(keys: list[KeyView]) -> Table:
    table = Table(title="keys", title_justify="left")
    for column in ("id", "name", "prefix", "models", "rpm", "tpm", "parallel", "budget",
                   "priority", "expires", "state"):  # fmt: skip
        table.add_column(column)
    for key in keys:
        budget = f"{key.budget_tokens}/{key.budget_period}" if key.budget_tokens else "-"
        state = "revoked" if key.revoked_at else "active"
        if key.expires_at and key.expires_at <= datetime.now(UTC) and not key.revoked_at:
            state = "expired"
        table.add_row(
            key.id, key.name, key.prefix + "…", ",".join(key.models) or "*",
            _or_dash(key.rpm), _or_dash(key.tpm), _or_dash(key.max_parallel), budget,
            key.priority, key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "-",
            state,
        )  # fmt: skip
    return table


def _usage_table(report: UsageReport) -> Table:
    by_day = any(row.day for row in report.usage)
    title = f"usage since {report.since}" if report.since else "usage"
    table = Table(title=title, title_justify="left")
    columns = ["key", "name", "model"] + (["day"] if by_day else [])
    columns += ["requests", "errors", "input", "cached", "output", "seconds"]
    for column in columns:
        numeric = column not in ("key", "name", "model", "day")
        table.add_column(column, justify="right" if numeric else "left")
    for row in report.usage:
        cells = [row.key_id, row.key_name or "-", row.model] + ([row.day or ""] if by_day else [])
        counts = (row.requests, row.errors, row.input_tokens, row.cached_tokens, row.output_tokens)
        cells += [*map(str, counts), f"{row.duration_s:.1f}"]
        table.add_row(*cells)
    return table


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
