"""The model registry: numbered immutable versions and movable aliases, as the ledger records them.

The ledger is the registry's only source of truth: ``registry.registered`` events (version N of a
model is a bundle, by root digest, from a release record and a run) and ``registry.alias`` events
(an alias now names version N; ``previous`` says what it named before), each signed by a key with
the ``deployer`` role and judged at its ledger position. The registry directory only stores the
verified bundle copies (``DIR/NAME/N/``); a copy no event names is debris from a killed deploy and
is never served. Because a deploy's events are one ledger append, a deploy killed at any point
leaves the alias where it was or where it was moved — never in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ReleaseError
from engine.provenance.records import EVENT_TYPE
from engine.release.ledger_view import LedgerView, ViewEntry

__all__ = ["Registry", "ModelState", "Version", "AliasMove", "registry_dir", "parse_ref"]

REGISTERED, ALIAS = "registry.registered", "registry.alias"


def registry_dir(ws_root: str, given: str | None = None) -> str:
    return os.path.abspath(given) if given else os.path.join(ws_root, "registry")


def registry_id(ws_root: str, path: str) -> str:
    """How events name a registry: its path relative to the workspace (absolute when outside it)."""
    rel = os.path.relpath(path, ws_root)
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME@VERSION`` (a number) or ``NAME@ALIAS``."""
    name, _, at = ref.partition("@")
    if not name:
        raise ReleaseError(f"'{ref}': expected NAME, NAME@VERSION or NAME@ALIAS")
    return name, at or None


@dataclass(frozen=True)
class Version:
    number: int
    bundle_root: str
    bundle_version: str
    run_id: str
    release_sha256: str
    release_index: int
    vsa_sha256: str
    index: int  # the registry.registered event
    time: str
    deployer: str  # keyid


@dataclass(frozen=True)
class AliasMove:
    alias: str
    version: int
    previous: int | None
    rollback: bool
    vsa_sha256: str
    index: int
    time: str
    deployer: str


@dataclass
class ModelState:
    name: str
    versions: dict[int, Version] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    moves: list[AliasMove] = field(default_factory=list)

    def resolve(self, at: str | None) -> Version:
        if at is None:
            if not self.versions:
                raise ReleaseError(f"model '{self.name}': no versions registered")
            return self.versions[max(self.versions)]
        if at.isdigit():
            v = self.versions.get(int(at))
            if v is None:
                raise ReleaseError(f"model '{self.name}': no version {at} (versions: "
                                   f"{', '.join(map(str, sorted(self.versions))) or 'none'})")
            return v
        if at not in self.aliases:
            raise ReleaseError(f"model '{self.name}': no alias '{at}' (aliases: "
                               f"{', '.join(sorted(self.aliases)) or 'none'})")
        return self.versions[self.aliases[at]]


@dataclass
class Registry:
    path: str
    rid: str
    models: dict[str, ModelState] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, ws_root: str, view: LedgerView, path: str | None = None) -> Registry:
        """The registry's state from ``view``'s deployer-signed events (others are listed as problems)."""
        reg_path = registry_dir(ws_root, path)
        reg = cls(reg_path, registry_id(ws_root, reg_path))
        for e in view.of_type(EVENT_TYPE):
            kind = e.payload.get("kind")
            if kind not in (REGISTERED, ALIAS):
                continue
            d = e.payload.get("details") or {}
            if not isinstance(d, dict) or d.get("registry") != reg.rid:
                continue
            why = view.signature_problem(e, "deployer", str(e.payload.get("time")))
            if why:
                reg.problems.append(f"ledger entry {e.index} ({kind}): {why}; ignored")
                continue
            try:
                reg._apply(e, kind, d)
            except (KeyError, TypeError, ValueError) as err:
                reg.problems.append(f"ledger entry {e.index} ({kind}): malformed ({err}); ignored")
        return reg

    def _apply(self, e: ViewEntry, kind: str, d: dict[str, Any]) -> None:
        m = self.models.setdefault(str(d["name"]), ModelState(str(d["name"])))
        signer = e.envelope.signatures[0].keyid
        if kind == REGISTERED:
            n = int(d["version"])
            if n in m.versions:
                raise ValueError(f"version {n} registered twice")
            m.versions[n] = Version(n, str(d["bundle_root"]), str(d["bundle_version"]), str(d["run_id"]),
                                    str(d["release_sha256"]), int(d["release_index"]), str(d["vsa_sha256"]),
                                    e.index, str(e.payload.get("time")), signer)
            return
        n = int(d["version"])
        if n not in m.versions:
            raise ValueError(f"alias names version {n}, which is not registered")
        alias = str(d["alias"])
        prev = d.get("previous")
        m.moves.append(AliasMove(alias, n, None if prev is None else int(prev), bool(d.get("rollback")),
                                 str(d["vsa_sha256"]), e.index, str(e.payload.get("time")), signer))
        m.aliases[alias] = n

    def model(self, name: str) -> ModelState:
        if name not in self.models:
            raise ReleaseError(f"model '{name}': not in the registry {self.rid} (known: "
                               f"{', '.join(sorted(self.models)) or 'none'})")
        return self.models[name]

    def bundle_path(self, name: str, number: int) -> str:
        return os.path.join(self.path, name, str(number))

    def history(self, name: str) -> Iterator[tuple[int, str, str, Any]]:
        """(ledger index, time, what, the version or move) for every registry event of ``name``, in order."""
        m = self.model(name)
        rows: list[tuple[int, str, str, Any]] = [(v.index, v.time, "registered", v) for v in m.versions.values()]
        rows += [(mv.index, mv.time, "rollback" if mv.rollback else "alias", mv) for mv in m.moves]
        return iter(sorted(rows, key=lambda r: (r[0], r[2] != "registered")))
