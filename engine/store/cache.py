"""The content-addressed object cache (``.certus/cache``) and the run cache (``.certus/runs``).

Objects live at ``<root>/<hex[:2]>/<hex[2:]>``, are written once (temp file + rename) and
made read-only. A directory is stored as its files plus its manifest object, whose digest
is the directory's digest. Outputs are linked into the workspace by the first link type
that works of the configured list (default reflink, then copy; hardlink is opt-in via
``certus.cache.link_types``).

Local state is a convenience, never evidence; Certus never stores or restores bytes it did
not hash:

* Storing hashes the bytes actually written into the cache (while copying; the clone or the
  linked inode otherwise) and refuses (:class:`HashMismatchError`, nothing left behind) when
  they differ from the digest the coordinator recorded, so a file changing mid-copy cannot be
  stored under another file's name. Each object's (inode, size, mtime_ns, ctime_ns) is then
  recorded in the stat cache; an already present object whose stat moved since is re-hashed
  (and replaced by the fresh bytes if it was damaged) rather than trusted.
* Restoring hashes every object on its first use in a process, while copying it out (again
  only when its stat changed since), into a temporary path that replaces the output only when
  everything verified. A damaged object is moved to ``.certus/quarantine/`` and the restore
  fails naming the output; ``repro`` then runs the stage instead.
* Symbolic links are never followed: an output that is a link, or holds one, is refused with
  the path named (see :mod:`engine.store.hashing`); a restore never writes through a parent
  directory that a link leads out of the workspace (:func:`engine.core.paths.safe_target`).
* Run-cache records are input: one that is malformed or does not match the stage's declared
  outputs is ignored with a note (:meth:`RunCache.lookup`).
* A full or read-only cache file system is a one-line :class:`CacheError` naming the output
  and the cache path; temp files are removed.

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
import hashlib
import os
import shutil
import stat as stat_mod
import time
from collections.abc import Iterator, Sequence
from typing import Any

from engine.core.digest import Digest
from engine.core.paths import SymlinkError, path_problem, safe_target
from engine.errors import CacheError, HashMismatchError
from engine.store.fsutil import atomic_write
from engine.store.hashing import Entry, copy_hashing, dir_manifest_bytes, file_digest, parse_dir_manifest
from engine.store.runcache import RunCache, record_problem
from engine.store.state import ObjectKey, StateStore

__all__ = ["ObjectCache", "RunCache", "LINK_TYPES", "DEFAULT_LINK_TYPES", "record_problem"]

LINK_TYPES = ("reflink", "hardlink", "copy")
# Hardlinks are opt-in: a user editing a hardlinked output in place (as root, whom the
# read-only mode does not stop) would rewrite the only cached copy of that version.
DEFAULT_LINK_TYPES = ("reflink", "copy")
_FICLONE = 0x40049409
_LINK_ERRNOS = (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EMLINK, errno.ENOTTY,
                errno.ENOSYS, errno.EBADF)
# (cache root, hex) -> the object's stat when this process last hashed it: first use in a process
# always hashes; later uses re-hash only if the stat moved
_VERIFIED: dict[tuple[str, str], ObjectKey] = {}


def link_types_from(config: dict[str, Any]) -> tuple[str, ...]:
    """``certus.cache.link_types`` from the composed config, or the default."""
    certus_cfg = config.get("certus")
    cache_cfg = certus_cfg.get("cache") if isinstance(certus_cfg, dict) else None
    links = cache_cfg.get("link_types") if isinstance(cache_cfg, dict) else None
    if isinstance(links, str):
        links = [t.strip() for t in links.split(",")]
    return tuple(links) if links else DEFAULT_LINK_TYPES


def _reflink(src: str, dst: str) -> None:
    s = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.ioctl(d, _FICLONE, s)
        finally:
            os.close(d)
    finally:
        os.close(s)


def _objkey(st: os.stat_result) -> ObjectKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _shown(quarantined: str | None) -> str:
    return f".certus/quarantine/{os.path.basename(quarantined)}" if quarantined else "nothing: it was removed"


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        remove_path(path)


class ObjectCache:
    """Write-once content-addressed storage with workspace linking."""

    def __init__(self, root: str, *, link_types: Sequence[str] = DEFAULT_LINK_TYPES,
                 state: StateStore | None = None, failed_links: set[str] | None = None) -> None:
        bad = [t for t in link_types if t not in LINK_TYPES]
        if bad or not link_types:
            raise CacheError(f"cache link types {list(link_types)}: expected a list drawn from {LINK_TYPES}")
        self.root = root
        self.link_types = tuple(link_types)
        # link types that failed here once; ``failed_links`` shares what earlier caches on the same file
        # systems learned (a failed reflink costs ~1 ms a file to learn again)
        self._broken: set[str] = failed_links if failed_links is not None else set()
        self.state = state
        self.verify = True  # only benchmarks turn this off, to measure what verification costs
        self.durable = True  # False: no fsync per object (a scratch area whose reader re-hashes every byte)

    def path(self, digest: Digest) -> str:
        return os.path.join(self.root, digest.hex[:2], digest.hex[2:])

    def has(self, digest: Digest) -> bool:
        return os.path.exists(self.path(digest))

    # -- placing bytes ---------------------------------------------------------------------

    def _place(self, src: str, dst: str, *, verify: bool) -> str | None:
        """Put ``src``'s bytes at ``dst`` (which must not exist) by the first working link type;
        with ``verify``, return the SHA-256 of the bytes now at ``dst``."""
        for kind in self.link_types:
            if kind in self._broken:
                continue
            try:
                if kind == "reflink":
                    _reflink(src, dst)
                elif kind == "hardlink":
                    os.link(src, dst)
                elif verify:
                    return copy_hashing(src, dst)  # one pass: the bytes written are the bytes hashed
                else:
                    shutil.copyfile(src, dst, follow_symlinks=False)
                    return None
                return file_digest(dst) if verify else None
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                if kind == "copy" or e.errno not in _LINK_ERRNOS:
                    raise
                self._broken.add(kind)
        raise CacheError(f"cannot link {src} to {dst} with any of {self.link_types}")

    def _trusted(self, digest: Digest, st: os.stat_result) -> bool:
        """Hashed by this process already, or (for an object found in place) since it was stored."""
        return _VERIFIED.get((self.root, digest.hex)) == _objkey(st)

    def _remember(self, digest: Digest, st: os.stat_result) -> None:
        _VERIFIED[(self.root, digest.hex)] = _objkey(st)

    # -- writing ---------------------------------------------------------------------------

    def _existing_ok(self, digest: Digest, dst: str) -> bool:
        """An object already in place is kept if its stat is the one recorded when it was stored
        (or it re-hashes right); a damaged one is quarantined so the fresh bytes replace it."""
        try:
            st = os.stat(dst)
        except FileNotFoundError:
            return False
        if self._trusted(digest, st) or (self.state is not None and self.state.object_key(digest.hex) == _objkey(st)):
            return True
        if file_digest(dst) == digest.hex:
            self._record(digest, dst)
            return True
        self.quarantine(digest)
        return False

    def _record(self, digest: Digest, dst: str) -> None:
        st = os.stat(dst)
        self._remember(digest, st)
        if self.state is not None:
            self.state.put_object(digest.hex, _objkey(st))

    def _store(self, src: str, digest: Digest, label: str) -> None:
        dst = self.path(digest)
        if self._existing_ok(digest, dst):
            return
        tmp = f"{dst}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            _unlink_quietly(tmp)
            if not stat_mod.S_ISREG(os.lstat(src).st_mode):
                raise SymlinkError(f"output '{label}' is not a regular file (a symbolic link?); Certus stores "
                                   "only plain files: write the file itself")
            actual = self._place(src, tmp, verify=True)
            if actual != digest.hex:
                raise HashMismatchError(
                    f"output '{label}' changed while it was being stored (its bytes now hash to sha256:"
                    f"{str(actual)[:16]}…, not the {digest.short}… recorded when the stage finished); nothing was "
                    "cached: make sure nothing else writes the stage's outputs and re-run it")
            if self.durable:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dst)
        except OSError as e:
            _unlink_quietly(tmp)
            if e.errno == errno.ELOOP:
                raise SymlinkError(f"output '{label}' is a symbolic link; Certus stores only plain files") from None
            raise self._disk_error(label, dst, e) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self._record(digest, dst)

    def _disk_error(self, label: str, where: str, e: OSError) -> CacheError:
        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the cache is on a read-only file system", errno.EACCES: "the cache is not writable",
                errno.EFBIG: "the file is larger than this process may write"}.get(e.errno or 0, e.strerror)
        where = os.path.relpath(where, os.path.dirname(os.path.dirname(self.root)))  # .certus/cache/ab/…
        return CacheError(f"cannot store output '{label}' in the cache at {where}: {what}; free space there (or "
                          "make .certus/cache writable) and run 'certus repro' again")

    def add_bytes(self, data: bytes, digest: Digest, label: str = "") -> None:
        if hashlib.sha256(data).hexdigest() != digest.hex:
            raise HashMismatchError(f"output '{label}': its manifest does not hash to {digest}")
        dst = self.path(digest)
        if not self._existing_ok(digest, dst):
            try:
                atomic_write(dst, data, mode=0o444)
            except OSError as e:
                raise self._disk_error(label, dst, e) from None
            self._record(digest, dst)

    def add(self, workspace: str, rel: str, entry: Entry) -> None:
        """Store a hashed output (file or directory) in the cache."""
        if entry.kind == "dir":
            if os.path.islink(os.path.join(workspace, rel)):
                raise SymlinkError(f"output '{rel}' is a symbolic link; Certus stores only plain files")
            for sub, hexd, _ in entry.files:
                self._store(os.path.join(workspace, rel, sub), Digest(hexd), f"{rel}/{sub}")
            self.add_bytes(dir_manifest_bytes(entry.files), entry.digest, rel)
        else:
            self._store(os.path.join(workspace, rel), entry.digest, rel)

    # -- reading ---------------------------------------------------------------------------

    def manifest(self, digest: Digest) -> list[tuple[str, str]]:
        """A directory's manifest, hash-checked (a damaged one is quarantined) and shape-checked."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise CacheError(f"cache object {digest} (a directory manifest) is missing") from e
        if hashlib.sha256(data).hexdigest() != digest.hex:  # checkout quarantines it; verify only reports
            raise HashMismatchError(f"cache object {digest} (a directory manifest) is corrupt")
        try:
            pairs = parse_dir_manifest(data)
        except (ValueError, TypeError) as e:
            raise CacheError(f"cache object {digest} is not a directory manifest") from e
        for rel, hexd in pairs:
            norm, why = path_problem(f"d/{rel}") if isinstance(rel, str) else (None, "not a string")
            if why or norm != f"d/{rel}" or not isinstance(hexd, str) or len(hexd) != 64:
                raise CacheError(f"cache object {digest}: manifest entry {str(rel)[:80]!r} is malformed")
        return pairs

    def objects_of(self, digest: Digest, kind: str) -> list[Digest]:
        """Every object an output needs: the file, or the manifest plus its files."""
        if kind == "dir":
            return [digest] + [Digest(h) for _, h in self.manifest(digest)]
        return [digest]

    def complete(self, digest: Digest, kind: str) -> bool:
        try:
            return all(self.has(d) for d in self.objects_of(digest, kind))
        except (CacheError, ValueError):
            return False

    def check(self, digest: Digest) -> None:
        """Re-hash an object; raise :class:`HashMismatchError` if it is corrupt."""
        p = self.path(digest)
        if not os.path.exists(p):
            raise CacheError(f"cache object {digest} is missing")
        actual = file_digest(p)
        if actual != digest.hex:
            raise HashMismatchError(f"cache object {p} hashes to sha256:{actual}, expected {digest}")

    def quarantine(self, digest: Digest) -> str | None:
        """Move a damaged object out of the cache (to ``.certus/quarantine/``), kept for inspection."""
        src = self.path(digest)
        qdir = os.path.join(os.path.dirname(self.root), "quarantine")
        dst = os.path.join(qdir, f"{digest.hex}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}")
        _VERIFIED.pop((self.root, digest.hex), None)
        try:
            os.makedirs(qdir, exist_ok=True)
            os.replace(src, dst)
            return dst
        except FileNotFoundError:
            return None
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(src)
            return None

    def _restore_one(self, rel: str, digest: Digest, tmp: str) -> None:
        """Place one verified object at ``tmp``: hashed while copying, unless this process
        already hashed it and its stat has not moved since."""
        p = self.path(digest)
        try:
            st = os.lstat(p)
            if not stat_mod.S_ISREG(st.st_mode):
                raise FileNotFoundError(p)  # a link or anything else in place of an object: not ours
        except FileNotFoundError:
            raise CacheError(f"cannot restore '{rel}': cache object {digest} is missing; "
                             f"re-run the stage that produces it") from None
        if not self.verify or self._trusted(digest, st):
            self._place(p, tmp, verify=False)
            return
        actual = self._place(p, tmp, verify=True)
        if actual != digest.hex:
            _unlink_quietly(tmp)
            where = self.quarantine(digest)
            how = " (written through a hardlink?)" if "hardlink" in self.link_types else ""
            raise HashMismatchError(
                f"cannot restore '{rel}': cache object {digest.short}… was modified{how} and has been removed "
                f"from the cache (it hashes to {str(actual)[:12]}…; kept as {_shown(where)}); "
                "re-run the stage that produces it")
        self._remember(digest, st)

    def checkout(self, workspace: str, rel: str, digest: Digest, kind: str) -> None:
        """Make ``rel`` in the workspace hold exactly the cached output, every byte verified.

        Everything is placed under a temporary name first, so a damaged object leaves the
        workspace as it was."""
        target = safe_target(workspace, rel)
        try:
            objects = [("", digest)] if kind != "dir" else [(sub, Digest(h)) for sub, h in self.manifest(digest)]
        except HashMismatchError:
            where = self.quarantine(digest)
            raise HashMismatchError(
                f"cannot restore '{rel}': its directory manifest {digest.short}… was modified and has been removed "
                f"from the cache (kept as {_shown(where)}); "
                "re-run the stage that produces it") from None
        for _, d in objects:
            if not self.has(d):
                raise CacheError(f"cannot restore '{rel}': cache object {d} is missing; "
                                 "re-run the stage that produces it")
        tmp = f"{target}.certus-tmp"
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _unlink_quietly(tmp)
            if kind == "dir":
                os.mkdir(tmp)
            for sub, d in objects:
                dst = os.path.join(tmp, sub) if sub else tmp
                if sub:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                self._restore_one(f"{rel}/{sub}" if sub else rel, d, dst)
            remove_path(target)
            os.replace(tmp, target)
        except OSError as e:
            _unlink_quietly(tmp)
            raise CacheError(f"cannot restore '{rel}': {e.strerror} ({e.filename or target})") from None
        except BaseException:
            _unlink_quietly(tmp)
            raise

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
