"""``certus deploy``: verify a bundle's whole chain, install a verified copy, move an alias — or roll back.

Deploys into one registry are serialized by an flock on ``DIR/.lock`` (the second waits, then sees the
first one's version). Steps, each safe to be killed after:

1. verify the chain (:func:`engine.release.chain.verify_chain`); any broken link refuses the deploy and
   nothing is installed;
2. copy the bundle into ``DIR/.tmp-*``, hashing every byte written, check the copy against the signed
   manifest, rename it to ``DIR/NAME/N/`` (a leftover ``N/`` that no ledger event names is replaced);
3. append the SLSA VSA of the check (deployer-signed);
4. append ``registry.registered`` (a new bundle) and ``registry.alias`` as one ledger append.

Until 4 is committed the alias names what it named before; after, the new version. A rollback moves
the alias back to the version it named before its last move, after verifying that version's copy
and its chain again (its gate must still stand; an expired waiver refuses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import ReleaseError
from engine.provenance.records import EVENT_TYPE, Event
from engine.provenance.release_records import vsa_statement
from engine.provenance.statement import PAYLOAD_TYPE, rfc3339
from engine.release.chain import ChainReport, verify_chain
from engine.release.ledger_view import LedgerView
from engine.release.registry import ALIAS, REGISTERED, Registry, registry_dir

__all__ = ["DeployRefused", "Deployed", "deploy", "rollback", "registry_lock"]


class DeployRefused(ReleaseError):
    """The chain behind a bundle is broken somewhere; nothing was installed."""

    exit_code = 4

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


@dataclass(frozen=True)
class Deployed:
    name: str
    version: int
    alias: str
    previous: int | None
    new_version: bool
    vsa_index: int
    links: int
    path: str


@contextlib.contextmanager
def registry_lock(path: str) -> Iterator[None]:
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[certus] waiting for another deploy into {path} to finish", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _step(name: str) -> None:
    """A crash point for the kill -9 tests (``CERTUS_CRASH_AT=NAME`` kills this process right there)."""
    if os.environ.get("CERTUS_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _refuse(rep: ChainReport, what: str) -> DeployRefused:
    more = f" (and {len(rep.failures) - 1} more; --json lists them)" if len(rep.failures) > 1 else ""
    return DeployRefused(f"{what}: refused: {rep.failures[0]}{more}", rep.failures)


def _refuse_in_review(view: LedgerView, bundle_root: str, what: str) -> None:
    """Drift feedback (issue 13): a bundle whose last drift report FAILED is not deployed until a
    re-evaluation passes or an approver waives the report (:mod:`engine.release.review`)."""
    from engine.release.review import drift_review

    review = drift_review(view, bundle_root)
    if review.in_review:
        raise DeployRefused(f"{what}: refused: {review.why()}", [review.why()])


def _vsa(prov: Any, rep: ChainReport, name: str, resource: str, signer: Any, version: str) -> tuple[int, str]:
    import hashlib

    from engine.release.publish import append_signed

    inputs = [(f"certus:ledger/{index}#{what}", sha) for what, sha, index in rep.links]
    assert rep.release is not None
    stmt = vsa_statement(bundle_name=name, bundle_root=rep.release.bundle_root, resource_uri=resource,
                         time_verified=rfc3339(datetime.now(UTC).timestamp()), inputs=inputs,
                         verifier_version=version)
    (index,) = append_signed(prov, [(PAYLOAD_TYPE, stmt, "deployer")], {"deployer": signer})
    raw = prov.open_ledger(create=False).entry(index)
    return index, hashlib.sha256(raw).hexdigest()


def _install(reg: Registry, name: str, number: int, bundle: str) -> str:
    """Copy ``bundle`` to ``DIR/NAME/N`` through a temporary directory; every byte written is hashed and
    must match the signed manifest (the copy, not the source, is what will be served)."""
    from engine.release.oms import SIGNATURE_FILE, parse_bundle, parse_statement
    from engine.store.hashing import copy_hashing

    dest = reg.bundle_path(name, number)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(reg.path, f".tmp-{name}-{number}-{secrets.token_hex(4)}")
    try:
        written: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(bundle):
            dirnames.sort()
            rel = os.path.relpath(dirpath, bundle)
            os.makedirs(os.path.join(tmp, rel), exist_ok=True)
            for fn in sorted(filenames):
                src = os.path.join(dirpath, fn)
                if os.path.islink(src):
                    raise ReleaseError(f"bundle file {src}: a symbolic link; refused")
                key = os.path.normpath(os.path.join(rel, fn)).replace(os.sep, "/")
                written[key] = copy_hashing(src, os.path.join(tmp, rel, fn))
                _step("copying")
        with open(os.path.join(tmp, SIGNATURE_FILE), "rb") as f:
            signed = {r.name: r.digest for r in parse_statement(parse_bundle(f.read()).envelope.payload).resources}
        written.pop(SIGNATURE_FILE, None)
        if written != signed:
            bad = sorted(set(written.items()) ^ set(signed.items()))[0][0]
            raise ReleaseError(f"bundle {bundle}: {bad} changed while it was copied; deploy again")
        if os.path.exists(dest):  # a copy a killed deploy left, which no ledger event names
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _sweep(path: str) -> None:
    """Remove what killed deploys left behind (only ever temporary copies)."""
    for e in os.listdir(path):
        if e.startswith(".tmp-"):
            shutil.rmtree(os.path.join(path, e), ignore_errors=True)


def deploy(prov: Any, bundle: str, alias: str, signer: Any, *, registry: str | None = None,
           version: str = "") -> tuple[Deployed, ChainReport]:
    path = registry_dir(prov.ws.root, registry)
    with registry_lock(path):
        _sweep(path)
        now = datetime.now(UTC)
        rep = verify_chain(prov, bundle, now=now)
        if not rep.ok:
            raise _refuse(rep, f"deploy of {bundle}")
        assert rep.release is not None and rep.release_entry is not None
        name = rep.release.name
        view = LedgerView.load(prov)
        _refuse_in_review(view, rep.release.bundle_root, f"deploy of {bundle}")
        reg = Registry.load(prov.ws.root, view, path)
        model = reg.models.get(name)
        existing = next((v for v in (model.versions.values() if model else ())
                         if v.bundle_root == rep.release.bundle_root), None)
        number = existing.number if existing else max(model.versions, default=0) + 1 if model else 1
        if existing is None:
            _install(reg, name, number, bundle)
        _step("installed")
        vsa_index, vsa_sha = _vsa(prov, rep, name, f"certus:registry/{reg.rid}/{name}/{number}", signer, version)
        _step("summarized")
        previous = model.aliases.get(alias) if model else None
        events = []
        if existing is None:
            events.append(_event(REGISTERED, f"{name}@{number}", {
                "registry": reg.rid, "name": name, "version": number, "bundle_root": rep.release.bundle_root,
                "bundle_version": rep.release.version, "run_id": rep.release.run.get("run_id"),
                "release_sha256": rep.release_entry.sha256, "release_index": rep.release_entry.index,
                "vsa_sha256": vsa_sha}))
        events.append(_event(ALIAS, f"{name}@{alias}", {"registry": reg.rid, "name": name, "alias": alias,
                                                        "version": number, "previous": previous,
                                                        "rollback": False, "vsa_sha256": vsa_sha}))
        _append_events(prov, events, signer)
        return Deployed(name, number, alias, previous, existing is None, vsa_index, len(rep.links),
                        reg.bundle_path(name, number)), rep


def rollback(prov: Any, name: str, alias: str, signer: Any, *, registry: str | None = None,
             version: str = "") -> tuple[Deployed, ChainReport]:
    path = registry_dir(prov.ws.root, registry)
    with registry_lock(path):
        reg = Registry.load(prov.ws.root, LedgerView.load(prov), path)
        model = reg.model(name)
        current = model.aliases.get(alias)
        if current is None:
            raise ReleaseError(f"model '{name}': alias '{alias}' names no version; nothing to roll back")
        last = next(m for m in reversed(model.moves) if m.alias == alias)
        if last.previous is None:
            raise ReleaseError(f"model '{name}': alias '{alias}' named no version before version {current}; "
                               "nothing to roll back to")
        target = last.previous
        _refuse_in_review(LedgerView.load(prov), model.versions[target].bundle_root,
                          f"rollback of {name}@{alias} to version {target}")
        rep = verify_chain(prov, reg.bundle_path(name, target), now=datetime.now(UTC))
        if not rep.ok:
            raise _refuse(rep, f"rollback of {name}@{alias} to version {target}")
        vsa_index, vsa_sha = _vsa(prov, rep, name, f"certus:registry/{reg.rid}/{name}/{target}", signer, version)
        _append_events(prov, [_event(ALIAS, f"{name}@{alias}", {
            "registry": reg.rid, "name": name, "alias": alias, "version": target, "previous": current,
            "rollback": True, "vsa_sha256": vsa_sha})], signer)
        return Deployed(name, target, alias, current, False, vsa_index, len(rep.links),
                        reg.bundle_path(name, target)), rep


def _event(kind: str, subject: str, details: dict[str, Any]) -> dict[str, Any]:
    return Event(kind=kind, time=rfc3339(datetime.now(UTC).timestamp()), subject=subject, details=details).to_dict()


def _append_events(prov: Any, events: list[dict[str, Any]], signer: Any) -> None:
    from engine.release.publish import append_signed

    append_signed(prov, [(EVENT_TYPE, e, "deployer") for e in events], {"deployer": signer})
