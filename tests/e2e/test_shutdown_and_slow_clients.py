"""A gateway that is told to stop lets answers in flight finish, then ends what is left
with an error event (not a cut connection); clients that send their headers too slowly
are disconnected, by the gateway and by the neuron alike."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, UNENDING, Gateway, Neuron, gateway_config, wait_for

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me a long story."}]


def _stream(url: str, lines: list[str], unending: bool) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "max_tokens": 40}
    if unending:
        body.update(UNENDING, max_tokens=4000)
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        lines.extend(line for line in r.iter_lines() if line)


def _anthropic_stream(url: str, lines: list[str]) -> None:
    # a forced tool whose schema cannot be satisfied early keeps the stream going
    schema = UNENDING["response_format"]["json_schema"]["schema"]
    tool = {"name": "tell", "description": "Tell the story.", "input_schema": schema}
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "stream": True,
        "max_tokens": 4000,
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "tell"},
    }
    with httpx.stream("POST", url + "/v1/messages", json=body, timeout=120) as r:
        lines.extend(line for line in r.iter_lines() if line)


def _config(neuron: Neuron, grace_s: float) -> str:
    return gateway_config(neuron).replace(
        "[gateway]\n", f"[gateway]\nshutdown_grace_s = {grace_s}\n"
    )


def test_shutdown_lets_answers_run_then_ends_what_is_left_with_an_error(
    tmp_path: Path,
) -> None:
    neuron = Neuron(tmp_path, "n1", [f"{MODEL}={BUNDLED}"])
    grace_s = 5
    gateway = Gateway(tmp_path, _config(neuron, grace_s), wait_for_models={MODEL})
    short: list[str] = []
    long: list[str] = []
    anthropic: list[str] = []
    clients = [
        threading.Thread(target=_stream, args=(gateway.url, short, False)),
        threading.Thread(target=_stream, args=(gateway.url, long, True)),
        threading.Thread(target=_anthropic_stream, args=(gateway.url, anthropic)),
    ]
    try:
        for client in clients:
            client.start()
        wait_for(lambda: len(long) > 3 and len(anthropic) > 1, "the streams to start")
        stopped_at = time.monotonic()
        seen_at_stop = len(long)
        gateway.signal(signal.SIGTERM)
        for client in clients:
            client.join(120)
            assert not client.is_alive(), "a stream outlived the shutdown"
        # Each stream either finished within the grace period (the short one, 40 tokens,
        # unless the machine is very slow) or was ended by an error event its client
        # understands: never cut.
        assert short[-1] == "data: [DONE]" or "gateway_shutting_down" in short[-1], short[-2:]
        end = json.loads(long[-1].removeprefix("data: "))
        assert end["error"]["code"] == "gateway_shutting_down", long[-2:]
        assert len(long) > seen_at_stop + 1, "tokens kept coming during the grace period"
        assert anthropic[-2] == "event: error", anthropic[-3:]
        assert "shutting down" in anthropic[-1]
        assert gateway.proc.wait(30) == 0
        # the grace period was honoured: not cut at once (a bound, not a timing check)
        assert time.monotonic() - stopped_at >= grace_s
        # the neuron saw its clients leave: every generation ended, none left running
        wait_for(lambda: neuron.model(MODEL)["in_flight"] == 0, "the generations to stop")
    finally:
        for client in clients:
            client.join(60)
        gateway.stop()
        neuron.stop()


def _slow_headers(port: int) -> bytes:
    """Sends half a request line, then nothing; what the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def test_slow_header_senders_are_disconnected(tmp_path: Path) -> None:
    neuron = Neuron(tmp_path, "n1", [f"{MODEL}={BUNDLED}"], extra=["--header-timeout-s", "1"])
    config = gateway_config(neuron).replace("[gateway]\n", "[gateway]\nheader_timeout_s = 1\n")
    gateway = Gateway(tmp_path, config, wait_for_models={MODEL})
    try:
        for url in (gateway.url, neuron.url):
            answer = _slow_headers(httpx.URL(url).port)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            # a prompt client on a kept-alive connection is not affected
            with httpx.Client() as client:
                assert client.get(url + "/health").status_code == 200
                time.sleep(1.5)  # idle between requests is the keep-alive timeout's business
                assert client.get(url + "/health").status_code == 200
    finally:
        gateway.stop()
        neuron.stop()
