"""The request body limit holds for a body sent without a Content-Length: the gateway
answers 413 in the client's dialect once the limit is passed, and reads no further."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow

MB = 2**20
SENT_MB = 256  # chunked, against a 1 MB limit


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Body:
    """A chunked body of ``SENT_MB`` megabytes, counting what the client got to send."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        piece = b"x" * MB
        for _ in range(SENT_MB):
            self.sent += len(piece)
            yield piece


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # no neuron needed: the body is refused before any routing
    config = "[gateway]\nrequest_body_limit_mb = 1\n"
    process = Gateway(tmp_path_factory.mktemp("gateway"), config)
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("path", "error_type"),
    [
        ("/v1/chat/completions", "invalid_request_error"),
        ("/v1/embeddings", "invalid_request_error"),
        ("/v1/messages", "request_too_large"),
        ("/v1/messages/count_tokens", "request_too_large"),
    ],
)
def test_a_chunked_body_past_the_limit_is_refused_unread(
    gateway: Gateway, path: str, error_type: str
) -> None:
    before = rss_mb(gateway.pid)
    body = Body()
    response = httpx.post(gateway.url + path, content=iter(body), timeout=60)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    envelope = response.json()
    assert envelope["error"]["type"] == error_type
    assert "1 MB limit" in envelope["error"]["message"]
    # the gateway stopped reading: the client could not send it all, nor did it grow by it
    assert body.sent < SENT_MB * MB
    assert rss_mb(gateway.pid) - before < 32
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_a_declared_length_past_the_limit_is_refused_before_reading(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/v1/messages", content=b"x" * (2 * MB), timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_a_body_within_the_limit_is_read(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", content=b"{" * (MB // 2))
    assert response.status_code == 400  # read whole, then found not to be JSON


def test_huge_prompts_leave_the_neuron_as_it_was(tmp_path: Path) -> None:
    """Prompts far past the context are refused before they are tokenized, and those
    just inside the character bound are tokenized and refused without memory kept:
    round after round, neither the neuron nor its engine process grows."""
    neuron = Neuron(tmp_path, "n1", [f"{MODEL}={BUNDLED}"])
    try:
        engine_pid = neuron.model(MODEL)["engine_pid"]
        huge = "hello " * (5 * MB)  # 30 MB, under the 32 MB body limit
        near = "hello " * 43_000  # 258k characters: tokenized, then too long for 4096
        rounds = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]}),
            ("/v1/completions", {"prompt": huge}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": near}]}),
            ("/v1/embeddings", {"input": [near] * 4}),
        ]
        baseline: tuple[float, float] | None = None
        for round_number in range(4):
            for path, body in rounds:
                answer = httpx.post(neuron.url + path, json={"model": MODEL, **body}, timeout=300)
                assert answer.status_code == 400, answer.text[:200]
                assert "context" in answer.json()["error"]["message"]
            sizes = (rss_mb(neuron.pid), rss_mb(engine_pid))
            if round_number == 0:
                baseline = sizes  # after the first round: allocators keep their arenas
            else:
                assert baseline is not None
                assert sizes[0] - baseline[0] < 48, (round_number, sizes, baseline)
                assert sizes[1] - baseline[1] < 48, (round_number, sizes, baseline)
    finally:
        neuron.stop()
