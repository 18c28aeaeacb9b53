"""HTTPS on the gateway's listeners (``tls_cert``/``tls_key``): the official SDKs answer
through it with the certificate verified, and plain HTTP is not served there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from procs import MODEL, Gateway, Neuron, free_port, gateway_config


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def https_gateway(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    ollama_port = free_port()
    config = gateway_config(neuron).replace(
        "[gateway]\n",
        f'[gateway]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'ollama_listen = "127.0.0.1:{ollama_port}"\n',
    )
    gateway = Gateway(tmp, config, wait_for_models={MODEL}, ca=cert)
    gateway.ollama_url = f"https://127.0.0.1:{ollama_port}"
    yield gateway
    gateway.stop()


def test_the_sdks_answer_over_https(https_gateway: Gateway) -> None:
    verify = https_gateway.verify
    chat = openai.OpenAI(
        base_url=https_gateway.url + "/v1",
        api_key="-",
        http_client=openai.DefaultHttpxClient(verify=verify),
    )
    answer = chat.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    claude = anthropic.Anthropic(
        base_url=https_gateway.url,
        api_key="-",
        http_client=anthropic.DefaultHttpxClient(verify=verify),
    )
    message = claude.messages.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].text
    # the second listener too
    tags = httpx.get(https_gateway.ollama_url + "/api/tags", verify=verify, timeout=10)
    assert MODEL in {tag["model"] for tag in tags.json()["models"]}


def test_plain_http_and_unknown_certificates_are_refused(https_gateway: Gateway) -> None:
    plain = https_gateway.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_gateway.url + "/health", timeout=5)  # the system's CAs only
