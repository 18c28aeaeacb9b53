"""Request bodies in, typed objects out, and a readable 400 when they are wrong."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cortex.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(error: ValidationError) -> tuple[str, str | None]:
    """One readable line per problem, and the first bad field as ``param``."""
    lines, first = [], None
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        first = first or where
        lines.append(f"{where}: {problem['msg']}")
    return "; ".join(lines), first


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError:  # Python's parser recurses per level of nesting
        raise InvalidRequest("The request body is nested too deeply.") from None


def parse_model(model_type: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequest(f"Invalid request: {message}", param=param) from exc
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None


def parse_body(model_type: type[M], raw: bytes) -> M:
    return parse_model(model_type, parse_json(raw))
