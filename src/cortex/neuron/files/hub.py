"""``hf:`` sources: repository listings and downloads through ``huggingface_hub``.

huggingface_hub takes its settings from the environment, as every tool built on it
does: ``HF_ENDPOINT`` (a mirror or a private hub), ``HF_TOKEN`` (gated and private
repositories), ``HF_HOME`` / ``HF_HUB_CACHE`` (the cache, shared with those tools)
and ``HF_HUB_OFFLINE`` (no network: answer from the cache alone). Downloads resume
where an interrupted one stopped and show its progress bar on stderr.

Its exceptions stop here: what leaves this module is a cortex error.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

from cortex.errors import InvalidRequest, PreflightRejected, UpstreamError
from cortex.neuron.files.headers import parse_gguf_prefix

log = logging.getLogger("cortex.neuron.files.hub")


@dataclass(frozen=True)
class RepoFiles:
    """One listing of a model repository at one commit."""

    repo_id: str
    commit: str  # the commit the listing describes
    files: tuple[tuple[str, int], ...]  # (path in the repository, size in bytes)
    snapshot: Path | None = None  # set when listed from the local cache: nothing to fetch


def list_files(repo_id: str, *, model_id: str, cache_dir: Path | None = None) -> RepoFiles:
    """The repository's files with their sizes, in one call to the hub; from the cache
    when offline, or when the hub cannot be reached and the cache holds the repository."""
    if constants.is_offline_mode():
        return _cached_or_reject(repo_id, model_id, cache_dir)
    try:
        with _translated(repo_id, model_id):
            info = HfApi().model_info(repo_id, files_metadata=True)
    except UpstreamError as exc:
        cached = _cached(repo_id, cache_dir)
        if cached is None:
            raise
        log.warning("hub unreachable (%s): using the cached %s", exc.message, repo_id)
        return cached
    files = tuple(
        (s.rfilename, s.size if s.size is not None else (s.lfs.size if s.lfs else 0))
        for s in info.siblings or []
    )
    return RepoFiles(repo_id, info.sha or "", files)


def download(
    repo: RepoFiles, files: tuple[str, ...], *, model_id: str, cache_dir: Path | None = None
) -> Path:
    """Fetch ``files`` from the main branch into the cache (those already there are not
    fetched again); the snapshot directory that holds them. The cache records which
    commit ``main`` is, so offline runs (and other tools) find the snapshot."""
    if repo.snapshot is not None:
        return repo.snapshot
    root: Path | None = None
    for name in files:
        with _translated(repo.repo_id, model_id):
            local = hf_hub_download(repo.repo_id, name, revision="main", cache_dir=cache_dir)
        root = Path(local).parents[len(PurePosixPath(name).parts) - 1]
    if root is None:
        raise ValueError("download() needs at least one file")
    return root


# Where a GGUF's metadata and tensor table end is only known by reading them: fetch this
# much first, then twice as much until it parses (a 150k-token vocabulary is ~3 MiB).
_GGUF_FIRST_FETCH = 4 << 20
_SAFETENSORS_HEADER_MAX = 100 << 20  # the format's own bound on a header


def fetch_headers(repo: RepoFiles, files: tuple[str, ...], *, model_id: str, into: Path) -> Path:
    """A stand-in for ``files`` under ``into`` that memory estimates read like the real
    thing, with no weights downloaded: each ``.gguf`` and ``.safetensors`` file holds only
    its header, fetched with HTTP range requests, in a sparse file of its full size; the
    other files (config, tokenizer, index) are small and fetched whole through the cache.
    Returns ``into``. From the snapshot instead when the listing came from the cache."""
    if repo.snapshot is not None:
        return repo.snapshot
    sizes = dict(repo.files)
    with _translated(repo.repo_id, model_id), httpx2.Client(
        headers=build_hf_headers(), follow_redirects=True, timeout=60
    ) as client:  # fmt: skip
        for name in files:
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            url = hf_hub_url(repo.repo_id, name, revision=repo.commit or "main")
            if name.endswith(".gguf"):
                header = _gguf_header(client, url, sizes[name], name)
            elif name.endswith(".safetensors"):
                header = _safetensors_header(client, url, sizes[name], name)
            else:
                local = hf_hub_download(repo.repo_id, name, revision=repo.commit or "main")
                shutil.copyfile(local, target)
                continue
            with target.open("wb") as file:
                file.write(header)
                file.truncate(sizes[name])  # a hole: no disk used, the size a reader expects
    return into


def _gguf_header(client: httpx2.Client, url: str, size: int, name: str) -> bytes:
    want = min(size, _GGUF_FIRST_FETCH)
    while True:
        data = _byte_range(client, url, 0, want)
        if parse_gguf_prefix(data, name) is not None:
            return data
        if want >= size:
            raise InvalidRequest(f"{name} is not a readable GGUF file: its header is truncated")
        want = min(size, want * 2)


def _safetensors_header(client: httpx2.Client, url: str, size: int, name: str) -> bytes:
    first = _byte_range(client, url, 0, min(size, 8))
    (length,) = struct.unpack("<Q", first) if len(first) == 8 else (None,)
    if length is None or length > min(size - 8, _SAFETENSORS_HEADER_MAX):
        raise InvalidRequest(f"{name} is not a readable safetensors file")
    return first + _byte_range(client, url, 8, 8 + length)


def _byte_range(client: httpx2.Client, url: str, start: int, stop: int) -> bytes:
    """Bytes ``start`` to ``stop`` (exclusive) of a remote file; never more is read, even
    from a server that ignores the range and sends the whole file."""
    with client.stream("GET", url, headers={"Range": f"bytes={start}-{stop - 1}"}) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        skip = start if response.status_code == 200 else 0
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= skip + stop - start:
                break
    return bytes(data[skip : skip + stop - start])


# -- the local cache ---------------------------------------------------------------------


def _repo_folder(repo_id: str, cache_dir: Path | None) -> Path:
    root = Path(cache_dir or constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def _cached(repo_id: str, cache_dir: Path | None) -> RepoFiles | None:
    """The cached snapshot of the repository's main branch, listed like the hub would."""
    folder = _repo_folder(repo_id, cache_dir)
    ref = folder / "refs" / "main"
    snapshots = folder / "snapshots"
    if ref.is_file():
        snapshot = snapshots / ref.read_text().strip()
    elif snapshots.is_dir() and any(snapshots.iterdir()):
        snapshot = max(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    else:
        return None
    if not snapshot.is_dir():
        return None
    files = []
    for directory, _, names in os.walk(snapshot):
        for name in names:
            path = Path(directory) / name
            if path.exists():  # a link to a blob whose download never finished is not
                files.append((path.relative_to(snapshot).as_posix(), path.stat().st_size))
    return RepoFiles(repo_id, snapshot.name, tuple(sorted(files)), snapshot=snapshot)


def _cached_or_reject(repo_id: str, model_id: str, cache_dir: Path | None) -> RepoFiles:
    cached = _cached(repo_id, cache_dir)
    if cached is None:
        raise PreflightRejected(
            "offline_not_cached",
            model_id=model_id,
            detail=f"HF_HUB_OFFLINE is set and the cache ({_repo_folder(repo_id, cache_dir)}) "
            f"does not hold {repo_id}.",
            suggestion="Unset HF_HUB_OFFLINE, or fetch it first on a networked host "
            f"(`hf download {repo_id}`) into the same HF_HOME.",
        )
    return cached


# -- errors --------------------------------------------------------------------------------


@contextmanager
def _translated(repo_id: str, model_id: str) -> Iterator[None]:
    """huggingface_hub's and httpx's exceptions, as cortex errors."""
    endpoint = constants.ENDPOINT
    try:
        yield
    except GatedRepoError as exc:
        raise PreflightRejected(
            "access_denied",
            model_id=model_id,
            detail=f"{repo_id} on {endpoint} is gated: {_first_line(exc)}",
            suggestion="Accept its terms on the hub and set HF_TOKEN to a token with access.",
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise PreflightRejected(
            "not_found",
            model_id=model_id,
            detail=f"{repo_id} was not found on {endpoint}: {_first_line(exc)}",
            suggestion="Check the name (hf:ORG/NAME); a private repository needs HF_TOKEN.",
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise PreflightRejected(
            "offline_not_cached",
            model_id=model_id,
            detail=f"{repo_id} is not in the cache and the hub is off: {_first_line(exc)}",
            suggestion="Unset HF_HUB_OFFLINE, or fetch the files into the cache first.",
        ) from exc
    except HfHubHTTPError as exc:
        raise UpstreamError(
            f"The hub at {endpoint} failed on {repo_id}: {_first_line(exc)}"
        ) from exc
    except httpx2.HTTPError as exc:  # huggingface_hub's HTTP client: connect, timeout
        raise UpstreamError(f"Cannot reach the hub at {endpoint} for {repo_id}: {exc}") from exc


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
