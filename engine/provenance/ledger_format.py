"""The ledger's on-disk encodings (frames, checkpoint lines, the state cache, the witness rule) and
the durable append / replace primitives.

Pure encodings (and two small read helpers) shared by :mod:`engine.provenance.ledger` (which
appends) and :mod:`engine.provenance.ledger_audit` (which re-derives everything); see the former
for the layout they make up.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.core.canonical import CanonicalError, canonical_bytes, from_canonical
from engine.errors import LedgerError
from engine.provenance import merkle
from engine.provenance.note import Checkpoint, Note

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


def decode_frame(line: bytes, index: int) -> tuple[bytes, bytes]:
    """Parse and check one frame (newline included); return ``(entry, leaf_hash)``."""
    # The layout _frame writes: decode the entry, re-encode the whole frame and compare bytes. Equal
    # bytes prove the layout, the index and the leaf hash at once; anything else gets the JSON path
    # below, which names the problem.
    end = line.find(b'","index":', 10)
    if end > 0 and line.startswith(b'{"entry":"'):
        try:
            entry = binascii.a2b_base64(line[10:end])
        except binascii.Error:
            entry = None
        if entry is not None:
            leaf = merkle.leaf_hash(entry)
            if line == _frame(index, entry, leaf):
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


# -- durable writes (the only writes; the ledger decides their order) ------------------------------


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
