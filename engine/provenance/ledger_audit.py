"""The full re-derivation behind :meth:`engine.provenance.ledger.Ledger.verify_structure`.

Kept apart from the append path: it reads every file from scratch, trusts nothing that
``state.json`` or the frames claim, and names every problem it finds (file, entry index or
line, reason), capped per file. Historical checkpoints are parsed and their signatures checked
in forked slices (:mod:`engine.store.parallel`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import LedgerError, SignatureError
from engine.provenance import merkle
from engine.provenance.ledger_format import (
    _MAX_LISTED,
    CHECKPOINT,
    CHECKPOINTS,
    ENTRIES,
    STATE,
    _decode_note_line,
    _lines,
    _read,
    _State,
    decode_frame,
)
from engine.provenance.note import Checkpoint, Note, Verifier

if TYPE_CHECKING:
    from engine.provenance.ledger import Ledger

__all__ = ["Audit"]


def _capped(problems: list[str], what: str) -> list[str]:
    if len(problems) <= _MAX_LISTED:
        return problems
    return [*problems[:_MAX_LISTED], f"{what}: and {len(problems) - _MAX_LISTED} more problems"]


Signers = tuple[tuple[str, bytes], ...]  # (key name, 4-byte key ID) of each signature that verified
# line no., end offset, text, parsed checkpoint, its trusted signers, problems
_HistoryRow = tuple[int, int, str, "Checkpoint | None", Signers, list[str]]


class Audit:
    """One full pass of :meth:`Ledger.verify_structure`."""

    def __init__(self, ledger: Ledger, verifiers: Iterable[Verifier]) -> None:
        self.ledger = ledger
        self.verifiers = tuple(verifiers)
        self.entries, self.cps, self.cp, self.state = (
            str(ledger._file(n)) for n in (ENTRIES, CHECKPOINTS, CHECKPOINT, STATE)
        )
        self.signers: list[tuple[str, int, Signers]] = []

    def _signed(self, text: str, where: str, out: list[str]) -> tuple[Checkpoint | None, Signers]:
        """Parse a checkpoint note, check its signatures and origin; problems go to ``out``.

        Returns the checkpoint (None if unreadable) and the (name, key ID) of each signature
        that verified under a trusted key.
        """
        try:
            note = Note.from_text(text)
        except SignatureError as e:
            out.append(f"{where}: {e}")
            return None, ()
        good: Signers = ()
        try:
            good = tuple((sig.name, sig.key_id) for sig in note.verified_by(self.verifiers))
        except SignatureError as e:
            out.append(f"{where}: {e}")  # still check the body below
        try:
            cp = Checkpoint.from_body(note.text)
        except LedgerError as e:
            out.append(f"{where}: {e}")
            return None, good
        if cp.origin != self.ledger.origin:
            out.append(f"{where}: origin '{cp.origin}', expected '{self.ledger.origin}'")
        return cp, good

    def _history(self, lines: list[tuple[int, int, bytes]]) -> list[_HistoryRow]:
        """Every historical checkpoint line decoded, parsed and its signature checked, on all cores."""
        from engine.store.parallel import fork_map

        def part(chunk: Sequence[tuple[int, int, bytes]]) -> list[_HistoryRow]:
            out = []
            for n, end, line in chunk:
                where = f"{self.cps}: line {n}"
                problems: list[str] = []
                try:
                    text = _decode_note_line(line)
                except LedgerError as e:
                    out.append((n, end, "", None, (), [f"{where}: {e}"]))
                    continue
                cp, signers = self._signed(text, where, problems)
                out.append((n, end, text, cp, signers, problems))
            return out

        return [row for chunk in fork_map(part, lines) for row in chunk]

    def run(self) -> list[str]:
        cp_out: list[str] = []
        hist_out: list[str] = []
        ent_out: list[str] = []
        state_out: list[str] = []

        raw = _read(Path(self.cp))
        current_text = raw.decode("utf-8", "replace") if raw is not None else None
        current, signers = self._signed(current_text, self.cp, cp_out) if current_text is not None else (None, ())
        if current is not None:
            self.signers.append((self.cp, current.size, signers))

        history: list[tuple[int, str, Checkpoint]] = []
        hist_end: dict[int, int] = {0: 0}
        prev = 0
        hist_lines = [(n, end, line) for n, (end, line) in enumerate(_lines(_read(Path(self.cps)) or b""), 1)]
        for n, end, text, cp, signers, problems in self._history(hist_lines):
            hist_out.extend(problems)
            if cp is None:
                continue
            self.signers.append((f"{self.cps}: line {n}", cp.size, signers))
            if cp.size <= prev:
                hist_out.append(f"{self.cps}: line {n}: size {cp.size} does not grow past the previous {prev}")
            prev = max(prev, cp.size)
            history.append((n, text, cp))
            hist_end[cp.size] = end

        state: _State | None = None
        raw = _read(Path(self.state))
        try:
            state = _State.from_bytes(raw) if raw is not None else None
        except LedgerError as e:
            state_out.append(f"{self.state}: {e}")
        if raw is None:
            state_out.append(f"{self.state}: missing")

        garbled = current_text is not None and current is None  # damage, not a crash: say so once
        committed = current.size if current else 0
        wanted = {cp.size for _, _, cp in history} | {committed}
        if state is not None:
            wanted.add(state.frontier.size)
        roots, ends = {0: merkle.SHA256.empty_root()}, {0: 0}
        frontier = merkle.Frontier()
        for index, (end, line) in enumerate(_lines(_read(Path(self.entries)) or b"")):
            if not line.endswith(b"\n"):
                ent_out.append(f"{self.entries}: entry {index}: partial frame (torn tail); run repair")
                break
            try:
                entry, leaf = decode_frame(line, index)
            except LedgerError as e:
                ent_out.append(f"{self.entries}: entry {index}: {e}")
                leaf = merkle.leaf_hash(line)  # keep counting, so later roots are still compared
            frontier = frontier.append(leaf)
            if frontier.size in wanted:
                roots[frontier.size], ends[frontier.size] = frontier.root(), end
        count = frontier.size

        if current_text is None and count:
            cp_out.append(f"{self.cp}: missing, but {self.entries} holds {count} entries")
        if current is not None:
            if committed > count:
                cp_out.append(
                    f"{self.cp}: size {committed}, but {self.entries} holds {count} entries: "
                    f"entries truncated or the checkpoint's size is wrong"
                )
            elif roots[committed] != current.root_hash:
                cp_out.append(
                    f"{self.cp}: root {current.root_hash.hex()} is not the root of entries "
                    f"0..{committed - 1} ({roots[committed].hex()})"
                )
        if garbled:
            cp_out.append(f"{self.cp}: unreadable, so nothing past it can be judged a torn tail; "
                          f"'certus ledger repair' restores it from the last line of {self.cps}")
        elif count > committed:
            ent_out.append(
                f"{self.entries}: entries {committed}..{count - 1} are past the checkpoint "
                f"(size {committed}): torn tail; run repair"
            )

        for n, _, cp in history:
            where = f"{self.cps}: line {n}"
            if cp.size > count:
                hist_out.append(f"{where}: size {cp.size}, but {self.entries} holds {count} entries")
            elif roots[cp.size] != cp.root_hash:
                hist_out.append(f"{where}: root of size {cp.size} does not match entries 0..{cp.size - 1}")
        if current_text is not None and not garbled:
            mine = [n for n, text, _ in history if text == current_text]
            if not mine:
                hist_out.append(f"{self.cps}: no line holds the current checkpoint (size {committed})")
            elif mine[-1] < (last := history[-1][0]):
                hist_out.append(
                    f"{self.cps}: lines {mine[-1] + 1}..{last} are past the checkpoint: torn tail; run repair"
                )
        elif history and not garbled:
            hist_out.append(f"{self.cps}: {len(history)} checkpoints, but {self.cp} is missing")

        if state is not None:
            size = state.frontier.size
            if state.origin != self.ledger.origin:
                state_out.append(f"{self.state}: origin '{state.origin}', expected '{self.ledger.origin}'")
            if size > committed:
                if not garbled:
                    state_out.append(f"{self.state}: size {size} is past the checkpoint (size {committed})")
            elif size <= count:
                if state.frontier.root() != roots[size]:
                    state_out.append(f"{self.state}: frontier does not match entries 0..{size - 1}")
                if state.entries_bytes != ends[size]:
                    state_out.append(
                        f"{self.state}: entries_bytes {state.entries_bytes}, but entry {size - 1} "
                        f"ends at byte {ends[size]}"
                    )
                if state.checkpoints_bytes != hist_end.get(size, -1):
                    state_out.append(
                        f"{self.state}: checkpoints_bytes {state.checkpoints_bytes} is not the end "
                        f"of the checkpoint of size {size}"
                    )
        return [
            *_capped(ent_out, self.entries),
            *_capped(cp_out, self.cp),
            *_capped(hist_out, self.cps),
            *_capped(state_out, self.state),
        ]

