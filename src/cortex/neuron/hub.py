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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from cortex.errors import PreflightRejected, UpstreamError

log = logging.getLogger("cortex.neuron.hub")


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
