"""The gateway places a tensor_parallel = 2 dense model over a neuron's two CPU ranks.

The neuron (``--cpu-tp-ranks 2``, no GPU) reports its CPU as able to hold two ranks
(``tp_ranks``, contract 1.4); the gateway asks it for the estimate per rank, plans the
model onto ``cpu`` twice, charges each rank its share and names those devices in the
load. The dense checkpoint is the one ``test_dense`` builds (``.cache/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

import reference as ref
import required
from procs import BUNDLED, Gateway, Neuron, gateway_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TP2 = "smollm2-dense-tp2"
TP4 = "smollm2-dense-tp4"


@pytest.fixture(scope="module")
def dense_dir() -> Path:
    if not ref.reference_available():
        required.missing("needs torch, transformers, gguf, accelerate and the bundled GGUF")
    out = REPO / ".cache" / "dense-smollm2"
    if (out / ref.DENSE_WEIGHTS).is_file():
        return out
    return ref.make_dense_checkpoint(out)


@pytest.fixture(scope="module")
def fleet(dense_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tp-placement")
    node = Neuron(tmp, "ranks", extra=["--cpu-tp-ranks", "2"])
    models = "".join(
        f'[[models]]\nid = "{model_id}"\nsource = "file:{dense_dir}"\ntensor_parallel = {n}\n\n'
        for model_id, n in ((TP2, 2), (TP4, 4))
    )
    gateway = Gateway(tmp, gateway_config(node), models)
    yield node, gateway
    gateway.stop()
    node.stop()


def test_tp2_is_placed_on_two_cpu_ranks_charged_per_rank_and_answers(fleet, dense_dir) -> None:
    node, gateway = fleet
    (cpu,) = node.status()["devices"]
    assert cpu["tp_ranks"] == 2
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=TP2,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0,
        max_tokens=8,
        timeout=600,
    )
    assert reply.choices[0].message.content
    # the estimate per rank, as the neuron gives it to any gateway
    spec = {"id": TP2, "source": f"file:{dense_dir}", "tensor_parallel": 2}
    estimate = httpx.post(node.url + "/models/estimate", json=spec, timeout=60).json()
    rank_mb, other_mb = estimate["shares_mb"]
    assert rank_mb == other_mb
    # a rank holds half the sharded weights, the whole embeddings and its own overhead:
    # less than the model on one device, more than half of it
    assert estimate["memory_mb"] / 2 < rank_mb < estimate["memory_mb"]
    # /fleet: the model on cpu twice, charged both ranks there
    fleet_view = httpx.get(gateway.url + "/fleet", timeout=10).json()
    (seen,) = [m for n in fleet_view["nodes"] for m in n["models"] if m["id"] == TP2]
    assert seen["devices"] == ["cpu", "cpu"]
    assert seen["device_memory_mb"] == {"cpu": 2 * rank_mb}
    # the load named its devices (contract 1.4), and the log line says where it went
    log = gateway.log_path.read_text()
    assert f"loaded model={TP2} node=ranks devices=cpu,cpu" in log, gateway.log_tail()
    status = node.model(TP2)
    assert status is not None and status["device_memory_mb"] == {"cpu": 2 * rank_mb}


def test_tp4_on_a_node_of_two_ranks_is_refused_saying_why(fleet) -> None:
    _, gateway = fleet
    body = {"model": TP4, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    assert refused.status_code >= 400, refused.text
    message = json.dumps(refused.json())
    assert "4 devices of one node" in message and "the most is 2, on ranks" in message


def test_a_gguf_split_on_a_cpu_only_neuron_is_a_structured_422(fleet) -> None:
    node, _ = fleet
    spec = {"id": "split", "source": BUNDLED, "split": "layer", "devices": 2}
    refused = httpx.post(node.url + "/models/load", json=spec, timeout=60)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["kind"] == "split_needs_gpus" and error["model_id"] == "split"
    assert "no GPU llama.cpp can use" in error["detail"]
    assert node.model("split") is None
