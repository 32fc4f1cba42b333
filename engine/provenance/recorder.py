"""Signed provenance for every run: attestations, a run record, and the ledger append.

After a run (succeeded, failed or interrupted) the coordinator, still holding the workspace
lock, signs one in-toto/SLSA statement per stage it executed or restored (DSSE, trainer key),
writes them in stage-name order as one file ``.certus/provenance/<run>.dsse.jsonl`` (one
canonical envelope per line: one write, one fsync, however many stages), builds the run record
over them (Merkle root, previous-record hash), signs it and appends it to the ledger, whose
checkpoint is signed with the ledger key.

Provenance is on when the workspace has a committed ``trust.json``. Keys are found by
``CERTUS_KEY`` / ``CERTUS_LEDGER_KEY`` (paths to private key files) or in the key directory
(``$CERTUS_HOME/keys``, default ``~/.certus/keys``): the first key, by name, that the trust file
grants the needed role.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import KeyError_, LedgerError, SignatureError
from engine.provenance.dsse import Envelope, sign_envelope
from engine.provenance.local_state import (  # noqa: F401  (re-exported)
    held_signals,
    remember_checkpoint,
    remembered_checkpoint,
    witness_path,
)
from engine.provenance.records import EVENT_ROLES, EVENT_TYPE, Event, RunRecord
from engine.provenance.run_record import restore_source  # noqa: F401  (re-exported)
from engine.provenance.statement import rfc3339
from engine.provenance.trust import TRUST_FILE, TrustStore
from engine.provenance.trust_log import trust_digest
from engine.store.fsutil import atomic_write
from engine.store.localseal import certus_home
from engine.store.workspace import Workspace

__all__ = ["Provenance", "certus_home", "keys_dir", "NoteSignerAdapter", "ledger_dir", "git_state"]

PROV_DIR = os.path.join(".certus", "provenance")
LEDGER_DIR = os.path.join(".certus", "ledger")
STAGE_ENV_KEYS = ("PYTHONHASHSEED", "TZ", "LC_ALL", "SOURCE_DATE_EPOCH")


def keys_dir() -> str:
    return os.path.join(certus_home(), "keys")


def ledger_dir(ws: Workspace) -> str:
    return ws.p(LEDGER_DIR)


def git_state(root: str) -> dict[str, Any]:
    """HEAD commit and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    commit = head.stdout.strip() if head.returncode == 0 else None
    return {"commit": commit, "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)


class NoteSignerAdapter:
    """Presents a signing key as the signed-note signer the ledger wants.

    C2SP tlog-checkpoint: the key name SHOULD be the log's origin, so the ledger passes ``name``.
    """

    def __init__(self, key: Any, name: str | None = None) -> None:
        self._key = key
        self._name = name

    @property
    def name(self) -> str:
        return self._name or str(self._key.name)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.public_key.raw)

    def sign(self, msg: bytes) -> bytes:
        return bytes(self._key.sign(msg))


@dataclass
class LedgerItem:
    """One decoded ledger entry."""

    index: int
    raw: bytes
    envelope: Envelope | None
    payload: dict[str, Any] | None
    error: str = ""


class Provenance:
    """Signing and ledger operations for one workspace."""

    def __init__(self, ws: Workspace, *, key: str | None = None, ledger_key: str | None = None) -> None:
        self.ws = ws
        self.key_hint = key  # explicit (--key): any role
        self.trainer_key_hint = os.environ.get("CERTUS_KEY")  # the environment names the run's signer only
        self.ledger_key_hint = ledger_key or os.environ.get("CERTUS_LEDGER_KEY")
        self._signers: dict[str, Any] = {}

    # -- trust and keys --------------------------------------------------------------------------

    @property
    def trust_path(self) -> str:
        return self.ws.p(TRUST_FILE)

    @property
    def enabled(self) -> bool:
        return os.path.exists(self.trust_path)

    def trust(self) -> TrustStore:
        try:
            with open(self.trust_path, "rb") as f:
                return TrustStore.from_json(f.read(), source=TRUST_FILE)
        except FileNotFoundError as e:
            raise SignatureError(
                f"{TRUST_FILE}: missing; add keys with 'certus keys trust NAME.pub --role ROLE'"
            ) from e

    def save_trust(self, store: TrustStore) -> None:
        atomic_write(self.trust_path, store.to_json().encode())

    def _candidates(self, hint: str | None) -> Iterator[str]:
        if hint:
            if os.path.sep in hint or hint.endswith(".key"):
                yield hint
            else:
                yield os.path.join(keys_dir(), f"{hint}.key")
            return
        d = keys_dir()
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".key"):
                    yield os.path.join(d, f)

    def use_signer(self, role: str, signer: Any) -> None:
        """Sign ``role``'s records with ``signer`` (a key loaded elsewhere, e.g. an ECDSA releaser key),
        once the trust file says it holds that role now."""
        self.trust().check(signer.keyid, role, now_utc())
        self._signers[role] = signer

    def signer(self, role: str, hint: str | None = None) -> Any:
        """A loaded private key that the trust file grants ``role`` (valid now)."""
        if role in self._signers:
            return self._signers[role]
        from engine.adapters.keys import load_public_key, load_signer

        trust = self.trust()
        hint = hint or (self.ledger_key_hint if role == "ledger" else self.key_hint
                        or (self.trainer_key_hint if role == "trainer" else None))
        tried = []
        for path in self._candidates(hint):
            pub_path = path[:-4] + ".pub" if path.endswith(".key") else None
            try:
                keyid = load_public_key(pub_path).public_key.keyid if pub_path and os.path.exists(pub_path) else None
            except KeyError_:
                keyid = None
            if keyid is not None:
                try:
                    trust.check(keyid, role, now_utc())
                except SignatureError as e:
                    tried.append(f"{os.path.basename(path)}: {e}")
                    continue
            if not os.path.exists(path):
                tried.append(f"{path}: no such key file")
                continue
            key = load_signer(path)
            try:
                trust.check(key.keyid, role, now_utc())
            except SignatureError as e:
                tried.append(f"{os.path.basename(path)}: {e}")
                continue
            self._signers[role] = key
            return key
        detail = "; ".join(tried) if tried else f"no key files in {keys_dir()}"
        raise KeyError_(f"no usable '{role}' key ({detail}); create one with 'certus keys generate --role {role}' "
                        f"and add it with 'certus keys trust', or point CERTUS_KEY at one")

    # -- ledger ----------------------------------------------------------------------------------

    def _origin(self) -> str:
        """The ledger's origin: from state.json, else the checkpoint's first line (either may be damaged)."""
        d = ledger_dir(self.ws)
        try:
            with open(os.path.join(d, "state.json"), "rb") as f:
                origin = json.loads(f.read())["origin"]
            if isinstance(origin, str) and origin:
                return origin
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass
        try:
            with open(os.path.join(d, "checkpoint"), encoding="utf-8") as f:
                first = f.readline().rstrip("\n")
            if first:
                return first
        except (OSError, UnicodeDecodeError):
            pass
        return f"certus.dev/ledger/{os.urandom(8).hex()}"

    def open_ledger(self, create: bool = True) -> Any:
        from engine.provenance.ledger import Ledger

        return Ledger.open(ledger_dir(self.ws), origin=self._origin(), create=create)

    def ensure_ledger(self) -> None:
        """Create the ledger if there is none, under the exclusive lock: two first runs in one
        workspace must agree on one origin and not both write its first state."""
        if os.path.exists(os.path.join(ledger_dir(self.ws), "state.json")):
            return
        with self.ledger_lock(exclusive=True):
            self.open_ledger(create=True)

    @contextlib.contextmanager
    def ledger_lock(self, *, exclusive: bool) -> Iterator[None]:
        """An flock on the ledger directory: appends exclusive, readers (verify) shared.

        The workspace lock keeps two writers apart; this one also keeps a reader from seeing an
        append half done (frames past the checkpoint look like a torn tail).
        """
        d = ledger_dir(self.ws)
        if not os.path.isdir(d):
            if not exclusive:
                yield
                return
            os.makedirs(d, exist_ok=True)
        fd = os.open(d, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def ledger_verifiers(self, trust: TrustStore, origin: str) -> list[Any]:
        """Note verifiers for every ``ledger`` key: under the log's origin (C2SP) and, for older
        checkpoints, under the key's own name."""
        from engine.provenance.note import Verifier

        out = []
        for e in trust.entries:
            if "ledger" in e.roles:
                out += [Verifier(name=origin, public_key=e.public_key.raw),
                        Verifier(name=e.name, public_key=e.public_key.raw)]
        return out

    def index(self, ledger: Any = None) -> Any:
        """The local ledger index (a cache; see :mod:`engine.provenance.ledger_index`)."""
        from engine.provenance.ledger_index import LedgerIndex

        return LedgerIndex.current(ledger if ledger is not None else self.open_ledger(), self.ws.root)

    def check_appendable(self, ledger: Any) -> Any:
        """Refuse to extend a ledger that ``verify`` would call damaged, rolled back or mistrusted.

        Returns the current ledger index. Checks (cheap unless something moved): torn tails and
        damage; that the ledger extends the checkpoint this machine last saw (witness); and that
        ``trust.json`` is the trust state the ledger records.
        """
        status = ledger.status()
        if not status.ok:
            problems = [str(t) for t in status.torn_tails] + list(status.damage)
            raise LedgerError(f"{ledger_dir(self.ws)}: cannot append: {'; '.join(problems)}; "
                              "run 'certus verify' for details and 'certus ledger repair' to cut a torn tail")
        trust = self.trust()
        seen = remembered_checkpoint(self.ws)
        cp = ledger.checkpoint()
        note = ledger.checkpoint_note()
        if note is not None:  # the tail this append extends must carry a trusted ledger signature
            from engine.provenance.note import Checkpoint

            try:
                Checkpoint.from_note(note, self.ledger_verifiers(trust, ledger.origin))
            except SignatureError as e:
                raise LedgerError(f"{ledger_dir(self.ws)}/checkpoint: not appending: {e}; run 'certus verify'") from e
        if seen is not None and seen.origin == ledger.origin and (
                cp is None or (seen.size, seen.root_hash) != (cp.size, cp.root_hash)):
            try:
                ledger.witness(seen, *self.ledger_verifiers(trust, ledger.origin))
            except (LedgerError, SignatureError) as e:
                raise LedgerError(f"{ledger_dir(self.ws)}: not appending: the ledger is not consistent with the "
                                  f"checkpoint this machine saw (size {seen.size}): {e}; run 'certus verify'") from e
        idx = self.index(ledger)
        if idx.trust_sha256 is not None:
            history = idx.trust_history()
            if history.problems:
                raise LedgerError(f"{ledger_dir(self.ws)}: not appending: a trust record does not verify: "
                                  f"{history.problems[0]}; run 'certus verify'")
            if trust_digest(trust) != trust_digest(history.latest):
                raise LedgerError(history.diff_file(trust) or "trust.json differs from the ledger's trust state")
        return idx

    def append(self, payload_type: str, payload: Mapping[str, Any], role: str) -> tuple[int, bytes]:
        """Sign ``payload`` with a ``role`` key, append it to the ledger; caller holds the lock."""
        return self.append_records([(payload_type, payload, role)])[0]

    def append_records(self, records: Sequence[tuple[str, Mapping[str, Any], str] | bytes],
                       on_commit: Callable[[list[tuple[int, bytes]]], None] | None = None
                       ) -> list[tuple[int, bytes]]:
        """Sign and append records under one checkpoint; returns ``(index, envelope bytes)`` for each.

        A record is ``(payload type, payload, role)``, or the bytes of an envelope signed already.

        The ledger's first append starts with a ``trust.genesis`` record pinning ``trust.json``.
        Ctrl-C and SIGTERM are held back from the append to ``on_commit`` (which records what
        was appended), so a record is never appended without the caller knowing it was.
        """
        from engine.provenance.trust_log import GENESIS, TRUST_TYPE, trust_payload

        signed = [r if isinstance(r, bytes) else
                  sign_envelope(r[0], canonical_bytes(dict(r[1])), [self.signer(r[2])]).to_json_bytes()
                  for r in records]
        with self.ledger_lock(exclusive=True):
            ledger = self.open_ledger()
            self.check_appendable(ledger)
            if ledger.size == 0:
                genesis = trust_payload(GENESIS, self.trust(), rfc3339(now_utc().timestamp()),
                                        "the trust state this ledger starts from")
                signed.insert(0, sign_envelope(TRUST_TYPE, canonical_bytes(genesis),
                                               [self.signer("ledger")]).to_json_bytes())
            skip = len(signed) - len(records)
            note_signer = NoteSignerAdapter(self.signer("ledger"), name=ledger.origin)
            with held_signals():
                first, cp = ledger.append_many(signed, note_signer)
                done = [(first + i, data) for i, data in enumerate(signed)][skip:]
                remember_checkpoint(self.ws, cp)
                if on_commit is not None:
                    on_commit(done)
            self.index(ledger)
        return done

    def append_event(self, kind: str, subject: str, details: Mapping[str, Any], *, role: str | None = None) -> int:
        ev = Event(kind=kind, time=rfc3339(now_utc().timestamp()), subject=subject, details=details)
        index, _ = self.append(EVENT_TYPE, ev.to_dict(), role or EVENT_ROLES.get(kind, "trainer"))
        return index

    def change_trust(self, new: TrustStore) -> int | None:
        """Make ``new`` the workspace's trust state: a ledger record signed by an admin key, then trust.json.

        Before the ledger exists, trust.json is edited alone (the first append pins it); after,
        the change is a ``trust.changed`` record signed by a key the current state grants
        ``admin``. Returns the record's ledger index (None before the ledger exists).
        """
        from engine.provenance.trust_log import CHANGED, TRUST_TYPE, describe_change, trust_payload

        index = None
        ledger = self.open_ledger(create=False) if os.path.isdir(ledger_dir(self.ws)) else None
        if ledger is not None and ledger.size > 0:
            old = self.trust()
            summary = describe_change(old, new)
            if not summary:
                return None
            payload = trust_payload(CHANGED, new, rfc3339(now_utc().timestamp()), summary)
            index, _ = self.append(TRUST_TYPE, payload, "admin")
        self.save_trust(new)
        return index

    def trust_history(self) -> Any:
        """The trust states the ledger records (reads every entry; for verify and sync)."""
        from engine.provenance.trust_log import TRUST_TYPE, TrustHistory

        records = [(i.index, i.payload) for i in self.items()
                   if i.envelope is not None and i.envelope.payload_type == TRUST_TYPE and i.payload]
        return TrustHistory.from_records(records)

    def items(self) -> Iterator[LedgerItem]:
        """Every committed ledger entry, decoded as far as it decodes."""
        if not os.path.isdir(ledger_dir(self.ws)):
            return
        for i, raw in enumerate(self.open_ledger(create=False).entries()):
            try:
                env = Envelope.from_json_bytes(raw)
                payload = json.loads(env.payload)
                yield LedgerItem(i, raw, env, payload)
            except (SignatureError, ValueError) as e:
                yield LedgerItem(i, raw, None, None, str(e))

    # -- runs ------------------------------------------------------------------------------------

    def attestation_path(self, run_id: str) -> str:
        return self.ws.p(PROV_DIR, f"{run_id}.dsse.jsonl")

    def read_attestations(self, run_id: str) -> dict[str, bytes]:
        """Stage name -> envelope bytes of a run's attestation bundle."""
        out: dict[str, bytes] = {}
        try:
            with open(self.attestation_path(run_id), "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return out
        for line in lines:
            if not line:
                continue
            try:
                stmt = json.loads(Envelope.from_json_bytes(line).payload)
                stage = stmt["predicate"]["buildDefinition"]["externalParameters"]["stage"]
            except (SignatureError, ValueError, KeyError, TypeError):
                stage = f"<unreadable line {len(out)}>"
            out[stage] = line
        return out

    def record_run(self, rep: Any, result: Any, git: Mapping[str, Any],
                   on_commit: Callable[[RunRecord], None] | None = None,
                   gate_results: Sequence[tuple[str, bytes]] = ()) -> tuple[RunRecord, list[int]]:
        """Attest every executed/restored stage, sign the run record, append it and the run's gate
        results (see run_record); returns the record and the gate results' ledger indexes."""
        from engine.provenance.run_record import record_run

        return record_run(self, rep, result, git, on_commit, gate_results)

def python_info() -> str:
    return sys.version.split()[0]
