"""Where cortex's gateway spends its CPU per request, under the gateway benchmark's load.

Starts the fast upstream and ``cortex serve`` (the real CLI, run under cProfile with a
CPU-time clock, so time the gateway spends preempted by the upstream on a shared core is
not counted), sends ``--requests`` chat completions at ``--rate`` from this process, stops
the gateway and prints its busiest functions. cProfile inflates every Python call, so read
the shares, not the absolute times; ``ncalls`` counts each resumption of a coroutine.

Usage: ``.venv/bin/python bench/gateway_profile.py [--stream] [--rate 100] [--requests 2000]``
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import secrets
import sys
import tempfile
from pathlib import Path

from _fast_upstream import ANSWER, MODEL_ID, start_fast_upstream
from _gateways import start_cortex
from _traffic import chat_payload, fixed_rate, response_check, run

# Runs cortex's CLI under cProfile: ``python -c PROFILED OUT serve ...``.
PROFILED = (
    "import cProfile, sys, time\n"
    "from cortex.cli.main import main\n"
    "profile = cProfile.Profile(time.process_time)\n"
    "profile.enable()\n"
    "try:\n"
    "    main(sys.argv[2:])\n"
    "finally:\n"
    "    profile.disable()\n"
    "    profile.dump_stats(sys.argv[1])\n"
)
STARTUP_LEFT_OUT = r"^(?!.*(importlib|<module>|builtins\.exec))"  # pstats restriction regex


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="requests/s")
    parser.add_argument("--requests", type=int, default=2000, help="requests sent")
    parser.add_argument("--stream", action="store_true", help="streaming requests")
    parser.add_argument("--top", type=int, default=45, help="functions printed")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key (or tottime)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    out = log_dir / "cortex.prof"
    key = "sk-bench-" + secrets.token_hex(24)
    expected = b"help you today?" if args.stream else ANSWER.encode()
    with contextlib.ExitStack() as stack:
        upstream = start_fast_upstream(stack, log_dir)
        command = [sys.executable, "-c", PROFILED, str(out)]
        gateway = start_cortex(stack, log_dir, upstream, key, command=command)
        url = f"{gateway.url}/v1/chat/completions"
        payload = chat_payload(MODEL_ID, args.stream)
        check = response_check(args.stream, expected)
        result = run(fixed_rate(url, key, payload, check, args.rate, args.requests, warmup=0))
        gateway.stop()  # SIGTERM: the CLI returns and the profile is written
    if result.errors or not out.exists():
        print(f"failed: {result.error_examples}; logs in {log_dir}")
        return 1
    print(f"{args.requests} {'streaming' if args.stream else 'non-streaming'} requests")
    stats = pstats.Stats(str(out)).strip_dirs().sort_stats(args.sort)
    stats.print_stats(STARTUP_LEFT_OUT, args.top)
    print(f"profile: {out} (open with python -m pstats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
