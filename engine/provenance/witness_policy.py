"""Witness policy: ``verify`` can require N cosignatures from named witnesses on this ledger.

A witness (a key the trust file grants ``witness``) cosigns a checkpoint it has checked end to
end (``certus ledger checkpoint --cosign``); ``--add-cosigned FILE`` brings the cosignature back
into this ledger (:func:`prepare_cosigned`, stored by :mod:`engine.provenance.cosignature_store`).
``verify`` then finds the largest checkpoint with enough valid cosignatures and checks that it
is the current tree's prefix (:func:`check_witnesses`).

The policy lives in ``conf/config.yaml`` beside the engine's other settings (``certus.*``), read
as plain YAML (no Hydra on the verify path; a config group cannot set it), and the command line
overrides each field::

    certus:
      ledger:
        witnesses:
          require: 2            # cosignatures needed (default: len(names), else 1); 0 turns it off
          names: [w1, w2]       # whose count (trust-file key names; default: any witness key)
          require_all: true     # the whole log must be witnessed (default)

``require_all`` defaults to true: a team that asks for witnesses asks that no history goes
unwitnessed, and entries past the last cosigned checkpoint are exactly what a split view or a
rewrite would touch. ``require_all: false`` accepts a witnessed prefix and names the rest.

Cosignatures are judged by C2SP rules: each at its timestamp against the ``witness`` role of
the trust state the ledger records; unknown cosigners are ignored; a bad line by a trusted
witness fails verify.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.errors import ConfigError, EngineError, LedgerError
from engine.provenance.cosignature import Cosignature
from engine.provenance.note import Checkpoint, Note, UnverifiedNoteError
from engine.provenance.trust import TrustStore
from engine.provenance.witness import describe, trusted_cosignatures, witness_cosigners

__all__ = ["WitnessPolicy", "Witnessed", "check_witnesses", "load_policy", "prepare_cosigned"]

CONFIG = "conf/config.yaml"
_NODE = b"\x01"  # RFC 9162 interior-node prefix
SECTION = "certus.ledger.witnesses"


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """How many cosignatures, from whom, and whether the whole log must be covered."""

    require: int = 0
    names: tuple[str, ...] = ()
    require_all: bool = True
    source: str = ""

    def describe(self) -> str:
        who = f"from {', '.join(self.names)}" if self.names else "from any trusted witness"
        scope = "the whole log" if self.require_all else "a prefix of the log"
        return f"witness policy ({self.source}): {self.require} cosignature(s) {who} on {scope}"

    def to_dict(self) -> dict[str, Any]:
        return {"require": self.require, "names": list(self.names), "require_all": self.require_all,
                "source": self.source}


def _config_section(root: str) -> Mapping[str, Any]:
    path = os.path.join(root, CONFIG)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{CONFIG}: unreadable ({e.strerror or e})") from e
    if b"witnesses" not in raw:  # the common case: no policy, no YAML parse
        return {}
    import yaml

    try:
        node: Any = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{CONFIG}: not valid YAML ({str(e).splitlines()[0]})") from e
    for key in SECTION.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{CONFIG}: {SECTION}: expected a mapping {{require, names, require_all}}")
    return node


def load_policy(root: str, *, require: int | None = None, names: Iterable[str] | None = None,
                require_all: bool | None = None) -> WitnessPolicy | None:
    """The policy from ``conf/config.yaml`` with command-line overrides; None when there is none."""
    section = _config_section(root)
    where = f"{CONFIG} {SECTION}"
    unknown = sorted(set(section) - {"require", "names", "require_all"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} (require, names, require_all)")
    got_names = section.get("names", [])
    if not isinstance(got_names, list) or not all(isinstance(n, str) and n for n in got_names):
        raise ConfigError(f"{where}.names: expected a list of trust-file key names")
    want = section.get("require")
    if want is not None and (isinstance(want, bool) or not isinstance(want, int) or want < 0):
        raise ConfigError(f"{where}.require: expected a whole number >= 0, got {want!r}")
    every = section.get("require_all", True)
    if not isinstance(every, bool):
        raise ConfigError(f"{where}.require_all: expected true or false, got {every!r}")
    overridden = require is not None or names is not None or require_all is not None
    if not section and require is None and names is None:
        return None  # --[no-]require-all-witnessed alone asks for no witnesses
    chosen = tuple(dict.fromkeys(names if names is not None else got_names))
    if require is not None:
        count = require
    elif names is not None or want is None:  # new names without a count: all of them
        count = len(chosen) or 1
    else:
        count = want
    source = where + (" and the command line" if overridden else "") if section else "the command line"
    if count < 0:
        raise ConfigError(f"--require-witnesses: expected a whole number >= 0, got {count}")
    if chosen and count > len(chosen):
        raise ConfigError(f"witness policy ({source}): requires {count} cosignatures but names only "
                          f"{len(chosen)} witness(es) ({', '.join(chosen)})")
    if count == 0:
        return None
    return WitnessPolicy(count, chosen, every if require_all is None else require_all, source)


@dataclass(frozen=True, slots=True)
class Witnessed:
    """The largest checkpoint the cosignatures (and policy) vouch for."""

    size: int
    of: int
    witnesses: tuple[str, ...]
    cosignatures: tuple[Cosignature, ...] = ()

    def line(self) -> str:
        return f"witnessed up to entry {self.size} of {self.of} by {', '.join(self.witnesses)}"

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "of": self.of, "witnesses": list(self.witnesses),
                "cosignatures": [c.to_dict() for c in self.cosignatures]}


def _entries(lo: int, hi: int) -> str:
    return f"entry {lo}" if hi - lo == 1 else f"entries {lo}..{hi - 1}"


def roots_at(leaf_hashes: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """RFC 9162 roots of the first ``n`` leaves for each ``n`` in ``sizes``, in one pass.

    :class:`merkle.Frontier`'s algorithm on a plain list (it makes an object per leaf): about
    4x faster, which is most of this step's cost on a large ledger.
    """
    want, out, stack, sha = set(sizes), {}, [], hashlib.sha256
    for i, h in enumerate(leaf_hashes[: max(want, default=0)], 1):
        carry, n = h, i - 1
        while n & 1:  # merge one subtree per trailing 1-bit, as Frontier.append does
            carry = sha(_NODE + stack.pop() + carry).digest()
            n >>= 1
        stack.append(carry)
        if i in want:
            acc = stack[-1]
            for left in reversed(stack[:-1]):
                acc = sha(_NODE + left + acc).digest()
            out[i] = acc
    return out


def cosigned_by_size(notes: Iterable[tuple[int, str]], current: Checkpoint, leaves: Callable[[int], list[bytes]],
                     trust: TrustStore, fail: Callable[[str], None], *, where: str,
                     now: datetime | None = None) -> dict[int, dict[str, Cosignature]]:
    """Valid trusted cosignatures per checkpoint size; every stored note is checked, failures reported.

    ``current`` is the ledger's latest checkpoint; ``leaves(n)`` its first ``n`` leaf hashes (the
    ledger checks them against ``current``'s root when ``n`` is its size, so that root is used as is).
    """
    origin, size = current.origin, current.size
    parsed: list[tuple[int, Note, Checkpoint]] = []
    for number, text in notes:
        try:
            note = Note.from_text(text)
            parsed.append((number, note, Checkpoint.from_body(note.text)))
        except EngineError as e:
            fail(f"{where}: line {number}: not a cosigned checkpoint ({e})")
    wanted = {cp.size for _, _, cp in parsed if 0 < cp.size <= size}
    roots = roots_at(leaves(max(wanted)), wanted - {size}) if wanted else {}
    if size in wanted:
        roots[size] = current.root_hash
    out: dict[int, dict[str, Cosignature]] = {}
    for number, note, cp in parsed:
        head = f"{where}: line {number}: cosigned checkpoint {describe(cp)}"
        if cp.origin != origin:
            fail(f"{head}: for another log (ours is '{origin}')")
            continue
        if cp.size not in roots:
            fail(f"{head}: past this ledger (size {size}): it was rolled back or rewritten")
            continue
        if roots[cp.size] != cp.root_hash:
            fail(f"{head}: our tree's root at size {cp.size} differs: the history was rewritten after it was "
                 "witnessed (a fork)")
            continue
        try:
            cosigs = trusted_cosignatures(note, trust, now=now)
        except UnverifiedNoteError as e:
            fail(f"{head}: {e}")
            continue
        got = out.setdefault(cp.size, {})
        for c in cosigs:
            if c.name not in got or c.timestamp > got[c.name].timestamp:
                got[c.name] = c
    return out


def check_witnesses(ledger: Any, trust: TrustStore, report: Any, *, root: str, rel: str,
                    overrides: Mapping[str, Any] | None = None) -> None:
    """``verify``'s witness step: report what is witnessed; fail where the policy is not met."""
    from engine.provenance.cosignature_store import COSIGNATURES, read_cosigned

    try:
        policy = load_policy(root, **dict(overrides or {}))
    except ConfigError as e:
        report.fail(str(e))
        return
    stored = read_cosigned(ledger.path)
    if not stored.notes and not stored.problems and policy is None:
        return  # no policy, nothing cosigned: verify as before
    where = f"{rel}/{COSIGNATURES}"
    for problem in stored.problems:
        report.fail(problem.replace(str(ledger.path), rel))
    if stored.torn:
        report.notes.append(stored.torn.replace(str(ledger.path), rel))
    total, current = ledger.size, ledger.checkpoint() or Checkpoint(ledger.origin, 0, b"\0" * 32)
    try:
        by_size = cosigned_by_size(stored.notes, current, ledger.leaf_hashes, trust, report.fail, where=where)
    except EngineError as e:
        report.fail(f"{where}: {e}")
        return
    count = sum(len(v) for v in by_size.values())
    if count:
        report.count("witness cosignatures", count)
    if policy is not None:
        known = {c.name for c, _ in witness_cosigners(trust).values()}
        for name in policy.names:
            if name not in known:
                report.fail(f"{policy.describe()}: '{name}' is not a key trust.json grants the 'witness' role")
    need = policy.require if policy else 1
    best = None
    for n in sorted(by_size, reverse=True):
        counted = {k: c for k, c in by_size[n].items() if policy is None or not policy.names or k in policy.names}
        if len(counted) >= need:
            best = Witnessed(n, total, tuple(sorted(counted)), tuple(sorted(counted.values(),
                                                                            key=lambda c: (c.timestamp, c.name))))
            break
    if best is not None:
        report.witnessed = best.to_dict() | {"line": best.line(), "policy": policy.to_dict() if policy else None}
    if policy is None:
        return
    if best is None:
        have = max(((n, sorted(v)) for n, v in by_size.items()), default=None, key=lambda t: (len(t[1]), t[0]))
        seen = f"the most is {len(have[1])} ({', '.join(have[1])}) on size {have[0]}" if have else "none is stored"
        report.fail(f"{policy.describe()}: no checkpoint of this ledger has enough valid cosignatures ({seen}); "
                    "have a witness run 'certus ledger checkpoint --cosign', then 'certus ledger checkpoint "
                    "--add-cosigned FILE'")
    elif best.size < total:
        msg = f"{_entries(best.size, total)} not witnessed ({best.line()})"
        if policy.require_all:
            report.fail(f"{policy.describe()}: {msg}; have the witnesses cosign the current checkpoint")
        else:
            report.notes.append(msg)


def prepare_cosigned(text: str, ledger_size: int, origin: str, ledger_note: Callable[[int], str | None],
                     stored: Iterable[str], trust: TrustStore, *, now: datetime | None = None
                     ) -> tuple[str | None, Checkpoint, tuple[Cosignature, ...]]:
    """The line to store for a cosigned checkpoint FILE: the ledger's own note plus the trusted cosignatures.

    Refuses a note for another log, a size this ledger never signed, a body that differs from
    the ledger's note of that size, a bad cosignature by a trusted witness, and a note with no
    trusted cosignature at all. Returns (None, ...) when every such line is stored already.
    """
    note = Note.from_text(text)
    cp = Checkpoint.from_body(note.text)
    if cp.origin != origin:
        raise LedgerError(f"cosigned checkpoint {describe(cp)}: for another log (ours is '{origin}')")
    ours_text = ledger_note(cp.size) if 0 < cp.size <= ledger_size else None
    if ours_text is None:
        raise LedgerError(f"cosigned checkpoint {describe(cp)}: this ledger (size {ledger_size}) never signed a "
                          "checkpoint of that size; export ours with 'certus ledger checkpoint --export'")
    ours = Note.from_text(ours_text)
    if ours.text != note.text:
        theirs = describe(cp)
        raise LedgerError(f"cosigned checkpoint {theirs}: differs from the one this ledger signed at size {cp.size} "
                          f"({describe(Checkpoint.from_body(ours.text))}): not our history")
    cosigs = trusted_cosignatures(note, trust, now=now)
    if not cosigs:
        raise LedgerError(f"cosigned checkpoint {describe(cp)}: no cosignature by a key trust.json grants the "
                          "'witness' role (others are ignored)")
    keys = {(c.name, c.key_id) for c in cosigs}
    lines = [s.to_line() for s in note.signatures if (s.name, s.key_id) in keys]
    have: set[str] = set()
    for t in stored:
        if t.startswith(ours_text):
            have.update(s.to_line() for s in Note.from_text(t).signatures)
    new = [line for line in lines if line not in have]
    if not new:
        return None, cp, cosigs
    combined = ours_text + "".join(new)
    trusted_cosignatures(Note.from_text(combined), trust, now=now)  # the stored line verifies as a whole
    return combined, cp, cosigs
