"""The content-addressed object cache (``.certus/cache``) and the run cache (``.certus/runs``).

Objects live at ``<root>/<hex[:2]>/<hex[2:]>``, are written once (temp file + rename) and
made read-only. A directory is stored as its files plus its manifest object, whose digest
is the directory's digest. Outputs are linked into the workspace by the first link type
that works of the configured list (default reflink, then copy; hardlink is opt-in via
``certus.cache.link_types`` and then every restore re-verifies objects whose stat changed).

A stage cannot corrupt the cache through a hardlink: the coordinator deletes a stage's
declared outputs before the command runs (so it writes new inodes), and checks after the
run that no dep changed in place; a dep that did is reported and its object quarantined.

The run cache maps a stage key to the outputs that key produced, so a key seen before
(a reverted param, say) restores its outputs instead of running the command.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat as stat_mod
from collections.abc import Iterator, Sequence
from typing import Any

from engine.digest import Digest
from engine.errors import CacheError, HashMismatchError
from engine.fsutil import atomic_write
from engine.hashing import Entry, dir_manifest_bytes, file_digest
from engine.state import StateStore

__all__ = ["ObjectCache", "RunCache", "LINK_TYPES", "DEFAULT_LINK_TYPES"]

LINK_TYPES = ("reflink", "hardlink", "copy")
# Hardlinks are opt-in: a user editing a hardlinked output in place (as root, whom the
# read-only mode does not stop) would rewrite the only cached copy of that version.
DEFAULT_LINK_TYPES = ("reflink", "copy")
_FICLONE = 0x40049409


def link_types_from(config: dict[str, Any]) -> tuple[str, ...]:
    """``certus.cache.link_types`` from the composed config, or the default."""
    certus_cfg = config.get("certus")
    cache_cfg = certus_cfg.get("cache") if isinstance(certus_cfg, dict) else None
    links = cache_cfg.get("link_types") if isinstance(cache_cfg, dict) else None
    if isinstance(links, str):
        links = [t.strip() for t in links.split(",")]
    return tuple(links) if links else DEFAULT_LINK_TYPES


def _reflink(src: str, dst: str) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())


class ObjectCache:
    """Write-once content-addressed storage with workspace linking."""

    def __init__(self, root: str, *, link_types: Sequence[str] = DEFAULT_LINK_TYPES,
                 state: StateStore | None = None) -> None:
        bad = [t for t in link_types if t not in LINK_TYPES]
        if bad or not link_types:
            raise CacheError(f"cache link types {list(link_types)}: expected a list drawn from {LINK_TYPES}")
        self.root = root
        self.link_types = tuple(link_types)
        self._broken: set[str] = set()  # link types that failed here once
        self.state = state
    def path(self, digest: Digest) -> str:
        return os.path.join(self.root, digest.hex[:2], digest.hex[2:])

    def has(self, digest: Digest) -> bool:
        return os.path.exists(self.path(digest))

    # -- writing ---------------------------------------------------------------------------

    def _place(self, src: str, dst: str, *, into_cache: bool) -> str:
        """Put ``src``'s bytes at ``dst`` (which must not exist) by the first working link type."""
        for kind in self.link_types:
            if kind in self._broken:
                continue
            try:
                if kind == "reflink":
                    _reflink(src, dst)
                elif kind == "hardlink":
                    os.link(src, dst)
                else:
                    shutil.copyfile(src, dst)
                return kind
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                if kind == "copy" or e.errno not in (
                    errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EMLINK,
                    errno.ENOTTY, errno.ENOSYS, errno.EBADF,
                ):
                    raise
                self._broken.add(kind)
        raise CacheError(f"cannot link {src} to {dst} with any of {self.link_types}")

    def _store(self, src: str, digest: Digest) -> None:
        dst = self.path(digest)
        if os.path.exists(dst):
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self._place(src, tmp, into_cache=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, dst)

    def add_bytes(self, data: bytes, digest: Digest) -> None:
        dst = self.path(digest)
        if not os.path.exists(dst):
            atomic_write(dst, data, mode=0o444)

    def add(self, workspace: str, rel: str, entry: Entry) -> None:
        """Store a hashed output (file or directory) in the cache."""
        if entry.kind == "dir":
            for sub, hexd, _ in entry.files:
                self._store(os.path.join(workspace, rel, sub), Digest(hexd))
            self.add_bytes(dir_manifest_bytes(entry.files), entry.digest)
        else:
            self._store(os.path.join(workspace, rel), entry.digest)

    # -- reading ---------------------------------------------------------------------------

    def manifest(self, digest: Digest) -> list[tuple[str, str]]:
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise CacheError(f"cache object {digest} (a directory manifest) is missing") from e
        return [(rel, hexd) for rel, hexd in json.loads(data)]

    def objects_of(self, digest: Digest, kind: str) -> list[Digest]:
        """Every object an output needs: the file, or the manifest plus its files."""
        if kind == "dir":
            return [digest] + [Digest(h) for _, h in self.manifest(digest)]
        return [digest]

    def complete(self, digest: Digest, kind: str) -> bool:
        try:
            return all(self.has(d) for d in self.objects_of(digest, kind))
        except CacheError:
            return False

    def check(self, digest: Digest) -> None:
        """Re-hash an object; raise :class:`HashMismatchError` if it is corrupt."""
        p = self.path(digest)
        if not os.path.exists(p):
            raise CacheError(f"cache object {digest} is missing")
        actual = file_digest(p)
        if actual != digest.hex:
            raise HashMismatchError(f"cache object {p} hashes to sha256:{actual}, expected {digest}")

    def _verify_linked(self, digest: Digest, rel: str) -> None:
        """With hardlinks an object may have been written through a workspace link: re-check
        it unless its stat is unchanged since it was last verified."""
        p = self.path(digest)
        st = os.stat(p)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        tag = "cache:" + digest.hex
        if self.state is not None and self.state.get(tag, key) == digest.hex:
            return
        try:
            self.check(digest)
        except HashMismatchError as e:
            self.quarantine(digest)
            raise CacheError(f"cannot restore '{rel}': cache object {digest} was modified (written through a "
                             "hardlink?) and has been removed; re-run the stage that produces it") from e
        if self.state is not None:
            self.state.put(tag, key, digest.hex)

    def quarantine(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def checkout(self, workspace: str, rel: str, digest: Digest, kind: str) -> None:
        """Make ``rel`` in the workspace hold exactly the cached output."""
        dst = os.path.join(workspace, rel)
        objects = [(rel, digest)] if kind != "dir" else [
            (f"{rel}/{sub}", Digest(h)) for sub, h in self.manifest(digest)
        ]
        for _, d in objects:
            if not self.has(d):
                raise CacheError(f"cannot restore '{rel}': cache object {d} is missing")
            if "hardlink" in self.link_types:
                self._verify_linked(d, rel)
        remove_path(dst)
        if kind == "dir":
            os.makedirs(dst, exist_ok=True)
        for r, d in objects:
            target = os.path.join(workspace, r)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.certus-tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            self._place(self.path(d), tmp, into_cache=False)
            os.replace(tmp, target)

    def iter_objects(self) -> Iterator[tuple[Digest, str]]:
        if not os.path.isdir(self.root):
            return
        for a in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, a)
            if len(a) != 2 or not os.path.isdir(sub):
                continue
            for b in sorted(os.listdir(sub)):
                p = os.path.join(sub, b)
                try:
                    yield Digest(a + b), p
                except ValueError:
                    yield None, p  # type: ignore[misc]  # stray temp file


def remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree if present (read-only files included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat_mod.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class RunCache:
    """Stage key -> recorded outputs (and which run first produced them)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, key: Digest) -> str:
        return os.path.join(self.root, key.hex[:2], key.hex[2:] + ".json")

    def get(self, key: Digest) -> dict[str, Any] | None:
        try:
            with open(self._path(key), "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, key: Digest, record: dict[str, Any]) -> None:
        if os.path.exists(self._path(key)):
            return  # first producer wins: later identical runs point back at it
        atomic_write(self._path(key), json.dumps(record, sort_keys=True, indent=1).encode())

    def items(self) -> Iterator[tuple[Digest, dict[str, Any]]]:
        if not os.path.isdir(self.root):
            return
        for a in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, a)
            if not os.path.isdir(sub):
                continue
            for b in sorted(os.listdir(sub)):
                if b.endswith(".json"):
                    key = Digest(a + b[:-5])
                    rec = self.get(key)
                    if rec is not None:
                        yield key, rec

    def remove(self, key: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
