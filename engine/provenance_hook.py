"""Builds the coordinator for a CLI run, with signed provenance when the workspace has a trust file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.repro import Repro, ReproOptions, ReproResult
from engine.workspace import Workspace

__all__ = ["make_repro", "ProvenanceRepro"]


class ProvenanceRepro(Repro):
    """A repro that signs attestations and a run record and appends it to the ledger."""

    def __init__(self, ws: Workspace, opts: ReproOptions, *, key: str | None = None, **kw: Any) -> None:
        super().__init__(ws, opts, **kw)
        from engine.provenance import Provenance

        self.prov = Provenance(ws, key=key)
        self.record: Any = None

    def run(self) -> ReproResult:
        from engine.provenance import git_state

        # fail before any stage runs if the run could not be signed
        self.prov.signer("trainer")
        self.prov.signer("ledger")
        self._git = git_state(self.ws.root)
        return super().run()

    def _after(self, result: ReproResult) -> None:
        self.record = self.prov.record_run(self, result, self._git)
        self.err.write(f"[certus] signed run record {result.run_id} ({len(self.record.attestations)} "
                       f"attestation(s), merkle root {self.record.merkle_root[:16]}…) appended to the ledger\n")


def make_repro(ws: Workspace, opts: ReproOptions, args: argparse.Namespace | None = None) -> Repro:
    from engine.provenance import Provenance

    if opts.dry or not Provenance(ws).enabled:
        if not opts.dry:
            print("[certus] no trust.json in the workspace: this run is not signed "
                  "(see 'certus keys --help')", file=sys.stderr)
        return Repro(ws, opts)
    return ProvenanceRepro(ws, opts, key=getattr(args, "key", None))
