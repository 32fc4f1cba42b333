"""Where witnesses' cosignatures on this ledger's checkpoints are kept: ``cosignatures.jsonl``.

One file beside ``checkpoints.jsonl`` in the ledger directory, in the same line format
(canonical JSON ``{"note": "<signed note text>"}`` and a newline), append-only. Each line is
one of the ledger's own signed checkpoint notes, byte for byte as ``checkpoints.jsonl`` holds
it, followed by the cosignature lines (C2SP tlog-cosignature/v1) a witness added to it: the
ledger's signed bytes are never rewritten, and each line is a complete note that can be
handed to anyone (``certus ledger checkpoint --witness``). Several lines may cover the same
checkpoint (one per witness, or per cosigning); readers take their union.

Written as ``checkpoints.jsonl`` is (:func:`engine.provenance.ledger_format._append_durably`:
at the size read, fsync), under the workspace lock and the ledger's exclusive lock. A crash
mid-append leaves a last line without its newline: readers ignore it (a note), and the next
append cuts it first, since what it held was a cosignature that can be added again.

This is the one module that knows the file; when the ledger moves onto a shared log, only
:func:`append_cosigned`, :func:`read_cosigned` and :func:`ledger_note` move with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LedgerError, SignatureError
from engine.provenance.ledger_format import (
    CHECKPOINTS,
    _append_durably,
    _decode_note_line,
    _encode_note_line,
    _fsync_dir,
    _lines,
    _parse_checkpoint,
    _read,
    _size,
)

__all__ = ["COSIGNATURES", "Stored", "append_cosigned", "ledger_note", "read_cosigned"]

COSIGNATURES = "cosignatures.jsonl"


@dataclass(frozen=True, slots=True)
class Stored:
    """What :func:`read_cosigned` found: each complete line's note text, and problems (one line each)."""

    notes: tuple[tuple[int, str], ...]  # (line number, note text)
    problems: tuple[str, ...] = ()
    torn: str | None = None  # a partial last line left by a crashed append


def read_cosigned(ledger_path: str | os.PathLike[str]) -> Stored:
    """Every stored cosigned note, in file order. Bad lines are problems, never skipped silently."""
    path = Path(ledger_path) / COSIGNATURES
    data = _read(path)
    if not data:
        return Stored(())
    notes, problems, torn = [], [], None
    for number, (_end, line) in enumerate(_lines(data), 1):
        if not line.endswith(b"\n"):
            torn = f"{path}: line {number}: {len(line)} bytes without a newline (a crashed append); ignored"
            break
        try:
            notes.append((number, _decode_note_line(line)))
        except LedgerError as e:
            problems.append(f"{path}: line {number}: {e}")
    return Stored(tuple(notes), tuple(problems), torn)


def ledger_note(ledger_path: str | os.PathLike[str], size: int) -> str | None:
    """The note of size ``size`` in the ledger's ``checkpoints.jsonl``, verbatim, or None."""
    path = Path(ledger_path) / CHECKPOINTS
    with open(path, "rb") as f:
        for line in f:
            try:
                text = _decode_note_line(line)
                if _parse_checkpoint(text).size == size:
                    return text
            except (LedgerError, SignatureError):
                continue  # the structure audit names bad lines; here only a match matters
    return None


def append_cosigned(ledger_path: str | os.PathLike[str], note_text: str) -> str | None:
    """Append one cosigned note durably; returns a line to tell the user when a torn tail was cut."""
    path = Path(ledger_path) / COSIGNATURES
    created = not path.exists()
    size, cut = _size(path), None
    if size:
        data = _read(path) or b""
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with open(path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            cut, size = f"{path}: cut {len(data) - keep} bytes (a torn line left by a crashed append)", keep
    _append_durably(path, _encode_note_line(note_text), size)
    if created:
        _fsync_dir(path.parent)
    return cut
