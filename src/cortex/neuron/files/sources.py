"""Where model files come from: ``pkg:``, ``file:`` and ``hf:`` sources, parsed in one place.

Every source is listed the same way, ``(path, size)`` pairs (``hub.py`` asks the hub,
local ones walk the directory), so the one preflight (``preflight.py``) judges them
all before anything is fetched or allocated.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cortex.errors import InvalidRequest, PreflightRejected
from cortex.neuron.files import hub
from cortex.neuron.files.preflight import Listing, Plan, plan
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.neuron.files.sources")

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
    # find_spec of a dotted name imports its parents, running their import-time code:
    # only a top-level name is looked up, which locates the package without importing it.
    if not module.isidentifier():
        raise InvalidRequest(
            f"pkg: sources name a top-level Python package ('pkg:NAME/path'), not '{module}'"
        )
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


def local_path(source: Source) -> Path:
    """The file or directory a ``pkg:`` or ``file:`` source names (not checked to exist)."""
    if source.scheme == "pkg":
        module, _, relative = source.location.partition("/")
        return _inside(_package_root(module), relative or ".")
    if source.scheme == "file":
        path = Path(source.location)
        if not path.is_absolute():
            raise InvalidRequest(f"file source '{source}' must be an absolute path")
        return path
    raise InvalidRequest(f"'{source}' is not a local source")


_LIST_DEPTH = 2  # model files sit at the top of a source or one folder down
_LIST_MAX_FILES = 10_000  # a source naming a huge tree (file:/) is not walked to the end


def list_local(path: Path) -> list[tuple[str, int]]:
    """A local source listed like a hub repository: ``(path, size)`` under ``path``,
    or the one file when ``path`` is a file."""
    if path.is_file():
        return [(path.name, path.stat().st_size)]
    listing: list[tuple[str, int]] = []
    for directory, folders, names in os.walk(path):
        depth = len(Path(directory).relative_to(path).parts)
        if depth >= _LIST_DEPTH - 1:
            folders.clear()
        for name in names:
            file = Path(directory) / name
            if file.is_file():
                listing.append((file.relative_to(path).as_posix(), file.stat().st_size))
            if len(listing) >= _LIST_MAX_FILES:
                return sorted(listing)
    return sorted(listing)


def prepare_source(
    spec: ModelSpec,
    *,
    devices_available: int | None,
    free_mb: int | None,
    gpus: int | None = None,
) -> Path:
    """List the spec's source once, preflight it (``PreflightRejected`` says why not),
    fetch what an ``hf:`` source needs, and return the local path to serve: a GGUF file,
    or a dense checkpoint's directory (or its one safetensors file). Blocking: call it
    from a thread. ``devices_available``, ``free_mb`` and ``gpus`` as ``preflight.plan``
    takes them.
    """
    source = parse_source(spec.source)
    if source.scheme == "hf":
        repo = hub.list_files(source.location, model_id=spec.id)
        chosen = _plan(spec, repo.files, devices_available, free_mb, gpus)
        root = hub.download(repo, chosen.files, model_id=spec.id)
    else:
        path = local_path(source)
        if not path.exists():
            raise PreflightRejected(
                "not_found",
                model_id=spec.id,
                detail=f"model file not found: {path}",
                suggestion="Check the source path on this node.",
            )
        chosen = _plan(spec, list_local(path), devices_available, free_mb, gpus)
        if path.is_file():
            return path
        root = path
    return root / chosen.entry if chosen.entry else root


@contextmanager
def headers_of(spec: ModelSpec) -> Iterator[Path]:
    """The path to read the spec's memory estimate from, weights never downloaded: a
    local source as ``prepare_source`` gives it; an ``hf:`` one as a temporary stand-in
    holding only the files' headers (``hub.fetch_headers``), gone on exit. The spec's own
    preflight applies; the device checks are placement's. Blocking: run in a thread."""
    source = parse_source(spec.source)
    if source.scheme != "hf":
        yield prepare_source(spec, devices_available=None, free_mb=None)
        return
    repo = hub.list_files(source.location, model_id=spec.id)
    chosen = _plan(spec, repo.files, None, None)
    with tempfile.TemporaryDirectory(prefix="cortex-headers-") as scratch:
        root = hub.fetch_headers(repo, chosen.files, model_id=spec.id, into=Path(scratch))
        yield root / chosen.entry if chosen.entry else root


def resolve_local(source: Source, quant: str | None = None) -> Path:
    """The model file (or checkpoint directory) a ``pkg:`` or ``file:`` source names, for
    callers with no spec at hand; the same preflight, without the device checks."""
    if source.scheme == "hf":
        raise InvalidRequest(f"'{source}' is not a local source")
    spec = ModelSpec(id="local", source=str(source), quant=quant)
    return prepare_source(spec, devices_available=None, free_mb=None)


def _plan(
    spec: ModelSpec,
    listing: Listing,
    devices_available: int | None,
    free_mb: int | None,
    gpus: int | None = None,
) -> Plan:
    chosen = plan(spec, listing, devices_available=devices_available, free_mb=free_mb, gpus=gpus)
    log.info(
        "source model=%s format=%s files=%d weights_mb=%d",
        spec.id,
        chosen.format,
        len(chosen.files),
        chosen.weights_bytes // 2**20,
    )
    if chosen.note:
        log.info("source model=%s: %s", spec.id, chosen.note)
    return chosen
