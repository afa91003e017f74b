"""A throwaway PostgreSQL cluster for tests: initdb, pg_ctl start on a free loopback port, stop.

One cluster per pytest process (so one per xdist worker: nothing is shared between workers),
one fresh database per test that asks for one (CREATE DATABASE copies template1: fast).
`initdb` refuses root, so as root the cluster belongs to the `postgres` user and every
command runs through `runuser`; as any other user the cluster is that user's own.

    cluster = PostgresCluster.start()
    url = cluster.create_database()      # postgresql://postgres@127.0.0.1:PORT/test_1
    cluster.stop(); cluster.start_again()  # a server restart, data kept
    cluster.destroy()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresMissing", "find_bin_dir"]

# Debian's packages put the server binaries here, not on PATH.
_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_OWNER = "postgres"


class PostgresMissing(RuntimeError):
    """The server binaries are not installed."""


def find_bin_dir() -> Path:
    for folder in [*_BIN_DIRS, *(Path(p) for p in os.environ.get("PATH", "").split(":") if p)]:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise PostgresMissing(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
        "on PATH; install them: apt-get install -y postgresql"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = port
        self._databases = 0

    @classmethod
    def start(cls) -> PostgresCluster:
        bin_dir = find_bin_dir()
        root = Path(tempfile.mkdtemp(prefix="engine-pg-"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_OWNER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        cluster = cls(bin_dir, root, _free_port())
        # Trust on loopback only: the cluster lives as long as the test session.
        cluster._run(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E",
            "UTF8", "--locale=C",
        )  # fmt: skip
        cluster.start_again()
        return cluster

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _OWNER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log}")
        return done

    def start_again(self) -> None:
        """Start (or restart after `stop`) the server on the same port and data."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # Durability is not what tests check; speed is what they need.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        # Already stopped when a test stopped it and failed before restarting it.
        with contextlib.suppress(RuntimeError):
            self.stop()
        # Give the postmaster's children a moment to let go of the folder.
        time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
