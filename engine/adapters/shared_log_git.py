"""The shared log on a dedicated git ref, ``refs/certus/ledger``, of the workspace's git remote.

Each append is one commit whose parent is the previous tip. Its tree holds ``entries/NNNNNNNN.jsonl``
(chunks of ``chunk`` entries, one per line, so an append rewrites only the last chunk's blob and
older chunk blobs are shared), ``checkpoint`` (the note stored with the append), ``size`` and
``chunk`` (the chunk length the log was created with, so every client agrees on the layout).
Compare-and-swap is git's own: the push is never forced, so a ref that moved meanwhile is
refused as a non-fast-forward and the caller re-reads and retries.

Only plumbing touches the workspace repo: objects are written to its object store and the fetched
tip is kept on ``refs/certus/remotes/<name>/ledger``; HEAD, the index, the working tree and every
branch are left alone. Commits carry a fixed identity and date, so nothing depends on git config.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from engine.adapters.shared_log_types import Remote, Snapshot, check_entries
from engine.errors import SharedLogError, Unreachable

__all__ = ["GitSharedLog", "LEDGER_REF", "CHUNK"]

LEDGER_REF = "refs/certus/ledger"
# Entries per chunk: every append rewrites the last chunk's blob whole (as a loose object on both sides,
# until gc packs them), so with ~2-3 KB envelopes 4096 would cost up to ~10 MB written per append
# (measured: 790 ms an append near the end of a 4096 chunk, 130 ms with 256); 256 keeps that under
# ~0.7 MB while the entries/ tree stays small (391 names at 100,000 entries).
CHUNK = 256
LOCK_PATIENCE_S = 30.0  # a live push holds the remote's ref lock for milliseconds
_IDENT = {"GIT_AUTHOR_NAME": "certus", "GIT_AUTHOR_EMAIL": "certus@localhost",
          "GIT_COMMITTER_NAME": "certus", "GIT_COMMITTER_EMAIL": "certus@localhost",
          "GIT_AUTHOR_DATE": "1970-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "1970-01-01T00:00:00+0000"}
_UNREACHABLE_HINTS = ("does not appear to be a git repository", "could not read from remote",
                      "could not resolve host", "connection refused", "connection timed out", "no such remote",
                      "unable to access", "repository not found", "no route to host")


def _chunk_name(i: int) -> str:
    return f"{i:08d}.jsonl"


class _Unknown:
    """This client has not seen the remote's tip yet (or lost a race since)."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True, slots=True)
class _Head:
    """What an append needs of a tip, kept from the last read or append so the append right after a
    read costs no object reads."""

    tip: str
    size: int
    chunk: int
    checkpoint: bytes
    chunks: dict[str, str]  # entries/ chunk name -> blob id
    last: list[bytes]  # the entries of the last chunk when it is partial, else []


def _parse_tree(data: bytes, oid_len: int) -> dict[str, str]:
    """``name -> hex id`` of a raw tree object (``<mode> <name>\\0<binary id>`` records)."""
    out, i = {}, 0
    while i < len(data):
        nul = data.index(b"\0", i)
        mode, _, name = data[i:nul].partition(b" ")
        if mode != b"100644":
            raise ValueError(f"{name!r} is not a plain file")
        out[name.decode()] = data[nul + 1:nul + 1 + oid_len].hex()
        i = nul + 1 + oid_len
    return out


class GitSharedLog:
    """A :class:`~engine.adapters.shared_log.SharedLog` on ``refs/certus/ledger`` of a git remote."""

    def __init__(self, remote: Remote, workspace: str, *, chunk: int = CHUNK) -> None:
        self.remote = remote
        self.workspace = workspace
        self.git_remote = remote.name if remote.url == "git" else remote.url.split(":", 1)[1]
        self.tracking = f"refs/certus/remotes/{remote.name}/ledger"
        self.new_chunk = chunk
        self._env = {**os.environ, **_IDENT, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": "C"}
        self._locked_since: float | None = None
        self._known: _Head | None | _Unknown = _UNKNOWN  # the remote's tip as of this client's last read/append
        self.lock_patience = LOCK_PATIENCE_S

    # --- git plumbing ------------------------------------------------------------------------

    def _git(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        try:
            out = subprocess.run(["git", "-C", self.workspace, *args], input=stdin, capture_output=True,
                                 env=self._env, timeout=600)
        except FileNotFoundError as e:
            raise SharedLogError(f"remote '{self.remote.name}': git is not installed or not on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise Unreachable(f"remote '{self.remote.name}': git {args[0]} took over 10 minutes; check the "
                              f"network and git remote '{self.git_remote}', then sync again") from e
        if check and out.returncode != 0:
            raise self._error(args[0], out.stderr)
        return out

    def _error(self, what: str, stderr: bytes) -> SharedLogError:
        lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        reason = (lines[-1] if lines else "no message").removeprefix("fatal: ").removeprefix("error: ")
        low = " ".join(lines).lower()
        if "or any of the parent directories" in low or "cannot change to" in low:
            return SharedLogError(f"remote '{self.remote.name}': the workspace {self.workspace} is not a git "
                                  f"repository; a git ledger remote needs one (git init, git remote add)")
        if any(h in low for h in _UNREACHABLE_HINTS):
            return Unreachable(f"remote '{self.remote.name}': git remote '{self.git_remote}' cannot be reached "
                               f"({reason}); check `git remote -v` and the network, then sync again")
        return SharedLogError(f"remote '{self.remote.name}': git {what} failed ({reason})")

    def _fetch(self) -> str | None:
        """Fetch the remote's ledger ref onto the tracking ref; its commit, or None for an empty log."""
        out = self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", self.git_remote,
                        f"+{LEDGER_REF}:{self.tracking}", check=False)
        if out.returncode != 0:
            if b"couldn't find remote ref" in out.stderr:
                self._git("update-ref", "-d", self.tracking, check=False)
                return None
            raise self._error("fetch", out.stderr)
        return self._tip()

    def _tip(self) -> str | None:
        out = self._git("rev-parse", "--verify", "--quiet", f"{self.tracking}^{{commit}}", check=False)
        return out.stdout.decode().strip() if out.returncode == 0 else None

    # --- reading a tip -----------------------------------------------------------------------

    def _load(self, cat: _Cat, tip: str) -> _Head:
        """The head of the commit ``tip``, its last partial chunk included."""
        try:
            size = int(cat.get(f"{tip}:size"))
            chunk = int(cat.get(f"{tip}:chunk"))
        except ValueError as e:
            raise self._malformed(tip, "its size or chunk file is not a number") from e
        if size < 1 or chunk < 1:
            raise self._malformed(tip, "its size or chunk is out of range")
        checkpoint = cat.get(f"{tip}:checkpoint")
        try:
            chunks = _parse_tree(cat.get(f"{tip}:entries", "tree"), len(tip) // 2)
        except ValueError as e:
            raise self._malformed(tip, f"entries/ holds something else than chunk files: {e}") from e
        if set(chunks) != {_chunk_name(i) for i in range((size + chunk - 1) // chunk)}:
            raise self._malformed(tip, "its entries/ chunks do not match its size")
        last = self._chunk_lines(cat, tip, size // chunk, size, chunk) if size % chunk else []
        return _Head(tip, size, chunk, checkpoint, chunks, last)

    def _chunk_lines(self, cat: _Cat, tip: str, i: int, size: int, chunk: int) -> list[bytes]:
        data = cat.get(f"{tip}:entries/{_chunk_name(i)}")
        lines = data.split(b"\n")
        if not data.endswith(b"\n") or len(lines) - 1 != min(chunk, size - i * chunk):
            raise self._malformed(tip, f"chunk {_chunk_name(i)} does not hold the entries its size says")
        return lines[:-1]

    def _malformed(self, tip: str, why: str) -> SharedLogError:
        return SharedLogError(f"remote '{self.remote.name}': {LEDGER_REF} at {tip[:12]} is malformed ({why}); "
                              f"it was not written by Certus: restore it from a clone's {self.tracking}")

    # --- the SharedLog protocol --------------------------------------------------------------

    def read(self, start: int = 0) -> Snapshot:
        tip = self._fetch()
        if tip is None:
            self._known = None
            return Snapshot(0, 0, (), None)
        with _Cat(self, tip) as cat:
            head = self._load(cat, tip)
            size, chunk = head.size, head.chunk
            start = max(0, min(start, size))
            entries: list[bytes] = []
            for i in range(start // chunk, (size + chunk - 1) // chunk):
                lines = head.last if (i + 1) * chunk > size else self._chunk_lines(cat, tip, i, size, chunk)
                entries.extend(lines[max(0, start - i * chunk):])
        self._known = head
        return Snapshot(size, start, tuple(entries), head.checkpoint)

    def append(self, expected_size: int, entries: Sequence[bytes], checkpoint: bytes) -> bool:
        check_entries(self.remote, entries, checkpoint)
        if not entries:
            raise SharedLogError(f"remote '{self.remote.name}': an append needs at least one entry")
        base = self._known
        if base is _UNKNOWN or (base.size if base else 0) != expected_size:
            tip = self._fetch()  # the tip this client knows is absent or another: look at the remote's
            if tip is None:
                base = None
            else:
                with _Cat(self, tip) as cat:
                    base = self._load(cat, tip)
            self._known = base
            if (base.size if base else 0) != expected_size:
                return False
        assert not isinstance(base, _Unknown)
        commit, head = self._build(base, list(entries), checkpoint)
        if self._push(commit):
            self._known = head
            return True
        self._known = _UNKNOWN
        return False

    def _build(self, base: _Head | None, new: list[bytes], checkpoint: bytes) -> tuple[str, _Head]:
        """Write the blobs, trees and commit of ``base`` + ``new``: the commit's id and its head."""
        size = base.size if base else 0
        chunk = base.chunk if base else self.new_chunk
        chunks = dict(base.chunks) if base else {}
        lines = (base.last if base else []) + new
        first = size - len(base.last if base else [])  # index of lines[0]; a multiple of chunk
        names = [_chunk_name((first + off) // chunk) for off in range(0, len(lines), chunk)]
        bodies = [b"".join(e + b"\n" for e in lines[off:off + chunk]) for off in range(0, len(lines), chunk)]
        oids = self._blobs([*bodies, checkpoint, b"%d\n" % chunk, b"%d\n" % (size + len(new))])
        chunks.update(zip(names, oids, strict=False))
        entries_tree = self._git("mktree", "-z", stdin=b"".join(
            f"100644 blob {oid}\t{name}\0".encode() for name, oid in sorted(chunks.items()))).stdout.strip()
        root = zip(("checkpoint", "chunk", "size"), oids[len(bodies):], strict=True)
        tree = self._git("mktree", "-z", stdin=b"".join(
            [f"100644 blob {oid}\t{name}\0".encode() for name, oid in root]
            + [b"040000 tree " + entries_tree + b"\tentries\0"])).stdout.decode().strip()
        parent = ["-p", base.tip] if base else []
        msg = f"certus ledger: {len(new)} entries at {size}, size {size + len(new)}\n".encode()
        commit = self._git("commit-tree", tree, *parent, stdin=msg).stdout.decode().strip()
        total = size + len(new)
        return commit, _Head(commit, total, chunk, checkpoint, chunks, lines[len(lines) - total % chunk:]
                             if total % chunk else [])

    def _blobs(self, bodies: list[bytes]) -> list[str]:
        """Write ``bodies`` as blobs with one ``hash-object`` process; their ids."""
        with tempfile.TemporaryDirectory(prefix="certus-ledger-") as d:
            paths = []
            for i, body in enumerate(bodies):
                paths.append(os.path.join(d, str(i)))
                with open(paths[-1], "wb") as f:
                    f.write(body)
            out = self._git("hash-object", "-w", "--no-filters", "--stdin-paths",
                            stdin="".join(p + "\n" for p in paths).encode())
        oids = out.stdout.decode().split()
        if len(oids) != len(bodies):
            raise SharedLogError(f"remote '{self.remote.name}': git hash-object wrote {len(oids)} of "
                                 f"{len(bodies)} objects")
        return oids

    def _push(self, commit: str) -> bool:
        out = self._git("push", "--porcelain", self.git_remote, f"{commit}:{LEDGER_REF}", check=False)
        status = [ln for ln in out.stdout.decode("utf-8", "replace").splitlines() if "\t" in ln]
        if out.returncode == 0 and status and status[0][0] in " *=":
            self._locked_since = None
            self._git("update-ref", self.tracking, commit, check=False)  # our append is the tip we know now
            return True
        summary = status[0].split("\t", 2)[-1] if status else ""
        detail = (summary + " " + out.stderr.decode("utf-8", "replace")).lower()
        if "non-fast-forward" in detail or "fetch first" in detail or "stale info" in detail:
            self._locked_since = None
            return False
        if ".lock" in detail or "failed to update ref" in detail or "cannot lock ref" in detail:
            return self._lock_contended()
        if status and status[0].startswith("!"):
            raise SharedLogError(f"remote '{self.remote.name}': git push to '{self.git_remote}' was refused "
                                 f"({summary}); check the remote's hooks and permissions for {LEDGER_REF}")
        raise self._error("push", out.stderr)

    def _lock_contended(self) -> bool:
        """Another push holds the remote's ref lock (for milliseconds), or a killed one left it behind."""
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        elif now - self._locked_since > self.lock_patience:
            self._locked_since = None
            raise SharedLogError(
                f"remote '{self.remote.name}': {LEDGER_REF}.lock in git remote '{self.git_remote}' has blocked "
                f"every push for {self.lock_patience:.0f} s: if no push is running there, a killed one left it; "
                f"delete {LEDGER_REF}.lock in that repository, then sync again")
        time.sleep(random.uniform(0.01, 0.1))
        return False


class _Cat:
    """One ``git cat-file --batch`` process: blobs by ``<rev>:<path>``, one request at a time."""

    def __init__(self, log: GitSharedLog, tip: str) -> None:
        self.log, self.tip = log, tip
        self.proc = subprocess.Popen(["git", "-C", log.workspace, "cat-file", "--batch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=log._env)

    def __enter__(self) -> _Cat:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def get(self, spec: str, kind: str = "blob") -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(spec.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) != 3 or header[1] != kind.encode():
            raise self.log._malformed(self.tip, f"'{spec.split(':', 1)[1]}' is missing or not a {kind}")
        data = self.proc.stdout.read(int(header[2]) + 1)
        return data[:-1]
