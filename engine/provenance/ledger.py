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

import base64
import binascii
import contextlib
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LedgerError, SignatureError
from engine.provenance.canonical import CanonicalError, canonical_bytes, from_canonical
from engine.provenance.note import Checkpoint, Note, NoteSigner, Verifier
from engine.provenance import merkle

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

ENTRIES = "entries.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
CHECKPOINT = "checkpoint"
STATE = "state.json"
FORMAT = "certus-ledger/1"
_FRAME_KEYS = frozenset({"entry", "index", "leaf"})
_STATE_KEYS = frozenset({"checkpoints_bytes", "entries_bytes", "format", "frontier", "origin", "size"})
_LEAF = re.compile(rb',"leaf":"([0-9a-f]{64})"\}\n\Z')  # how every canonical frame ends
_MAX_LISTED = 20  # problems listed per file before the rest are counted

StepHook = Callable[[str], None]


class TornTailError(LedgerError):
    """The ledger has bytes past its last checkpoint (a crashed append); run repair first."""


class RollbackError(LedgerError):
    """The ledger is smaller than a checkpoint seen before: entries were removed."""


class ForkError(LedgerError):
    """The ledger's history is not an append-only extension of a checkpoint seen before."""


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes past the last checkpoint in one append-only file: an append that never committed."""

    file: str
    committed_bytes: int
    actual_bytes: int

    def __str__(self) -> str:
        extra = self.actual_bytes - self.committed_bytes
        return (
            f"{self.file}: {extra} bytes past byte {self.committed_bytes} (the last checkpoint) "
            f"are a torn tail; run repair"
        )


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """What :meth:`Ledger.open` found with cheap reads: the committed size, torn tails, damage."""

    size: int
    torn_tails: tuple[TornTail, ...] = ()
    damage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the ledger can be appended to as it is."""
        return not self.torn_tails and not self.damage


# -- pure encodings ---------------------------------------------------------------------------------


def encode_frame(index: int, entry: bytes) -> bytes:
    """One ``entries.jsonl`` line."""
    return _frame(index, entry, merkle.leaf_hash(entry))


def _frame(index: int, entry: bytes, leaf: bytes) -> bytes:
    # The RFC 8785 form of {"entry", "index", "leaf"}, written directly: the keys are already
    # sorted and base64 / hex never need escaping (a test pins this to canonical_bytes).
    return b'{"entry":"%s","index":%d,"leaf":"%s"}\n' % (base64.b64encode(entry), index, leaf.hex().encode())


_CANONICAL_FRAME = re.compile(
    rb'\{"entry":"([A-Za-z0-9+/]*={0,2})","index":(0|[1-9][0-9]{0,17}),"leaf":"([0-9a-f]{64})"\}\n'
)


def decode_frame(line: bytes, index: int) -> tuple[bytes, bytes]:
    """Parse and check one frame (newline included); return ``(entry, leaf_hash)``."""
    fast = _CANONICAL_FRAME.fullmatch(line)
    if fast is not None and int(fast.group(2)) == index:  # the layout _frame writes: no JSON parser needed
        try:
            entry = binascii.a2b_base64(fast.group(1))
        except binascii.Error:
            entry = None
        if entry is not None:
            leaf = merkle.leaf_hash(entry)
            if fast.group(3) == leaf.hex().encode() and line == _frame(index, entry, leaf):
                return entry, leaf
    if not line.endswith(b"\n"):
        raise LedgerError("partial frame (no newline): torn tail")
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise LedgerError(f"bad frame: not JSON ({e})") from e
    if not isinstance(obj, dict) or set(obj) != _FRAME_KEYS:
        raise LedgerError(f"bad frame: expected the fields {', '.join(sorted(_FRAME_KEYS))}")
    if type(obj["index"]) is not int or obj["index"] != index:
        raise LedgerError(f"index field says {obj['index']!r}: entries reordered, inserted or removed")
    try:
        entry = base64.b64decode(obj["entry"], validate=True)
    except (TypeError, ValueError, binascii.Error) as e:
        raise LedgerError("bad frame: 'entry' is not base64") from e
    leaf = merkle.leaf_hash(entry)
    if obj["leaf"] != leaf.hex():
        raise LedgerError(f"leaf hash mismatch: frame says {obj['leaf']}, entry hashes to {leaf.hex()}")
    if line != _frame(index, entry, leaf):
        raise LedgerError("bad frame: not in canonical form")
    return entry, leaf


def _encode_note_line(note_text: str) -> bytes:
    return canonical_bytes({"note": note_text}) + b"\n"


_CANONICAL_NOTE_LINE = re.compile(rb'\{"note":"((?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\n)*)"\}\n')


def _decode_note_line(line: bytes) -> str:
    fast = _CANONICAL_NOTE_LINE.fullmatch(line)  # no escapes but newlines: RFC 8785 output as is
    if fast is not None:
        with contextlib.suppress(UnicodeDecodeError):  # not UTF-8: the strict path says so
            return fast.group(1).decode("utf-8").replace("\\n", "\n")
    if not line.endswith(b"\n"):
        raise LedgerError("partial line (no newline): torn tail")
    try:
        obj = from_canonical(line[:-1])
    except CanonicalError as e:
        raise LedgerError(f"bad line: {e}") from e
    if not isinstance(obj, dict) or set(obj) != {"note"} or not isinstance(obj["note"], str):
        raise LedgerError("bad line: expected {\"note\": <signed note text>}")
    return str(obj["note"])


def _parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note's body without verifying its signatures."""
    return Checkpoint.from_body(Note.from_text(text).text)


@dataclass(frozen=True, slots=True)
class _State:
    """The committed position: what ``state.json`` caches and what appends extend."""

    origin: str
    frontier: merkle.Frontier
    entries_bytes: int
    checkpoints_bytes: int

    def to_bytes(self) -> bytes:
        return canonical_bytes({
            "checkpoints_bytes": self.checkpoints_bytes,
            "entries_bytes": self.entries_bytes,
            "format": FORMAT,
            "frontier": [h.hex() for h in self.frontier.hashes],
            "origin": self.origin,
            "size": self.frontier.size,
        }) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> _State:
        try:
            obj = from_canonical(data[:-1]) if data.endswith(b"\n") else None
            if not isinstance(obj, dict) or set(obj) != _STATE_KEYS or obj["format"] != FORMAT:
                raise ValueError(f"expected {FORMAT} fields {', '.join(sorted(_STATE_KEYS))}")
            frontier = merkle.Frontier.from_dict({"size": obj["size"], "hashes": obj["frontier"]})
            offsets = (obj["entries_bytes"], obj["checkpoints_bytes"])
            if not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets):
                raise ValueError("byte offsets must be non-negative integers")
            return cls(obj["origin"], frontier, obj["entries_bytes"], obj["checkpoints_bytes"])
        except (CanonicalError, ValueError, LedgerError) as e:
            raise LedgerError(f"malformed ({e})") from e


def check_extends(seen: Checkpoint, current: Checkpoint, proof: merkle.ConsistencyProof | None) -> None:
    """The witness rule: ``current`` must be an append-only extension of ``seen``.

    Raises :class:`RollbackError` when ``current`` is smaller (truncation, rollback) and
    :class:`ForkError` when the consistency proof fails (history rewritten, reordered or forked,
    even under a valid signature).
    """
    if current.origin != seen.origin:
        raise ForkError(f"checkpoint: origin '{current.origin}', but the seen one is for '{seen.origin}'")
    if current.size < seen.size:
        raise RollbackError(
            f"checkpoint: size {current.size} is smaller than the last seen size {seen.size}: "
            f"entries were removed (truncated or rolled back)"
        )
    if seen.size == 0:
        return  # every tree extends the empty tree
    try:
        if proof is None or (proof.size1, proof.size2) != (seen.size, current.size):
            raise merkle.ProofError(f"no consistency proof for sizes {seen.size} -> {current.size}")
        proof.verify(seen.root_hash, current.root_hash)
    except merkle.MerkleError as e:
        raise ForkError(
            f"checkpoint: size {current.size} is not an append-only extension of the last seen "
            f"checkpoint (size {seen.size}, root {seen.root_hash.hex()}): history rewritten, reordered "
            f"or forked ({e})"
        ) from e


# -- file helpers (the only I/O) --------------------------------------------------------------------


def _read(path: Path, offset: int = 0) -> bytes | None:
    """The bytes of ``path`` from ``offset``, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(end offset, line)`` for each line; a last line without newline is yielded as is."""
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        yield end, data[pos:end]
        pos = end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, data: bytes, expected_size: int) -> None:
    """Append ``data`` at ``expected_size`` (refusing if the file moved) and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size != expected_size:
            raise TornTailError(f"{path}: {size} bytes on disk, expected {expected_size}: changed since open")
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _replace_durably(path: Path, data: bytes, hook: StepHook) -> None:
    """Atomically replace ``path``: fixed-name temporary file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")  # a fixed name: a crash leaves no debris to commit
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    hook(f"{path.name}.tmp")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _no_hook(step: str) -> None:
    return None


# -- the ledger ---------------------------------------------------------------------------------------


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
        path, leaves = self._file(ENTRIES), []
        with open(path, "rb") as f:
            for index in range(n):
                m = _LEAF.search(line := f.readline(), max(0, len(line) - 80))
                if m is None:
                    raise LedgerError(f"{path}: entry {index}: no leaf hash (bad or missing frame)")
                leaves.append(bytes.fromhex(m.group(1).decode("ascii")))
        if n == self.size and self._checkpoint and merkle.root(leaves) != self._checkpoint.root_hash:
            raise LedgerError(f"{path}: the leaf hashes are not those the checkpoint signed; run verify")
        return leaves

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
