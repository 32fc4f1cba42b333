"""Content hashing of workspace files and directories (SHA-256).

A file's digest is SHA-256 of its bytes. A directory's digest is SHA-256 of its manifest,
one ``<file hex digest>  <relative path>\n`` line per file sorted by path — the output of
``sha256sum`` over the sorted files, so the digest is in-toto's ``dirHash`` tree digest (Go's
dirhash "h1" in hex) that anyone can recompute with coreutils. It depends on names and contents,
not on timestamps or the order the disk lists entries; a file name holding a newline cannot be
listed and is refused. The manifest bytes are also what the cache stores for a directory, so a
directory output can be restored from its digest alone (manifests in the older JSON form still read).

Symbolic links inside a directory are never followed: a link found while walking one raises
:class:`~engine.core.paths.SymlinkError` naming it (a link to a file outside would otherwise put
that file's bytes in the read-only cache; a dangling link or a loop would be a traceback).
Certus refuses links rather than storing them as links: an output is plain files.

Files are hashed concurrently on a thread pool (hashlib releases the GIL while it hashes),
and the stat cache means a file whose inode, size and mtime are unchanged is not read.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from engine.core.digest import Digest
from engine.core.paths import SymlinkError
from engine.errors import WorkspaceError
from engine.store.state import NoopState, StateStore

__all__ = ["Entry", "Hasher", "dir_manifest_bytes", "parse_dir_manifest", "file_digest", "copy_hashing"]

_CHUNK = 1 << 20
_PARALLEL_MIN_BYTES = 4 << 20  # below this much unread data, hash on the calling thread
_PARALLEL_MIN_AVG = 64 << 10  # ... or when the files average less than this


@dataclass(frozen=True, slots=True)
class Entry:
    """The hashed state of one path: a file, or a directory with its manifest."""

    digest: Digest
    size: int
    kind: str = "file"  # "file" | "dir"
    files: tuple[tuple[str, str, int], ...] = ()  # dir only: (relpath, hex, size), sorted

    def to_lock(self) -> dict[str, object]:
        d: dict[str, object] = {"digest": str(self.digest), "size": self.size}
        if self.kind == "dir":
            d["kind"] = "dir"
            d["nfiles"] = len(self.files)
        return d


def file_digest(path: str) -> str:
    """Hex SHA-256 of a file, read in large chunks."""
    with open(path, "rb", buffering=0) as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
        return h.hexdigest()


def copy_hashing(src: str, dst: str) -> str:
    """Copy ``src`` to a new file ``dst`` (never through a link), returning the SHA-256 of the
    bytes written: what lands in ``dst`` is exactly what was hashed."""
    h = hashlib.sha256()
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fin).st_size
            buf = bytearray(min(_CHUNK, max(size, 1) + 1))  # +1: see EOF in one read for small files
            view = memoryview(buf)
            while n := os.readv(fin, [buf]):
                chunk = view[:n]
                h.update(chunk)
                while chunk:
                    chunk = chunk[os.write(fout, chunk):]
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return h.hexdigest()


def dir_manifest_bytes(files: Iterable[tuple[str, str, int]]) -> bytes:
    """A directory's manifest: ``sha256sum`` lines of its files, sorted by path (in-toto dirHash)."""
    lines = []
    for rel, hexd, _ in sorted(files):
        if "\n" in rel or "\r" in rel:
            raise WorkspaceError(f"{rel!r}: a file name with a line break cannot be listed in a directory "
                                    "manifest (in-toto dirHash); rename it")
        lines.append(f"{hexd}  {rel}\n")
    return "".join(lines).encode("utf-8")


def parse_dir_manifest(data: bytes) -> list[tuple[str, str]]:
    """``[(relpath, hex)]`` from a manifest: ``sha256sum`` lines, or the older canonical JSON list."""
    import json

    if data.startswith(b"["):
        return [(rel, hexd) for rel, hexd in json.loads(data)]
    text = data.decode("utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("manifest does not end with a newline")
    out = []
    for line in text.splitlines():
        hexd, sep, rel = line.partition("  ")
        if not sep or len(hexd) != 64:
            raise ValueError(f"not a manifest line: {line[:80]!r}")
        out.append((rel, hexd))
    return out


class Hasher:
    """Hashes workspace paths through a stat cache; counts the bytes it actually read."""

    def __init__(self, root: str, *, state: StateStore | None = None, jobs: int | None = None) -> None:
        self.root = root
        self.state: StateStore = state or NoopState()
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.bytes_read = 0
        self.files_read = 0

    def _walk(self, rel: str) -> list[tuple[str, os.stat_result]]:
        out: list[tuple[str, os.stat_result]] = []
        stack = [rel]
        while stack:
            cur = stack.pop()
            with os.scandir(os.path.join(self.root, cur)) as it:
                for e in it:
                    r = f"{cur}/{e.name}"
                    if e.is_symlink():
                        raise SymlinkError(
                            f"'{r}' is a symbolic link inside directory '{rel}'; Certus never follows links "
                            "in directories: write the file itself there, or remove the link")
                    st = e.stat(follow_symlinks=False)
                    if stat_mod.S_ISDIR(st.st_mode):
                        stack.append(r)
                    elif stat_mod.S_ISREG(st.st_mode):
                        out.append((r, st))
        return out

    def hash_many(self, rels: Iterable[str]) -> dict[str, Entry | None]:
        """Hash several workspace-relative paths; ``None`` for a missing path."""
        result: dict[str, Entry | None] = {}
        todo: dict[str, tuple[str, os.stat_result]] = {}  # file rel -> (abs, stat)
        dirs: dict[str, list[tuple[str, os.stat_result]]] = {}
        files: dict[str, os.stat_result] = {}
        for rel in dict.fromkeys(rels):
            try:
                st = os.stat(os.path.join(self.root, rel))
            except (FileNotFoundError, NotADirectoryError):
                result[rel] = None
                continue
            except OSError as e:  # ELOOP: a link loop
                raise SymlinkError(f"'{rel}': {e.strerror}; remove the link") from None
            if stat_mod.S_ISDIR(st.st_mode):
                dirs[rel] = self._walk(rel)
                members = dirs[rel]
            else:
                files[rel] = st
                members = [(rel, st)]
            for r, s in members:
                todo[r] = (os.path.join(self.root, r), s)
        known: dict[str, str] = {}
        misses: list[tuple[str, str, os.stat_result]] = []
        for r, (ab, s) in todo.items():
            key = (s.st_ino, s.st_size, s.st_mtime_ns)
            hexd = self.state.get(r, key)
            if hexd is None:
                misses.append((r, ab, s))
            else:
                known[r] = hexd
        if misses:
            def work(item: tuple[str, str, os.stat_result]) -> tuple[str, str, os.stat_result]:
                r, ab, s = item
                return r, file_digest(ab), s

            total = sum(m[2].st_size for m in misses)
            # threads pay off only for large reads: with many small files the per-file Python work
            # holds the GIL and two threads measured slower than one (20,000 x 1 KiB: 0.67x)
            if (len(misses) == 1 or self.jobs == 1 or total < _PARALLEL_MIN_BYTES
                    or total < len(misses) * _PARALLEL_MIN_AVG):
                done = list(map(work, misses))  # small work: threads would cost more than they save
            else:
                # one list per worker, big files dealt out first, so no worker finishes last alone
                misses.sort(key=lambda m: -m[2].st_size)
                lanes: list[list[tuple[str, str, os.stat_result]]] = [[] for _ in range(min(self.jobs, len(misses)))]
                loads = [0] * len(lanes)
                for m in misses:
                    i = loads.index(min(loads))
                    lanes[i].append(m)
                    loads[i] += m[2].st_size + 4096  # a per-file cost, so many tiny files spread too
                with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
                    done = [r for lane in pool.map(lambda ms: [work(m) for m in ms], lanes) for r in lane]
            for r, hexd, s in done:
                known[r] = hexd
                self.bytes_read += s.st_size
                self.files_read += 1
                self.state.put(r, (s.st_ino, s.st_size, s.st_mtime_ns), hexd)
        for rel, st in files.items():
            result[rel] = Entry(digest=Digest(known[rel]), size=st.st_size)
        for rel, members in dirs.items():
            plen = len(rel) + 1
            manifest = tuple(sorted((r[plen:], known[r], s.st_size) for r, s in members))
            result[rel] = Entry(
                digest=Digest(hashlib.sha256(dir_manifest_bytes(manifest)).hexdigest()),
                size=sum(m[2] for m in manifest),
                kind="dir",
                files=manifest,
            )
        return result

    def hash_path(self, rel: str) -> Entry | None:
        return self.hash_many([rel])[rel]
