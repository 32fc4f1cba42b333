"""The append-only, signed provenance ledger: an RFC 9162 Merkle log kept in a git-friendly directory.

Entries are opaque bytes (the caller passes DSSE envelope JSON). Leaf ``i`` is
``merkle.leaf_hash(entry_i)`` and the tree is RFC 6962 / RFC 9162 §2.1 over entries in append
order. After every append the log signs a C2SP tlog checkpoint (c2sp.org/tlog-checkpoint: origin,
size, root) as a C2SP signed note (c2sp.org/signed-note), so a verifier can check any entry's
inclusion and any two sizes' consistency against signed roots.

On-disk layout (one directory, e.g. ``.certus/ledger/``, meant to be committed to git; every
file but the two small atomically-replaced ones only ever grows at its end)::

    entries.jsonl      one frame per entry, in order: canonical JSON (RFC 8785) and a newline,
                       {"entry": base64(entry bytes), "index": i, "leaf": hex(leaf hash)}.
                       The leaf hash doubles as the frame checksum, the index catches reordering,
                       and a last line without its newline is a partial frame.
    checkpoints.jsonl  the history of signed checkpoints, one per append, strictly growing sizes:
                       canonical JSON {"note": "<signed note text>"} and a newline.
    checkpoint         the latest signed checkpoint note, verbatim (what is published/witnessed).
    state.json         a cache for O(log n) appends: {"format", "origin", "size", "frontier"
                       (perfect-subtree roots, merkle.Frontier), "entries_bytes",
                       "checkpoints_bytes"}; canonical JSON and a newline.

``checkpoint`` is the commit point. An append, once the new note is signed, (1) appends the
frames to ``entries.jsonl`` and fsyncs, (2) appends the note to ``checkpoints.jsonl`` and fsyncs,
(3) replaces ``checkpoint`` atomically (temporary file, fsync, rename, fsync the directory), then
(4) replaces ``state.json`` the same way. It reads nothing: the frontier and byte offsets are in
memory from :meth:`Ledger.open`, so an append costs O(log n) hashing and writes.

A crash before (3) leaves bytes past the checkpoint in the two logs: a *torn tail*. ``open``
reports it (:meth:`Ledger.status`), never reads past the checkpoint, and refuses to append until
:meth:`Ledger.repair` cuts the tails back (explicitly, never on its own). A crash between (3) and
(4) leaves ``state.json`` one append behind; ``open`` rolls it forward from the frames after its
offsets, which costs only those frames. Anything else (a short file, a frame that does not hash
to its leaf, a root the checkpoint did not sign) is damage: ``open`` lists it and refuses to append,
and :meth:`Ledger.verify_structure` re-derives everything from scratch and names every problem.

Signed history can still be rewritten by whoever holds the key. :meth:`Ledger.witness` (and the
pure :func:`check_extends`) compare the ledger with a checkpoint remembered from an earlier look,
via a consistency proof: a smaller size is a rollback, a failed proof is a fork or reordering.

The caller holds the workspace lock; the ledger takes none of its own.
"""

from __future__ import annotations

import binascii
import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.errors import LedgerError, SignatureError
from engine.provenance import merkle
from engine.provenance.ledger_format import (  # noqa: F401  (re-exported: the ledger's public names)
    _LEAF,
    _MAX_LISTED,
    CHECKPOINT,
    CHECKPOINTS,
    ENTRIES,
    FORMAT,
    STATE,
    ForkError,
    LedgerStatus,
    RollbackError,
    StepHook,
    TornTail,
    TornTailError,
    _append_durably,
    _decode_note_line,
    _encode_note_line,
    _frame,
    _lines,
    _no_hook,
    _parse_checkpoint,
    _read,
    _replace_durably,
    _size,
    _State,
    check_extends,
    decode_frame,
    encode_frame,
)
from engine.provenance.note import Checkpoint, NoteSigner, Verifier

__all__ = [
    "CHECKPOINT",
    "CHECKPOINTS",
    "ENTRIES",
    "STATE",
    "ForkError",
    "Ledger",
    "LedgerStatus",
    "RollbackError",
    "TornTail",
    "TornTailError",
    "check_extends",
    "decode_frame",
    "encode_frame",
]

class Ledger:
    """An open ledger directory. Use :meth:`open`; the caller holds the workspace lock."""

    def __init__(self, *, path: Path, origin: str, hook: StepHook) -> None:
        self.path = path
        self.origin = origin
        self._hook = hook
        self._state = _State(origin, merkle.Frontier(), 0, 0)
        self._state_on_disk: _State | None = None
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_text: str | None = None
        self._torn: tuple[TornTail, ...] = ()
        self._damage: list[str] = []
        self._checkpoint_unreadable = False

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        origin: str,
        create: bool = True,
        _hook: StepHook | None = None,
    ) -> Ledger:
        """Open (or, with ``create``, initialise) the ledger at ``path`` for log ``origin``.

        Reads only ``state.json``, ``checkpoint`` and the file sizes (plus any frames that
        ``state.json`` is behind by). Content problems do not raise: see :meth:`status`.
        ``_hook`` is a test seam called with the name of each durable step of an append.
        """
        Checkpoint(origin=origin, size=0, root_hash=merkle.SHA256.empty_root())  # validates origin
        ledger = cls(path=Path(path), origin=origin, hook=_hook or _no_hook)
        fresh = not (ledger._file(STATE).exists() or ledger._file(CHECKPOINT).exists())
        if fresh and _size(ledger._file(ENTRIES)) == 0 and _size(ledger._file(CHECKPOINTS)) == 0:
            if not create:
                raise LedgerError(f"{ledger.path}: no ledger here")
            ledger._initialise()
        ledger._load()
        return ledger

    def _file(self, name: str) -> Path:
        return self.path / name

    def _initialise(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (ENTRIES, CHECKPOINTS):
            os.close(os.open(self._file(name), os.O_WRONLY | os.O_CREAT, 0o644))
        _replace_durably(self._file(STATE), self._state.to_bytes(), _no_hook)

    def _load(self) -> None:
        damage, cp_path, state_path = self._damage, self._file(CHECKPOINT), self._file(STATE)
        raw = _read(cp_path)
        if raw is not None:
            try:
                self._checkpoint_text = raw.decode("utf-8")
                self._checkpoint = _parse_checkpoint(self._checkpoint_text)
            except (UnicodeDecodeError, SignatureError, LedgerError) as e:
                damage.append(f"{cp_path}: unreadable ({e}): the file is damaged, not a torn tail; "
                              f"'certus ledger repair' restores it from the last line of {CHECKPOINTS}")
                self._checkpoint_unreadable = True
                return
            if self._checkpoint.origin != self.origin:
                damage.append(f"{cp_path}: origin '{self._checkpoint.origin}', expected '{self.origin}'")
        size = self._checkpoint.size if self._checkpoint else 0

        base = _State(self.origin, merkle.Frontier(), 0, 0)
        data = _read(state_path)
        with contextlib.suppress(LedgerError):  # missing or malformed: rebuilt below, rewritten by repair()
            self._state_on_disk = _State.from_bytes(data) if data is not None else None
        on_disk = self._state_on_disk
        if on_disk is not None:
            if on_disk.origin != self.origin:
                raise LedgerError(f"{state_path}: origin '{on_disk.origin}', but opened as '{self.origin}'")
            if on_disk.frontier.size <= size:
                base = on_disk
            else:
                ahead = on_disk.frontier.size
                damage.append(f"{state_path}: size {ahead} is past the checkpoint (size {size})")
        self._state = self._roll_forward(base, size)
        if self._checkpoint and not damage and self._state.frontier.root() != self._checkpoint.root_hash:
            damage.append(
                f"{cp_path}: root {self._checkpoint.root_hash.hex()} is not the root of entries "
                f"0..{size - 1} ({self._state.frontier.root().hex()})"
            )
        st = self._state
        for name, committed in ((ENTRIES, st.entries_bytes), (CHECKPOINTS, st.checkpoints_bytes)):
            if (actual := _size(self._file(name))) < committed:
                damage.append(f"{self._file(name)}: {actual} bytes, but the checkpoint covers {committed}")
        self._torn = tuple(self._tails(st))

    def _roll_forward(self, base: _State, size: int) -> _State:
        """Extend ``base`` to the checkpoint's ``size`` by reading only the frames after its offsets."""
        if base.frontier.size == size:
            return base
        entries_path, cps_path = self._file(ENTRIES), self._file(CHECKPOINTS)
        frontier, offset = base.frontier, base.entries_bytes
        for end, line in _lines(_read(entries_path, offset) or b""):
            if frontier.size == size:
                break
            try:
                _, leaf = decode_frame(line, frontier.size)
            except LedgerError as e:
                self._damage.append(f"{entries_path}: entry {frontier.size}: {e}")
                break
            frontier, offset = frontier.append(leaf), base.entries_bytes + end
        if frontier.size < size and not self._damage:
            self._damage.append(f"{entries_path}: {frontier.size} entries, but the checkpoint has {size}")
        cp_offset = base.checkpoints_bytes
        for end, line in _lines(_read(cps_path, cp_offset) or b""):
            try:
                text = _decode_note_line(line)
                if _parse_checkpoint(text).size != size:
                    continue
            except (LedgerError, SignatureError):
                break
            if text != self._checkpoint_text:
                self._damage.append(f"{cps_path}: its checkpoint of size {size} differs from {CHECKPOINT}")
            cp_offset = base.checkpoints_bytes + end
            break
        else:
            self._damage.append(f"{cps_path}: no checkpoint of size {size} after the committed ones")
        return _State(self.origin, frontier, offset, cp_offset)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of committed entries: the size of the latest checkpoint."""
        return self._checkpoint.size if self._checkpoint else 0

    def status(self) -> LedgerStatus:
        """Torn tails and damage found by :meth:`open` (cheap; :meth:`verify_structure` is thorough)."""
        return LedgerStatus(size=self.size, torn_tails=self._torn, damage=tuple(self._damage))

    def checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint as read at open (signatures not checked), or None when empty."""
        return self._checkpoint

    def checkpoint_note(self) -> str | None:
        """The latest signed checkpoint note, verbatim, for publishing or witnessing."""
        return self._checkpoint_text

    def _frames(self, count: int, start: int = 0) -> Iterator[tuple[bytes, bytes]]:
        path = self._file(ENTRIES)
        with open(path, "rb") as f:
            for index in range(count):
                line = f.readline()
                if not line:
                    raise LedgerError(f"{path}: entry {index}: missing (the checkpoint has {self.size})")
                if index < start:
                    continue  # skipped unread: only the frames asked for are decoded and checked
                try:
                    yield decode_frame(line, index)
                except LedgerError as e:
                    raise LedgerError(f"{path}: entry {index}: {e}") from e

    def entries(self, start: int = 0) -> Iterator[bytes]:
        """The committed entries from ``start`` on, in order; each frame is checked against its leaf hash."""
        for entry, _ in self._frames(self.size, start):
            yield entry

    def entries_unchecked(self) -> list[bytes]:
        """The committed entries, decoded without checking each frame's leaf hash and layout.

        Only for a caller that also runs :meth:`verify_structure` over the same files under the
        same lock (``certus verify``): the audit checks every frame, so checking them here as well
        would do the slowest part of reading twice. A frame that does not decode gets the full check.
        """
        out: list[bytes] = []
        with open(self._file(ENTRIES), "rb") as f:
            for index in range(self.size):
                line = f.readline()
                end = line.find(b'","index":')
                try:
                    if not line.startswith(b'{"entry":"') or end < 0:
                        raise ValueError
                    out.append(binascii.a2b_base64(line[10:end]))
                except (ValueError, binascii.Error):
                    if not line:
                        raise LedgerError(f"{self._file(ENTRIES)}: entry {index}: missing (the checkpoint has "
                                          f"{self.size})") from None
                    try:
                        out.append(decode_frame(line, index)[0])
                    except LedgerError as e:
                        raise LedgerError(f"{self._file(ENTRIES)}: entry {index}: {e}") from e
        return out

    def entry(self, index: int) -> bytes:
        """Entry ``index`` (reads the frames before it)."""
        if not 0 <= index < self.size:
            raise LedgerError(f"{self._file(ENTRIES)}: entry {index}: out of range (size {self.size})")
        last = deque(self._frames(index + 1), maxlen=1)  # the frames before it are checked, not kept
        return last[0][0]

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        """Leaf hashes of the first ``size`` entries, as the frames record them.

        Proofs need only these, so entries are not decoded here (:meth:`verify_structure`
        re-derives every leaf from its entry). The full list is checked against the signed root.
        """
        n = self._check_size(size)
        memo = getattr(self, "_leaves_memo", None)  # verify asks twice (witness, inclusion): read the file once
        if memo is not None and memo[0] == self.size and memo[1] == self._checkpoint_text and n <= len(memo[2]):
            return memo[2][:n]
        path, leaves = self._file(ENTRIES), []
        with open(path, "rb") as f:
            for index in range(n):
                m = _LEAF.search(line := f.readline(), max(0, len(line) - 80))
                if m is None:
                    raise LedgerError(f"{path}: entry {index}: no leaf hash (bad or missing frame)")
                leaves.append(bytes.fromhex(m.group(1).decode("ascii")))
        if n == self.size and self._checkpoint and merkle.root(leaves) != self._checkpoint.root_hash:
            raise LedgerError(f"{path}: the leaf hashes are not those the checkpoint signed; run verify")
        if n == self.size:
            self._leaves_memo = (self.size, self._checkpoint_text, leaves)
        return list(leaves)

    def _check_size(self, size: int | None) -> int:
        n = self.size if size is None else size
        if not 0 <= n <= self.size:
            raise LedgerError(f"{self.path}: size {n} is outside the ledger (size {self.size})")
        return n

    def inclusion_proof(self, index: int, size: int | None = None) -> merkle.InclusionProof:
        """Proof that entry ``index`` is in the tree of ``size`` (default: the latest checkpoint)."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise LedgerError(f"{self._file(ENTRIES)}: entry {index}: not in a tree of size {n}")
        return merkle.inclusion_proof(index, self.leaf_hashes(n))

    def consistency_proof(self, size1: int, size2: int | None = None) -> merkle.ConsistencyProof:
        """Proof that the tree of ``size2`` (default: the latest) extends the tree of ``size1``."""
        n = self._check_size(size2)
        if not 0 < size1 <= n:
            raise LedgerError(f"{self.path}: no consistency proof from size {size1} to {n}")
        return merkle.consistency_proof(size1, self.leaf_hashes(n))

    # -- appending -------------------------------------------------------------------------------

    def append(self, entry: bytes, signer: NoteSigner) -> tuple[int, Checkpoint]:
        """Append one entry and sign the new checkpoint; returns (index, checkpoint). O(log n)."""
        return self.append_many([entry], signer)

    def append_many(self, entries: Sequence[bytes], signer: NoteSigner) -> tuple[int, Checkpoint]:
        """Append entries under one new checkpoint; returns (first index, checkpoint)."""
        if self._damage:
            raise LedgerError(f"{self.path}: not appending to a damaged ledger: {self._damage[0]}")
        if self._torn:
            raise TornTailError(str(self._torn[0]))
        if not entries:
            raise LedgerError(f"{self.path}: nothing to append")
        old = self._state
        first, frontier, frames = old.frontier.size, old.frontier, []
        for i, entry in enumerate(entries, first):
            if not isinstance(entry, bytes):
                raise LedgerError(f"{self.path}: entry {i}: expected bytes, got {type(entry).__name__}")
            leaf = merkle.leaf_hash(entry)
            frames.append(_frame(i, entry, leaf))
            frontier = frontier.append(leaf)
        cp = Checkpoint(origin=self.origin, size=frontier.size, root_hash=frontier.root())
        note = cp.sign(signer).to_text()
        data, line = b"".join(frames), _encode_note_line(note)
        new = _State(self.origin, frontier, old.entries_bytes + len(data), old.checkpoints_bytes + len(line))
        hook = self._hook
        try:
            hook("begin")
            _append_durably(self._file(ENTRIES), data, old.entries_bytes)
            hook("entries")
            _append_durably(self._file(CHECKPOINTS), line, old.checkpoints_bytes)
            hook("checkpoints")
            _replace_durably(self._file(CHECKPOINT), note.encode("utf-8"), hook)
        except OSError as e:
            self._torn = tuple(self._tails(old))
            raise LedgerError(f"{self.path}: append of entry {first} failed before its commit point ({e})") from e
        hook("checkpoint")  # committed
        self._state, self._checkpoint, self._checkpoint_text = new, cp, note
        try:
            _replace_durably(self._file(STATE), new.to_bytes(), hook)
        except OSError as e:
            raise LedgerError(f"{self._file(STATE)}: entry {first} committed, but not cached ({e})") from e
        self._state_on_disk = new
        hook("state")
        return first, cp

    def _tails(self, state: _State) -> Iterator[TornTail]:
        for name, committed in ((ENTRIES, state.entries_bytes), (CHECKPOINTS, state.checkpoints_bytes)):
            actual = _size(self._file(name))
            if actual > committed:
                yield TornTail(str(self._file(name)), committed, actual)

    def repair(self) -> list[str]:
        """Cut torn tails back to the last checkpoint and rewrite a stale ``state.json``.

        Explicit, never automatic. Refuses when the ledger is damaged in a way a crash cannot
        explain (restore it from git instead). Returns what it did, one line per action.
        """
        done = []
        if self._checkpoint_unreadable and len(self._damage) == 1:
            done.append(self._restore_checkpoint())
        if self._damage:
            raise LedgerError(f"{self.path}: cannot repair damage: {'; '.join(self._damage)}")
        for tail in self._torn:
            with open(tail.file, "r+b") as f:
                f.truncate(tail.committed_bytes)
                os.fsync(f.fileno())
            done.append(f"{tail.file}: cut {tail.actual_bytes - tail.committed_bytes} bytes (torn tail)")
        self._torn = ()
        if self._state_on_disk != self._state:
            _replace_durably(self._file(STATE), self._state.to_bytes(), _no_hook)
            self._state_on_disk = self._state
            done.append(f"{self._file(STATE)}: rewritten for size {self.size}")
        for name in (CHECKPOINT, STATE):
            tmp = self._file(f".{name}.tmp")
            if tmp.exists():
                tmp.unlink()
                done.append(f"{tmp}: removed (left by a crashed append)")
        return done

    def _restore_checkpoint(self) -> str:
        """Rewrite a garbled ``checkpoint`` from its copy, the last line of ``checkpoints.jsonl``.

        Only when that line parses and its root is the root of the entries it counts; its
        signature is for ``verify`` to judge, as for any checkpoint.
        """
        cps = self._file(CHECKPOINTS)
        lines = [ln for _, ln in _lines(_read(cps) or b"") if ln.endswith(b"\n")]
        try:
            if not lines:
                raise LedgerError(f"{cps} is empty")
            text = _decode_note_line(lines[-1])
            cp = _parse_checkpoint(text)
            leaves = [leaf for _, leaf in self._frames(cp.size)]
        except (LedgerError, SignatureError) as e:
            raise LedgerError(f"{self.path}: cannot restore {CHECKPOINT} from {CHECKPOINTS} ({e}); restore the "
                              "ledger directory from git") from e
        if merkle.root(leaves) != cp.root_hash:
            raise LedgerError(f"{self.path}: the last checkpoint in {CHECKPOINTS} does not match the entries; "
                              "restore the ledger directory from git")
        _replace_durably(self._file(CHECKPOINT), text.encode("utf-8"), _no_hook)
        self._damage, self._checkpoint_unreadable = [], False
        self._checkpoint, self._checkpoint_text = None, None
        self._state_on_disk = None
        self._load()
        return f"{self._file(CHECKPOINT)}: restored from the last line of {CHECKPOINTS} (size {cp.size})"

    # -- verifying ---------------------------------------------------------------------------------

    def witness(self, seen: Checkpoint, *verifiers: Verifier) -> Checkpoint:
        """Check the ledger against a checkpoint remembered from an earlier look; return the current one.

        The current checkpoint must verify under ``verifiers``; then :func:`check_extends` with a
        consistency proof computed from the entries on disk.
        """
        if self._checkpoint_text is None:
            current = Checkpoint(origin=self.origin, size=0, root_hash=merkle.SHA256.empty_root())
        else:
            try:
                current = Checkpoint.from_note(self._checkpoint_text, verifiers)
            except SignatureError as e:
                raise type(e)(f"{self._file(CHECKPOINT)}: {e}") from e
        proof = None
        if 0 < seen.size <= current.size and seen.origin == current.origin:
            proof = merkle.consistency_proof(seen.size, self.leaf_hashes(current.size))
        check_extends(seen, current, proof)
        return current

    def verify_structure(self, *verifiers: Verifier) -> list[str]:
        """Re-derive everything from the files and name every problem; empty means sound.

        Checks every frame (format, index, leaf hash), the current checkpoint and every
        historical one (signature under ``verifiers``, origin, growing sizes, root against the
        entries), torn tails, and that ``state.json`` matches the entries.
        """
        from engine.provenance.ledger_audit import Audit

        audit = Audit(self, verifiers)
        problems = audit.run()
        # (file and line, size, (name, key ID) of every trusted signature) for each checkpoint, so
        # a caller can judge the signing keys at the time of the entries each one commits to
        self.checkpoint_signers: list[tuple[str, int, tuple[tuple[str, bytes], ...]]] = audit.signers
        return problems
