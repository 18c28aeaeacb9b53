import json

import pytest

from cortex.errors import ContextOverflow, InvalidRequest, ModelNotFound, ModelRecovering
from cortex.gateway.catalogue import Catalogue
from cortex.protocol.errors import (
    anthropic_error_body,
    anthropic_status,
    error_from_openai_body,
    error_headers,
    openai_error_body,
)
from cortex.protocol.openai import ChatCompletionRequest
from cortex.protocol.parsing import parse_body
from cortex.spec import ModelSpec


def profiles() -> Catalogue:
    return Catalogue(
        [
            ModelSpec(id="big", source="file:/m/big.gguf", aliases=["claude-opus-*"]),
            ModelSpec(id="small", source="file:/m/small.gguf", aliases=["claude-*", "gpt-4o"]),
        ]
    )


def test_exact_ids_then_aliases_in_file_order() -> None:
    catalogue = profiles()
    assert catalogue.resolve("big", set()) == "big"
    assert catalogue.resolve("claude-opus-4", set()) == "big"
    assert catalogue.resolve("claude-haiku-4-5", set()) == "small"
    assert catalogue.resolve("gpt-4o", set()) == "small"
    assert catalogue.resolve("gpt-4o-mini", set()) is None
    assert catalogue.resolve("adhoc", {"adhoc"}) == "adhoc"
    assert catalogue.ids({"adhoc", "big"}) == ["big", "small", "adhoc"]


def test_openai_envelope_has_every_field() -> None:
    body = openai_error_body(ModelNotFound("gpt-17", known=["a"]))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "model_not_found" and "gpt-17" in body["error"]["message"]


def test_anthropic_envelope() -> None:
    body = anthropic_error_body(ModelNotFound("x"))
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"


def test_context_overflow_names_the_numbers() -> None:
    error = ContextOverflow(prompt_tokens=5000, context_length=4096, model="m")
    assert error.status == 400 and "5000" in error.message and "4096" in error.message


def test_recovering_has_retry_after() -> None:
    error = ModelRecovering("m")
    assert error.status == 503 and error_headers(error) == {"Retry-After": "2"}


def test_relayed_errors_keep_status_and_fields() -> None:
    raw = json.dumps({"error": {"message": "boom", "param": "x", "code": "c"}}).encode()
    error = error_from_openai_body(429, raw, "3")
    assert (error.status, error.kind, error.message, error.param) == (
        429,
        "overloaded",
        "boom",
        "x",
    )
    assert error.retry_after_s == 3
    garbage = error_from_openai_body(502, b"<html>", None)
    assert garbage.status == 502 and "<html>" in garbage.message


def test_a_full_server_is_429_for_openai_and_529_overloaded_for_anthropic() -> None:
    # A node's full queue, relayed: Anthropic keeps 429 for a key's rate limit.
    error = error_from_openai_body(429, b'{"error": {"message": "queue full"}}', "1")
    assert error.status == 429 and openai_error_body(error)["error"]["type"] == "rate_limit_error"
    assert anthropic_status(error) == 529
    assert anthropic_error_body(error)["error"]["type"] == "overloaded_error"
    assert anthropic_status(ModelRecovering("m")) == 503


def test_parse_body_errors_are_readable() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_body(ChatCompletionRequest, b"{")
    with pytest.raises(InvalidRequest, match="empty"):
        parse_body(ChatCompletionRequest, b"")
    with pytest.raises(InvalidRequest, match=r"messages: Field required") as caught:
        parse_body(ChatCompletionRequest, b'{"model": "m"}')
    assert caught.value.param == "messages"


def test_a_relayed_preflight_rejection_keeps_its_structured_fields() -> None:
    fields = {"kind": "quant_not_found", "model_id": "m", "detail": "d", "suggestion": "s"}
    raw = json.dumps({"error": {"message": "d s", "code": "quant_not_found", **fields}})
    error = error_from_openai_body(422, raw.encode())
    assert error.status == 422
    assert openai_error_body(error)["error"] == {
        **fields,
        "message": "d s",
        "type": "invalid_request_error",
        "param": None,
        "code": "quant_not_found",
    }
    assert anthropic_error_body(error)["error"]["suggestion"] == "s"
