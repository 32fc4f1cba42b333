"""Sequencing this workspace's ledger into a team's shared log: one order, none lost, none twice.

The local ledger is the shared log's prefix this machine last saw (``shared.json`` in the ledger
directory: its size and the checkpoint note signed for it) followed by the entries appended here
since ("pending"). :func:`sync` reads the shared log from that size on and:

* checks that the shared log extends what this machine saw: the signed checkpoint stored with it
  must verify under a ``ledger`` key of the trust file and its root must be the root of our prefix
  plus the new entries (a consistency check computed from the entries themselves); a shorter,
  rewritten or forked log is refused, naming both checkpoints;
* checks each new entry's signatures against the roles its kind requires (the shared log is
  trusted for availability, never integrity: we sign a checkpoint over these entries next);
* re-sequences the pending entries after the new ones (their signed records name no position:
  issue 16) by rebuilding the ledger beside the old one and swapping it in, so a crash leaves either
  ledger whole (:func:`recover`), and
* appends the pending entries to the shared log with compare-and-swap, under a checkpoint our
  ledger key signs; when another writer got there first, it does it all again. A pending entry
  the shared log already holds (an append that landed, though this process died before it heard
  so) is not appended twice.

A fresh clone's own trust genesis is dropped when the shared log starts from the same trust state
(and refused when it does not). The storage backends are :mod:`engine.adapters.shared_log`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LedgerError, SignatureError
from engine.provenance import merkle
from engine.store.fsutil import atomic_write

__all__ = ["SHARED", "SyncResult", "SharedState", "read_shared", "recover", "sync"]

SHARED = "shared.json"
MAX_ATTEMPTS = 40


@dataclass(frozen=True, slots=True)
class SharedState:
    """The shared log's prefix this machine last saw: its size and the checkpoint note for it."""

    remote: str | None
    size: int
    note: str | None


@dataclass(frozen=True, slots=True)
class SyncResult:
    remote: str
    fetched: int  # entries taken in from the shared log
    pushed: int  # pending entries sequenced into it
    size: int  # the shared log's size afterwards
    moved: int  # how far the pending entries moved (0: they kept their local positions)
    first: int | None  # index of the first pushed entry
    attempts: int


def read_shared(ldir: str | os.PathLike[str]) -> SharedState:
    path = Path(ldir) / SHARED
    try:
        obj = json.loads(path.read_bytes())
        size, note, remote = obj["size"], obj.get("note"), obj.get("remote")
        if not isinstance(size, int) or size < 0 or not (note is None or isinstance(note, str)):
            raise ValueError("size or note has the wrong type")
        return SharedState(remote if isinstance(remote, str) else None, size, note)
    except FileNotFoundError:
        return SharedState(None, 0, None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{path}: unreadable ({e}); it records how much of the shared log this workspace has "
                          "seen: restore it from a backup, or remove the ledger directory and run "
                          "'certus ledger sync' to start again from the shared log") from None


def _write_shared(ldir: Path, state: SharedState) -> None:
    atomic_write(str(ldir / SHARED), json.dumps({"remote": state.remote, "size": state.size,
                                                 "note": state.note}, sort_keys=True).encode())


# -- the rebuild-and-swap (crash-safe) -------------------------------------------------------------


def _paths(ldir: Path) -> tuple[Path, Path, Path]:
    return ldir.with_name(ldir.name + ".next"), ldir.with_name(ldir.name + ".old"), \
        ldir.with_name(ldir.name + ".swap")


def recover(ldir: str | os.PathLike[str]) -> str | None:
    """Finish or undo a re-sequencing a crash interrupted; returns what it did (None: nothing)."""
    ldir = Path(ldir)
    new, old, marker = _paths(ldir)
    if marker.exists():  # the new ledger was complete: finish the swap
        if ldir.exists() and new.exists():
            os.rename(ldir, old)
        if new.exists() and not ldir.exists():
            os.rename(new, ldir)
        marker.unlink()
        shutil.rmtree(old, ignore_errors=True)
        return f"{ldir}: finished swapping in the re-sequenced ledger"
    did = None
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
            did = f"{ldir}: removed {leftover.name} (an interrupted re-sequencing; the ledger is as it was)"
    return did


def _swap_in(ldir: Path, new: Path) -> None:
    _, old, marker = _paths(ldir)
    fd = os.open(new, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    atomic_write(str(marker), b"swap\n")
    os.rename(ldir, old)
    os.rename(new, ldir)
    marker.unlink()
    shutil.rmtree(old, ignore_errors=True)


# -- sync ------------------------------------------------------------------------------------------


def _cp_text(cp: Any) -> str:
    return f"size {cp.size}, root {cp.root_hash.hex()[:16]}…"


def _genesis_trust(raw: bytes) -> str | None:
    """The trust digest a trust genesis entry pins (None: not a genesis)."""
    from engine.provenance.dsse import Envelope
    from engine.provenance.trust_log import GENESIS, TRUST_TYPE

    try:
        env = Envelope.from_json_bytes(raw)
        if env.payload_type != TRUST_TYPE:
            return None
        payload = json.loads(env.payload)
        return str(payload["details"]["trust_sha256"]) if payload.get("kind") == GENESIS else None
    except (SignatureError, ValueError, KeyError, TypeError):
        return None


def _check_signed(prov: Any, raws: Sequence[bytes], start: int, where: str) -> None:
    """Every entry from ``start`` is a known record signed by keys trusted for its role at its position."""
    from engine.provenance.dsse import Envelope
    from engine.provenance.verify import trust_history_of
    from engine.provenance.verify_runs import Report, check_signatures, parse_time, role_and_time

    history = trust_history_of(list(raws))
    if history.problems:
        raise LedgerError(f"{where}: {history.problems[0]}")
    report = Report()
    for index in range(start, len(raws)):
        w = f"{where}: entry {index}"
        try:
            env = Envelope.from_json_bytes(raws[index])
            payload = json.loads(env.payload)
            kind = role_and_time(env.payload_type, payload) if isinstance(payload, dict) else None
            if kind is None:
                raise ValueError(f"unknown payloadType '{env.payload_type}'")
            at = parse_time(str(kind[1]))
        except (SignatureError, ValueError) as e:
            raise LedgerError(f"{w}: not a ledger record ({e}); refusing to sequence after it") from None
        check_signatures(env, history, kind[0], at, index, w, report)
        if report.failures:
            raise LedgerError(f"{report.failures[0]}; refusing to sequence after it") from None


def _history(ldir: Path, upto: int) -> list[tuple[int, str]]:
    """The ledger's checkpoint notes of size at most ``upto``, oldest first, as checkpoints.jsonl holds them."""
    from engine.provenance.ledger_format import CHECKPOINTS, _decode_note_line, _lines, _parse_checkpoint, _read

    out: list[tuple[int, str]] = []
    for _, line in _lines(_read(ldir / CHECKPOINTS) or b""):
        try:
            note = _decode_note_line(line)
            size = _parse_checkpoint(note).size
        except (LedgerError, SignatureError):
            break
        if size <= upto and (not out or size > out[-1][0]):
            out.append((size, note))
    return out


def _keep_cosignatures(ldir: Path, new: Path, upto: int) -> None:
    """Witnesses' cosignatures on checkpoints the rebuilt ledger keeps (those of the shared prefix)."""
    from engine.provenance.cosignature_store import append_cosigned, read_cosigned
    from engine.provenance.ledger_format import _parse_checkpoint

    for _, note in read_cosigned(ldir).notes:
        try:
            if _parse_checkpoint(note).size <= upto:
                append_cosigned(new, note)
        except (LedgerError, SignatureError):
            continue  # verify names a bad line in the old ledger; it is not carried over


def sync(prov: Any, log: Any, *, say: Callable[[str], None] | None = None) -> SyncResult:
    """Bring this workspace's ledger and the shared log ``log`` together (see the module docstring).

    The caller holds the workspace lock. Raises the backend's Unreachable when it cannot reach it
    (nothing changed), LedgerError for a rewritten or forked shared log or an entry that does not
    verify (nothing changed).
    """
    from engine.provenance.ledger import Ledger
    from engine.provenance.local_state import remember_checkpoint
    from engine.provenance.note import Checkpoint
    from engine.provenance.recorder import NoteSignerAdapter, ledger_dir

    name = log.remote.name
    ldir = Path(ledger_dir(prov.ws))
    fetched = pushed = moved = 0
    first = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with prov.ledger_lock(exclusive=True):
            recover(ldir)
            ledger = prov.open_ledger(create=True)
            if ledger.size:
                prov.check_appendable(ledger)
            seen = read_shared(ldir)
            k, n = seen.size, ledger.size
            if k > n:
                raise LedgerError(f"{ldir / SHARED}: says {k} entries were shared, but the ledger has {n}; run "
                                  "'certus verify'")
            snap = log.read(k)
            r = snap.size
            trust = prov.trust()
            ours = Checkpoint.from_note(seen.note, prov.ledger_verifiers(trust, ledger.origin)) \
                if seen.note else None
            if r < k:
                raise LedgerError(f"ledger remote '{name}': the shared log has {r} entries, fewer than the {k} this "
                                  f"workspace saw ({_cp_text(ours)}): it was rolled back or rewritten; "
                                  "not syncing (ask who can write to it)")
            theirs = None
            if r > 0:
                note = (snap.checkpoint or b"").decode("utf-8", "replace")
                origin = note.split("\n", 1)[0]
                try:
                    theirs = Checkpoint.from_note(note, prov.ledger_verifiers(trust, origin))
                except (SignatureError, LedgerError) as e:
                    raise LedgerError(f"ledger remote '{name}': its checkpoint does not verify under a ledger key "
                                      f"of trust.json ({e}); not syncing") from None
                leaves = ledger.leaf_hashes(k) + [merkle.leaf_hash(e) for e in snap.entries]
                if theirs.size != r or (ours is not None and theirs.origin != ours.origin) or \
                        merkle.root(leaves) != theirs.root_hash:
                    mine = _cp_text(ours) if ours is not None else "none yet"
                    raise LedgerError(f"ledger remote '{name}': the shared log is not an extension of the one this "
                                      f"workspace saw (ours: {mine}; theirs: {theirs.origin} {_cp_text(theirs)}): "
                                      "it was rewritten or forked; not syncing")
            if r == k:
                if n == k:
                    return SyncResult(name, fetched, pushed, r, moved, first, attempt)
                pending = list(ledger.entries(k))
                note = ledger.checkpoint_note() or ""
                if say and attempt == 1:
                    say(f"sequencing {len(pending)} entr{'y' if len(pending) == 1 else 'ies'} into '{name}'")
                if log.append(k, pending, note.encode("utf-8")):
                    _write_shared(ldir, SharedState(name, n, note))
                    return SyncResult(name, fetched, pushed + len(pending), n, moved,
                                      k if first is None else first, attempt)
                continue  # another writer appended first: read again
            # r > k: take the new shared entries in, and put ours after them
            prefix = ledger.entries_unchecked()[:k] if k else []
            pending = list(ledger.entries(k)) if n > k else []
            _check_signed(prov, [*prefix, *snap.entries], k, f"ledger remote '{name}'")
            landed = {hashlib.sha256(e).digest() for e in snap.entries}  # an append whose answer we never got
            pending = [e for e in pending if hashlib.sha256(e).digest() not in landed]
            if k == 0 and pending and (mine_g := _genesis_trust(pending[0])) is not None:
                their_g = _genesis_trust(snap.entries[0]) if snap.entries else None
                if their_g != mine_g:
                    raise LedgerError(f"ledger remote '{name}': the shared log starts from another trust state "
                                      f"({str(their_g)[:16]}…, ours {mine_g[:16]}…): commit the same trust.json "
                                      "in every clone; not syncing")
                pending = pending[1:]  # our own genesis: the shared log's pins the same trust
            new, _, _ = _paths(ldir)  # (recover() above, under this lock, left no .next behind)
            fresh = Ledger.open(new, origin=theirs.origin)
            done = 0
            for size, note in _history(ldir, k):  # the prefix keeps its checkpoints (witnesses cosigned them)
                if done < size:
                    fresh.append_many(prefix[done:size], None, note=note)
                    done = size
            if done < k:
                fresh.append_many(prefix[done:k], None, note=seen.note)
            _keep_cosignatures(ldir, new, k)
            fresh.append_many(list(snap.entries), None, note=(snap.checkpoint or b"").decode("utf-8"))
            cp = theirs
            if pending:
                signer = NoteSignerAdapter(prov.signer("ledger"), name=theirs.origin)
                _, cp = fresh.append_many(pending, signer)
            _write_shared(new, SharedState(name, r, (snap.checkpoint or b"").decode("utf-8")))
            _swap_in(ldir, new)
            remember_checkpoint(prov.ws, cp)
            fetched += r - k
            moved = r - k if pending else moved
            if say:
                say(f"took in {r - k} entr{'y' if r - k == 1 else 'ies'} from '{name}'"
                    + (f"; {len(pending)} local entr{'y' if len(pending) == 1 else 'ies'} re-sequenced after them"
                       if pending else ""))
            if not pending:
                return SyncResult(name, fetched, pushed, r, moved, first, attempt)
        time.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** attempt)))  # contention: back off (jittered, exponential)
    raise LedgerError(f"ledger remote '{name}': {MAX_ATTEMPTS} other writers appended first; run 'certus ledger "
                      "sync' again")
