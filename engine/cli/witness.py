"""``certus ledger checkpoint``: publish this ledger's signed checkpoint, cosign it, compare another's.

See :mod:`engine.provenance.witness` for what the comparison proves and :mod:`engine.provenance.cosignature` for the
C2SP cosignature format.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from typing import Any

from engine.errors import EngineError, LedgerError
from engine.provenance import merkle

__all__ = ["add_verify_arguments", "cmd_ledger_checkpoint", "register"]


def _current(ledger: Any) -> Any:
    from engine.provenance.note import Checkpoint

    cp = ledger.checkpoint()
    return cp if cp is not None else Checkpoint(origin=ledger.origin, size=0, root_hash=merkle.SHA256.empty_root())


def _sound(ledger: Any) -> None:
    """Refuse to compare with a ledger that :meth:`Ledger.open` found damaged (torn tails are fine)."""
    damage = ledger.status().damage
    if damage:
        raise LedgerError(f"our ledger is damaged ({damage[0]}); run 'certus verify'")


def _read_note(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as e:
        raise EngineError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineError(f"{path}: not a signed checkpoint note (not UTF-8)") from e


def _history(prov: Any) -> tuple[Any, Any]:
    """(trust state now, trust history) as the ledger records them; ``trust.json`` must agree."""
    trust = prov.trust()
    history = prov.trust_history()
    if history.problems:
        raise LedgerError(f"our ledger's trust records are damaged: {history.problems[0]}; run 'certus verify'")
    why = history.diff_file(trust)
    if why:
        raise LedgerError(f"trust.json: {why}; run 'certus verify' (or 'certus keys sync')")
    return (history.latest if history.pinned else trust), history


def _trust(prov: Any) -> Any:
    """The trust state the ledger records: what judges another party's signatures here."""
    return _history(prov)[0]


def _structure_verifiers(prov: Any, origin: str) -> list[Any]:
    """Every key that ever held the ``ledger`` role, so that every historical checkpoint can be checked."""
    from engine.provenance.note import NoteError, Verifier

    trust, history = _history(prov)
    entries = history.ever("ledger") if history.pinned else [e for e in trust.entries if "ledger" in e.roles]
    out = []
    for e in entries:
        out.append(Verifier(name=e.name, public_key=e.public_key.raw))
        if origin != e.name:
            with contextlib.suppress(NoteError):  # an origin with spaces or '+' cannot be a key name
                out.append(Verifier(name=origin, public_key=e.public_key.raw))
    return out


def _cosign(prov: Any, ledger: Any, note_text: str, key_hint: str | None) -> str:
    """Check our ledger end to end and against what this machine remembers, then cosign ``note_text``."""
    from engine.provenance.cosignature import cosign
    from engine.provenance.note import Checkpoint
    from engine.provenance.recorder import NoteSignerAdapter, remember_checkpoint, remembered_checkpoint
    from engine.provenance.witness import describe

    key = prov.signer("witness", key_hint)  # refuses a key the trust file does not grant 'witness'
    verifiers = _structure_verifiers(prov, ledger.origin)
    problems = ledger.verify_structure(*verifiers)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LedgerError(f"not cosigning: the ledger is unsound: {problems[0]}{more}; run 'certus verify'")
    seen = remembered_checkpoint(prov.ws)
    try:
        current = ledger.witness(seen, *verifiers) if seen is not None else None
    except EngineError as e:
        raise type(e)(f"not cosigning: {e}") from e
    if current is None:
        current = Checkpoint.from_note(ledger.checkpoint_note(), verifiers)
        print(f"note: nothing remembered on this machine to check a rollback against; remembering "
              f"{describe(current)} from now on", file=sys.stderr)
    if seen is None or current.size > seen.size:
        remember_checkpoint(prov.ws, current)
    return cosign(note_text, NoteSignerAdapter(key), int(time.time())).to_text()


def _witness(args: argparse.Namespace, prov: Any, ledger: Any) -> int:
    from engine.provenance.witness import compare_note

    _sound(ledger)
    ours = _current(ledger)
    text = _read_note(args.witness)
    result = compare_note(text, ours, lambda: ledger.leaf_hashes(ours.size), _trust(prov))
    if args.cosign:
        if result.theirs.size != ours.size:
            raise LedgerError(f"not cosigning: their size {result.theirs.size} is smaller than ours ({ours.size}); "
                              "a cosignature vouches for the largest tree seen: cosign our own checkpoint instead")
        text = _cosign(prov, ledger, text, args.key)
        _emit(args, prov, text)
        return 0
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


def _add_cosigned(args: argparse.Namespace, prov: Any, ledger: Any) -> int:
    """Store a witness's cosignatures on one of our checkpoints beside it (see witness_policy)."""
    from engine.provenance.cosignature_store import append_cosigned, ledger_note, read_cosigned
    from engine.provenance.witness_policy import prepare_cosigned

    _sound(ledger)
    text = _read_note(args.add_cosigned)
    stored = [t for _, t in read_cosigned(ledger.path).notes]
    line, cp, cosigs = prepare_cosigned(text, ledger.size, ledger.origin, lambda n: ledger_note(ledger.path, n),
                                        stored, _trust(prov))
    who = ", ".join(f"{c.name} at {c.to_dict()['time']}" for c in cosigs)
    if line is None:
        print(f"checkpoint size {cp.size}: cosignature(s) by {who} stored already")
        return 0
    with prov.ledger_lock(exclusive=True):
        cut = append_cosigned(ledger.path, line)
    if cut:
        print(f"note: {cut}", file=sys.stderr)
    print(f"checkpoint size {cp.size} of {ledger.size}: stored cosignature(s) by {who}")
    return 0


def _emit(args: argparse.Namespace, prov: Any, text: str) -> None:
    """Print or export a checkpoint note (``--json`` describes it)."""
    from engine.provenance.note import Checkpoint, Note
    from engine.store.fsutil import atomic_write

    note = Note.from_text(text)
    cp = Checkpoint.from_body(note.text)
    if args.export:
        atomic_write(os.path.abspath(args.export), text.encode("utf-8"))
    if args.json:
        from engine.provenance.witness import trusted_cosignatures

        cosigs = trusted_cosignatures(note, _trust(prov)) if prov.enabled else ()
        print(json.dumps({"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root_hash).decode("ascii"),
                          "note": text, "cosignatures": [c.to_dict() for c in cosigs]}, indent=2))
    elif args.export:
        print(f"wrote checkpoint '{cp.origin}' size {cp.size} ({len(note.signatures)} signature(s)) to {args.export}")
    else:
        sys.stdout.write(text)


def cmd_ledger_checkpoint(args: argparse.Namespace) -> int:
    """Print / export / cosign this ledger's checkpoint, or compare another party's (``--witness``)."""
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace, WorkspaceLock

    if args.add_cosigned and (args.cosign or args.witness or args.export):
        raise EngineError("--add-cosigned FILE stands alone (no --cosign, --witness or --export)")
    if args.cosign and not args.key:
        raise EngineError("--cosign needs --key NAME (a key the trust file grants the 'witness' role)")
    ws = Workspace.discover(args.directory or ".")
    prov = Provenance(ws)
    # Reading needs no lock (the checkpoint file is the ledger's commit point); cosigning holds it
    # so that the ledger it checks end to end is the one it vouches for.
    write = args.cosign or args.add_cosigned
    with WorkspaceLock(ws).held(command="ledger checkpoint") if write else contextlib.nullcontext():
        ledger = prov.open_ledger(create=False)
        if args.add_cosigned:
            return _add_cosigned(args, prov, ledger)
        if args.witness:
            return _witness(args, prov, ledger)
        text = ledger.checkpoint_note()
        if text is None:
            raise LedgerError("the ledger has no checkpoint yet; run 'certus repro' with a trust file first")
        if args.cosign:
            _sound(ledger)
            text = _cosign(prov, ledger, text, args.key)
        _emit(args, prov, text)
    return 0


def register(lsub: Any) -> None:
    """Add ``checkpoint`` to the ``certus ledger`` actions."""
    cp = lsub.add_parser(
        "checkpoint", aliases=["witness"],
        help="print, export or cosign the signed checkpoint; --witness compares another party's",
        description="Print this ledger's signed checkpoint (C2SP signed note), export it for other parties, "
                    "cosign it as a witness (C2SP tlog-cosignature), or compare another party's checkpoint "
                    "with this ledger to detect a rewritten or forked history.")
    cp.add_argument("--export", metavar="FILE", help="write the checkpoint note to FILE (atomically)")
    cp.add_argument("--witness", metavar="FILE",
                    help="compare FILE's checkpoint ('-' for stdin) with this ledger; non-zero exit on a fork, "
                         "a rollback or an untrusted signature")
    cp.add_argument("--cosign", action="store_true",
                    help="check the ledger (structure, this machine's remembered checkpoint) and add a cosignature")
    cp.add_argument("--key", metavar="NAME", help="the witness key to cosign with ($CERTUS_HOME/keys/NAME.key)")
    cp.add_argument("--add-cosigned", metavar="FILE",
                    help="store the witness cosignatures on FILE (one of this ledger's checkpoints, cosigned with "
                         "--cosign elsewhere) beside that checkpoint, for 'certus verify' and its witness policy")
    cp.add_argument("--json", action="store_true", help="print {origin, size, root, note, cosignatures} as JSON")
    cp.set_defaults(func=cmd_ledger_checkpoint)


def add_verify_arguments(v: Any) -> None:
    """``certus verify``'s overrides of the witness policy (conf/config.yaml certus.ledger.witnesses)."""
    v.add_argument("--require-witnesses", type=int, metavar="N",
                   help="require N valid witness cosignatures (0: no policy); overrides the config")
    v.add_argument("--witness", dest="witness_names", action="append", metavar="NAME",
                   help="a witness (trust-file key name) whose cosignatures count (repeatable); overrides the config")
    v.add_argument("--require-all-witnessed", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the whole log must be witnessed (default true when a policy is set)")
