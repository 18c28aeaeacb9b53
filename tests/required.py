"""Tools some tests need (Chromium, Prometheus, Claude Code, torch, ...): a skip with the
reason on a developer's machine, a failure in CI.

``scripts/test`` installs these tools; where an install fails the tests that need them
would otherwise turn into skips nobody reads. Under ``CI=true`` (GitHub Actions and most
CI systems set it) a missing tool fails the test instead, with the same reason.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the calling test (or fixture) because a tool is missing; fail it in CI."""
    if in_ci():
        pytest.fail(f"CI=true and a required tool is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def module(name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip`` that fails in CI; usable at module level too."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = reason or f"{name} is not installed ({exc})"
        if in_ci():
            pytest.fail(f"CI=true and a required module is missing: {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)
