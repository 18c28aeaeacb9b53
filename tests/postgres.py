"""A throwaway PostgreSQL cluster on loopback, for gateways that share one database.

Debian's server binaries (``initdb``, ``pg_ctl``; scripts/debian-tools.sh installs
them) run as the ``postgres`` user when the tests run as root, since initdb refuses root.
The cluster lives in a temp dir, listens on a free port only, trusts local connections
and is stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from procs import free_port
from required import missing


def _server_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A running cluster; yields a base URL ``postgresql://postgres@127.0.0.1:PORT``."""
    binaries = _server_bin()
    if binaries is None:
        missing("PostgreSQL's server (initdb) is not installed; scripts/debian-tools.sh")
    # Not under pytest's tmp dirs: those are private to root, and the server is not root.
    folder = Path(tempfile.mkdtemp(prefix="cortex-postgres-"))
    data = folder / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run(
        _as_owner([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync"]),
        **run,
    )  # fmt: skip
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off"
    subprocess.run(
        _as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
                   "-l", str(data / "server.log"), "-w", "start"]),
        **run,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(base_url: str) -> str:
    """A fresh, empty database in the cluster at ``base_url``; its URL."""
    name = f"cortex_{uuid.uuid4().hex[:12]}"
    port = base_url.rsplit(":", 1)[1]
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-c", f"CREATE DATABASE {name}"],
        check=True,
        capture_output=True,
    )
    return f"{base_url}/{name}"
