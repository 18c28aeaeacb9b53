"""The dense safetensors engine and tensor parallelism (CPU, gloo), on real neurons.

The dense checkpoint is the bundled GGUF dequantised to float32 and saved with
``save_pretrained`` (``reference.make_dense_checkpoint``), built once into the
repository's ``.cache/`` and reused by later sessions.

The dense model is the fp32 reference itself, so its greedy output equals the
reference's token for token; the GGUF engine runs the Q4_1 weights and agrees with
it on the opening tokens of prompts without a near tie (``test_reference_equality``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

import reference as ref
import required
from procs import BATCH_STABLE, BUNDLED, MODEL, Neuron, alive, children_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DENSE = "smollm2-dense"
TP2 = "smollm2-dense-tp2"
# Prompts whose greedy path has no near tie in its first 16 tokens (see
# test_reference_equality): there the Q4_1 and fp32 answers must agree.
PROMPTS = [
    "Name the largest planet in the solar system.",
    "What is the capital of Japan?",  # Romeo and Juliet: a near tie on some CPUs
    "What is 2+2?",
]
OPENING = 16


@pytest.fixture(scope="session")
def dense_dir() -> Path:
    if not ref.reference_available():
        required.missing("needs torch, transformers, gguf, accelerate and the bundled GGUF")
    out = REPO / ".cache" / "dense-smollm2"
    if (out / ref.DENSE_WEIGHTS).is_file():
        return out  # built by an earlier session: no need to load the reference
    return ref.make_dense_checkpoint(out)


def client_of(node: Neuron) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)


def greedy(node: Neuron, model: str, prompt: str, tokens: int = OPENING) -> tuple[str, int]:
    reply = client_of(node).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=tokens,
    )
    return reply.choices[0].message.content or "", reply.usage.completion_tokens


def token_ids(text: str) -> list[int]:
    return ref.reference().tokenizer.encode(text, add_special_tokens=False)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- one device ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(dense_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    process = Neuron(
        tmp_path_factory.mktemp("dense"),
        "dense",
        [f"{MODEL}={BUNDLED}", f"{DENSE}=file:{dense_dir}"],
        # the GGUF's prompts were chosen tie-free, and it is asked twice: batch-stable
        spec_fields=BATCH_STABLE,
    )
    yield process
    process.stop()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_dense_greedy_equals_the_gguf_engine_then_the_reference(node: Neuron, prompt) -> None:
    dense, dense_count = greedy(node, DENSE, prompt)
    gguf, gguf_count = greedy(node, MODEL, prompt)
    assert (dense, dense_count) == (gguf, gguf_count)
    # Longer: the dense engine is the fp32 reference itself, token for token.
    long_text, count = greedy(node, DENSE, prompt, 48)
    expected = ref.greedy_ids([{"role": "user", "content": prompt}], 48)
    assert count == len(expected)
    assert long_text == ref.decode(expected)


def test_where_dense_and_gguf_part(node: Neuron) -> None:
    """Not a bound, a measurement: fp32 and Q4_1 greedy paths agree for a while."""
    parted = []
    for prompt in PROMPTS:
        dense = token_ids(greedy(node, DENSE, prompt, 64)[0])
        gguf = token_ids(greedy(node, MODEL, prompt, 64)[0])
        parted.append(common_prefix(dense, gguf))
        assert parted[-1] >= OPENING or parted[-1] == len(dense) == len(gguf)
    print(f"dense (fp32) vs GGUF (Q4_1): identical greedy tokens for {parted} of 64")


def test_dense_streams_and_stops_on_a_string(node: Neuron) -> None:
    stream = client_of(node).chat.completions.create(
        model=DENSE,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
        stop=["Paris"],
        stream=True,
    )
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(parts) == "The capital of France is "
    assert finish == "stop"


def test_dense_refuses_a_grammar_with_a_clear_400(node: Neuron) -> None:
    with pytest.raises(openai.BadRequestError, match="grammar"):
        client_of(node).chat.completions.create(
            model=DENSE,
            messages=[{"role": "user", "content": "Give me a JSON object."}],
            response_format={"type": "json_object"},
            max_tokens=8,
        )


def test_concurrent_requests_are_serialised_without_cross_talk(node: Neuron) -> None:
    alone = {prompt: greedy(node, DENSE, prompt, 24) for prompt in PROMPTS}
    asked = PROMPTS * 2  # each prompt twice at once: every answer is kept and compared
    together: list[tuple[str, int] | None] = [None] * len(asked)

    def ask(i: int) -> None:
        together[i] = greedy(node, DENSE, asked[i], 24)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asked))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == [alone[prompt] for prompt in asked]


def test_sampling_with_a_seed_repeats(node: Neuron) -> None:
    def sample() -> str:
        reply = client_of(node).chat.completions.create(
            model=DENSE,
            messages=[{"role": "user", "content": "Tell me a story."}],
            temperature=0.9,
            top_p=0.9,
            seed=7,
            max_tokens=16,
            extra_body={"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1},
        )
        return reply.choices[0].message.content or ""

    assert sample() == sample()


def test_tp_beyond_the_nodes_devices_is_a_structured_422(node: Neuron, dense_dir: Path) -> None:
    """This neuron has no GPU and no --cpu-tp-ranks: one device, so TP=2 is refused."""
    spec = {"id": "too-wide", "source": f"file:{dense_dir}", "tensor_parallel": 2}
    refused = httpx.post(node.url + "/models/load", json=spec, timeout=60)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["kind"] == "too_many_ranks" and error["model_id"] == "too-wide"
    assert "tensor_parallel=2" in error["detail"] and error["suggestion"]
    assert tp_workers(node) == []  # refused before anything started


# -- tensor parallel ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp_node(dense_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    process = Neuron(
        tmp_path_factory.mktemp("tp"),
        "tp",
        [f"{DENSE}=file:{dense_dir}"],
        ["--cpu-tp-ranks", "2", "--enable-fault-injection"],
    )
    spec = {"id": TP2, "source": f"file:{dense_dir}", "tensor_parallel": 2}
    loaded = httpx.post(process.url + "/models/load", json=spec, timeout=300)
    assert loaded.status_code == 200, loaded.text + process.log_tail()
    yield process
    process.stop()


def tp_workers(node: Neuron) -> list[int]:
    """The TP ranks the neuron's engine processes started (multiprocessing spawn
    workers: the neuron's grandchildren, since every model has an engine process)."""
    found = []
    engines = children_of(node.pid)
    for pid in [grandchild for engine in engines for grandchild in children_of(engine)]:
        try:
            if "spawn_main" in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.Error:
            continue
    return found


def test_tp2_greedy_equals_tp1_over_consecutive_requests(tp_node: Neuron) -> None:
    assert len(tp_workers(tp_node)) == 1
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]  # a new prompt, then back: KV cleared/cut
    for prompt in prompts:
        one = greedy(tp_node, DENSE, prompt, 24)
        two = greedy(tp_node, TP2, prompt, 24)
        assert two == one


def test_a_killed_tp_worker_fails_the_request_then_the_model_heals(tp_node: Neuron) -> None:
    before = greedy(tp_node, TP2, PROMPTS[1])
    [victim] = tp_workers(tp_node)
    os.kill(victim, signal.SIGKILL)  # a rank dies (the OOM killer, a native crash)
    body = {
        "model": TP2,
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "temperature": 0,
        "max_tokens": OPENING,
    }
    failed = httpx.post(tp_node.url + "/v1/chat/completions", json=body, timeout=120)
    assert failed.status_code >= 500, failed.text
    assert "error" in failed.json()
    assert not alive(victim)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        response = httpx.post(tp_node.url + "/v1/chat/completions", json=body, timeout=120)
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        time.sleep(0.2)
    else:
        raise AssertionError("the TP model did not recover\n" + tp_node.log_tail())
    assert tp_node.model(TP2)["state"] == "ready"
    assert greedy(tp_node, TP2, PROMPTS[1]) == before
    assert len(tp_workers(tp_node)) == 1  # a fresh rank 1, the dead one reaped


def test_unloading_a_tp_model_leaves_no_process_and_no_port(tp_node: Neuron) -> None:
    workers = tp_workers(tp_node)
    assert workers
    ports = [int(p) for p in re.findall(r"store port (\d+)", tp_node.log_path.read_text())]
    assert ports
    unloaded = httpx.post(tp_node.url + "/models/unload", json={"id": TP2}, timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert not [pid for pid in workers if alive(pid)]
    assert tp_workers(tp_node) == []
    # What stays: the other models' engine processes, nothing of the TP model's.
    engines = {m["engine_pid"] for m in tp_node.status()["models"]}
    for pid in children_of(tp_node.pid):
        assert pid in engines or "resource_tracker" in " ".join(psutil.Process(pid).cmdline())
    listening = {
        c.laddr.port
        for c in psutil.Process(tp_node.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {tp_node.port}
    for port in ports:
        with pytest.raises(OSError):
            socket_connect(port)
    # and a TP model loads again afterwards (the process group was torn down)
    spec = {"id": TP2, "source": f"file:{_dense_source(tp_node)}", "tensor_parallel": 2}
    again = httpx.post(tp_node.url + "/models/load", json=spec, timeout=300)
    assert again.status_code == 200, again.text


def socket_connect(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def _dense_source(node: Neuron) -> str:
    model = node.model(DENSE)
    assert model is not None
    return model["spec"]["source"].removeprefix("file:")
