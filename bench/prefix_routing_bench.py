"""Whether follow-ups land on the node that holds their conversation's prefix.

Two neurons serve the bundled SmolLM2-135M (as ``smollm2``) behind one gateway (poll
interval 0.5 s). K conversations (default 8), each with the same short system prompt
and a question of its own, take 3 turns, greedy, 8 new tokens a turn, in two runs:

- ``sequential``: one request at a time, the conversations taking turns;
- ``concurrent``: each round, every conversation's next turn at once.

Between turns 2 and 3 the gateway is restarted (a new process: what it remembered of
where it sent what is gone), so turn 3 is routed by the neurons' reported digests alone.

Printed per run: where the first turns went; the share of follow-ups (turns 2 and 3)
that landed on the node that served the conversation's previous turn, for turn 2 and
for turn 3 (after the restart), against the 50 % that routing blind to prefixes gets
by chance over two nodes; and the share of follow-up prompt tokens served from the
engine's cache. Target (issue 15): >= 90 % of follow-ups land where their prefix is.

Usage: ``.venv/bin/python bench/prefix_routing_bench.py [--conversations K]``
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _config import MODEL_SOURCE
from _procs import Server, free_port

MODEL = "smollm2"
TOPICS = [
    "rivers", "mountains", "the sea", "deserts", "forests", "cities", "trains", "bread",
    "bees", "glaciers", "volcanoes", "lighthouses", "libraries", "orchards", "bridges", "owls",
]  # fmt: skip
SYSTEM = "You are a helpful assistant. Answer briefly."
FOLLOW_UPS = ["Tell me one more thing about that.", "And why does that matter?"]


@dataclass
class Conversation:
    topic: str
    messages: list[dict[str, str]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # who served each turn
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messages = [{"role": "system", "content": SYSTEM}]


def start_neuron(stack: contextlib.ExitStack, log_dir: Path, name: str) -> Server:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "neuron"), "serve", "--name", name]
    argv += ["--listen", f"127.0.0.1:{port}", "--load", f"{MODEL}={MODEL_SOURCE}"]
    server = Server(f"neuron-{name}", argv, port, log_dir)
    stack.callback(server.stop)
    server.wait_until(
        lambda c: any(m["state"] == "ready" for m in c.get("/status").json()["models"])
    )
    return server


def start_gateway(log_dir: Path, neurons: dict[str, Server], run: int) -> Server:
    port, metrics_port = free_port(), free_port()
    config = log_dir / f"cortex-{run}.toml"
    text = "[gateway]\npoll_interval_s = 0.5\n"
    for name, neuron in neurons.items():
        text += f'\n[[neurons]]\nname = "{name}"\nendpoint = "{neuron.url}"\n'
    config.write_text(text)
    argv = [str(Path(sys.executable).parent / "cortex"), "serve", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    server = Server(f"cortex-{run}", [*argv, "--log-format", "text"], port, log_dir)

    def both_ready(client: httpx.Client) -> bool:
        nodes = client.get("/fleet").json()["nodes"]
        ready = [n for n in nodes if any(m["state"] == "ready" for m in n["models"])]
        return len(ready) == len(neurons)

    server.wait_until(both_ready, timeout_s=60)
    return server


def turn(client: httpx.Client, conversation: Conversation, question: str) -> None:
    conversation.messages.append({"role": "user", "content": question})
    body = {"model": MODEL, "messages": conversation.messages, "temperature": 0, "max_tokens": 8}
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    answer = response.json()
    conversation.messages.append(answer["choices"][0]["message"])
    conversation.nodes.append(response.headers["x-cortex-node"])
    usage = answer["usage"]
    conversation.prompt_tokens.append(usage["prompt_tokens"])
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    conversation.cached_tokens.append(cached)


def rounds(gateway: Server, conversations: list[Conversation], turn_no: int, together: bool):
    with httpx.Client(base_url=gateway.url, timeout=300) as client:
        questions = [
            f"Tell me about {c.topic}." if turn_no == 0 else FOLLOW_UPS[turn_no - 1]
            for c in conversations
        ]
        if together:
            with ThreadPoolExecutor(len(conversations)) as pool:
                list(pool.map(lambda c, q: turn(client, c, q), conversations, questions))
        else:
            for conversation, question in zip(conversations, questions, strict=True):
                turn(client, conversation, question)


def run_mode(
    log_dir: Path, neurons: dict[str, Server], mode: str, topics: list[str], run: int
) -> None:
    """K conversations, 3 turns, the gateway restarted before the third; the shares."""
    together = mode == "concurrent"
    conversations = [Conversation(f"{topic} ({mode})") for topic in topics]
    gateway = start_gateway(log_dir, neurons, run)
    try:
        rounds(gateway, conversations, 0, together)
        rounds(gateway, conversations, 1, together)
    finally:
        gateway.stop()
    gateway = start_gateway(log_dir, neurons, run + 1)  # no memory of where it sent what
    try:
        rounds(gateway, conversations, 2, together)
    finally:
        gateway.stop()
    starts = Counter(c.nodes[0] for c in conversations)
    where = ", ".join(f"{node}: {count}" for node, count in sorted(starts.items()))
    print(f"\n{mode}: {len(conversations)} conversations, first turns on {where}")
    for turn_no, label in ((1, "turn 2"), (2, "turn 3, after a gateway restart")):
        landed = sum(c.nodes[turn_no] == c.nodes[turn_no - 1] for c in conversations)
        print(f"  {label}: {landed}/{len(conversations)} landed where their prefix lives")
    follow = [(c.nodes[t] == c.nodes[t - 1]) for c in conversations for t in (1, 2)]
    prompt = sum(c.prompt_tokens[t] for c in conversations for t in (1, 2))
    cached = sum(c.cached_tokens[t] for c in conversations for t in (1, 2))
    share = sum(follow) / len(follow)
    verdict = "pass" if share >= 0.9 else "FAIL"
    print(
        f"  all follow-ups: {sum(follow)}/{len(follow)} = {share:.0%} "
        f"(by chance: {1 / len(neurons):.0%}; target >= 90 %: {verdict})"
    )
    print(f"  follow-up prompt tokens from the cache: {cached}/{prompt} = {cached / prompt:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=8)
    args = parser.parse_args()
    topics = (TOPICS * (args.conversations // len(TOPICS) + 1))[: args.conversations]
    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prefix-routing-")))
        neurons = {name: start_neuron(stack, log_dir, name) for name in ("a", "b")}
        print(f"2 neurons ({', '.join(neurons)}), {MODEL}, logs in {log_dir}")
        run_mode(log_dir, neurons, "sequential", topics, 0)
        run_mode(log_dir, neurons, "concurrent", topics, 2)


if __name__ == "__main__":
    main()
