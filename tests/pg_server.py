"""A real, throwaway PostgreSQL server on loopback for tests and benchmarks.

Debian's ``initdb``/``pg_ctl`` (on PATH or in /usr/lib/postgresql/*/bin) create a cluster in a
directory from ``tempfile.mkdtemp()``. PostgreSQL refuses to run as root, so under root (CI) the
cluster belongs to the ``postgres`` OS user and both commands run through ``runuser``; pytest's
tmp_path is not traversable by that user, hence mkdtemp. ``fsync=off``: durability across a power
cut is not what these tests check. :func:`start` raises :class:`PgUnavailable` with the reason when
PostgreSQL cannot be found or started; the fixture turns that into a skip with that message.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


class PgUnavailable(Exception):
    """PostgreSQL cannot be found or started here (the message says why)."""


@dataclass
class PgServer:
    url: str
    datadir: str
    _prefix: list[str]
    _pg_ctl: str

    def stop(self) -> None:
        subprocess.run([*self._prefix, self._pg_ctl, "-D", self.datadir, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(os.path.dirname(self.datadir), ignore_errors=True)


def _find(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> PgServer:
    """A running server with trust auth for user ``postgres`` on 127.0.0.1 and a free port."""
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if not initdb or not pg_ctl:
        raise PgUnavailable("PostgreSQL's initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin "
                            "(install Debian's 'postgresql' package; .ci/run does)")
    prefix: list[str] = []
    base = tempfile.mkdtemp(prefix="certus-pg-")
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if not runuser or pw is None:
            shutil.rmtree(base, ignore_errors=True)
            raise PgUnavailable("running as root, and PostgreSQL refuses root: no 'postgres' OS user or no "
                                "runuser to run it as that user")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
        prefix = [runuser, "-u", "postgres", "--"]
    datadir = os.path.join(base, "data")
    out = subprocess.run([*prefix, initdb, "-D", datadir, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-sync", "--no-instructions"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise PgUnavailable(f"initdb failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    for _ in range(3):  # a free port can be taken by someone else before the server binds it
        port = _free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        out = subprocess.run([*prefix, pg_ctl, "-D", datadir, "-l", os.path.join(base, "log"), "-o", opts,
                              "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=120)
        if out.returncode == 0:
            return PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", datadir, prefix, pg_ctl)
    try:
        with open(os.path.join(base, "log")) as f:
            reason = (f.read().strip().splitlines() or ["?"])[-1]
    except OSError:
        reason = out.stderr.strip()
    shutil.rmtree(base, ignore_errors=True)
    raise PgUnavailable(f"pg_ctl start failed: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the session; a skip with the reason where PostgreSQL is not available."""
    try:
        server = start()
    except (PgUnavailable, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"PostgreSQL tests skipped: {e}")
    try:
        yield server
    finally:
        server.stop()
