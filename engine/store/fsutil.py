"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

Every file Certus owns (lock file, run cache, ledger state, records) is written this way,
so a crash or Ctrl-C at any instant leaves either the old bytes or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_write", "fsync_dir", "overwrite_small", "write_if_changed"]


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, data: bytes, *, mode: int = 0o644, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(directory)


def write_if_changed(path: str, data: bytes) -> None:
    """For files regenerated before every use (a stage's params): skip identical bytes, and make
    way for new ones by unlinking first. ext4 flushes a file's data when it is renamed over an
    existing one (~1.3 ms here); a crash between unlink and rename loses nothing, as the next
    run writes the file again before reading it."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
    atomic_write(path, data, sync=False)


def overwrite_small(path: str, data: bytes) -> None:
    """Rewrite a small whitespace-tolerant file (JSON) in place with a single ``pwrite``.

    For bookkeeping rewritten several times per stage (``running.json``): one write call of a
    few hundred bytes either happens or not when the process is killed, so a reader sees the
    old content or the new; a shorter text is padded with spaces, then the file is trimmed.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        old = os.fstat(fd).st_size
        os.pwrite(fd, data + b" " * max(0, old - len(data)), 0)
        if old > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
