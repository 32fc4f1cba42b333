"""Builds the coordinator for a CLI run, with signed provenance when the workspace has a trust file."""

from __future__ import annotations

import argparse
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
        # fail before any stage runs if the run could not be signed
        from engine.errors import LedgerError
        from engine.provenance import git_state, ledger_dir

        self.prov.signer("trainer")
        self.prov.signer("ledger")
        status = self.prov.open_ledger().status()
        if not status.ok:
            problems = [str(t) for t in status.torn_tails] + list(status.damage)
            raise LedgerError(f"{ledger_dir(self.ws)}: {'; '.join(problems)}; nothing was run: run 'certus verify' "
                              "for details and 'certus ledger repair' to cut a torn tail")
        self._git = git_state(self.ws.root)
        return super().run()

    def _refused(self, stage: str, ref: str, why: str) -> None:
        self.prov.append_event("dataset.refused", ref, {"stage": stage, "reason": why, "run_id": self.run_id})

    def _after(self, result: ReproResult) -> None:
        self._register_derived(result)
        self.record = self.prov.record_run(self, result, self._git)
        self.err.write(f"[certus] signed run record {result.run_id} ({len(self.record.attestations)} "
                       f"attestation(s), merkle root {self.record.merkle_root[:16]}…) appended to the ledger\n")


    def _register_derived(self, result: ReproResult) -> None:
        """Outputs a stage declares under ``register:`` become derived datasets (lineage raw -> split)."""
        from engine.datasets import Registry, register_derived
        from engine.provenance import sha256_hex

        todo = [(n, o) for n, o in sorted(result.outcomes.items())
                if o.state in ("ran", "restored") and self.spec[n].register]
        if not todo:
            return
        reg = Registry.load(self.ws.root)
        signer = self.prov.signer("trainer")
        for name, oc in todo:
            st = self.spec[name]
            parents = []
            for d in oc.datasets:  # consumed datasets
                ident = d["uri"].rsplit("@", 1)[-1]
                parents += [e for e in reg.entries.get(d["uri"].split("/", 1)[1].rsplit("@", 1)[0], [])
                            if e.manifest.id == ident]
            for dep, digest in oc.deps.items():  # derived datasets upstream
                hit = reg.by_path_digest(dep, digest)
                if hit is not None and hit not in parents:
                    parents.append(hit)
            for ds_name, ds in st.register:
                rec = oc.outs.get(ds["path"])
                if rec is None:
                    continue
                made = register_derived(reg, name=ds_name, path=ds["path"], digest=rec["digest"], stage=name,
                                        run_id=result.run_id, parents=parents, signer=signer, spec_entry=ds)
                if made is not None:
                    man, raw = made
                    self.prov.append_event("dataset.derived", man.ref, {
                        "id": man.id, "name": man.name, "version": man.version, "path": man.path,
                        "parents": list(man.parents), "run_id": result.run_id, "stage": name,
                        "manifest_sha256": sha256_hex(raw)})
                    reg = Registry.load(self.ws.root)


def make_repro(ws: Workspace, opts: ReproOptions, args: argparse.Namespace | None = None) -> Repro:
    from engine.provenance import Provenance

    if opts.dry or not Provenance(ws).enabled:
        return Repro(ws, opts)
    return ProvenanceRepro(ws, opts, key=getattr(args, "key", None))
