"""Where model files come from: ``pkg:``, ``file:`` and ``hf:`` sources, parsed in one place."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cortex.errors import InvalidRequest

Scheme = Literal["pkg", "file", "hf"]


@dataclass(frozen=True)
class Source:
    scheme: Scheme
    location: str  # module/relative for pkg, absolute path for file, ORG/NAME for hf

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}"


def parse_source(text: str) -> Source:
    scheme, sep, location = text.partition(":")
    if not sep or scheme not in ("pkg", "file", "hf") or not location:
        raise InvalidRequest(
            f"Unknown model source '{text}': use pkg:module/path, file:/abs/path or hf:ORG/NAME"
        )
    if scheme == "hf" and not re.fullmatch(r"[\w.-]+/[\w.-]+", location):
        raise InvalidRequest(f"hf source '{text}' must look like hf:ORG/NAME")
    return Source(scheme, location)  # type: ignore[arg-type]


def _package_root(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidRequest(
            f"Python package '{module}' is not installed on this node (needed by pkg:{module}/...)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing anything that would escape ``root``."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise InvalidRequest(f"source path '{relative}' escapes its root")
    return path


def pick_gguf(directory: Path, quant: str | None) -> Path:
    """The one GGUF file in ``directory`` matching ``quant`` (case and separator blind)."""
    files = sorted(directory.glob("*.gguf"))
    if quant:
        wanted = re.sub(r"[^a-z0-9]", "", quant.lower())
        files = [f for f in files if wanted in re.sub(r"[^a-z0-9]", "", f.name.lower())]
    if len(files) == 1:
        return files[0]
    what = f"matching quant '{quant}'" if quant else ""
    if not files:
        raise InvalidRequest(f"no GGUF file {what} in {directory}")
    names = ", ".join(f.name for f in files)
    raise InvalidRequest(f"several GGUF files {what} in {directory} ({names}): set quant")


def resolve_local(source: Source, quant: str | None = None) -> Path:
    """The model file a ``pkg:`` or ``file:`` source names, checked to exist."""
    if source.scheme == "pkg":
        module, _, relative = source.location.partition("/")
        path = _inside(_package_root(module), relative or ".")
    elif source.scheme == "file":
        path = Path(source.location)
        if not path.is_absolute():
            raise InvalidRequest(f"file source '{source}' must be an absolute path")
    else:
        raise InvalidRequest(f"'{source}' is not a local source")
    if path.is_dir():
        return pick_gguf(path, quant)
    if not path.exists():
        raise InvalidRequest(f"model file not found: {path}")
    return path
