"""Builds the coordinator for a CLI run, with signed provenance when the workspace has a trust file."""

from __future__ import annotations

import argparse
import os
from typing import Any

from engine.run.repro import Repro, ReproOptions, ReproResult
from engine.store.workspace import Workspace

__all__ = ["make_repro", "ProvenanceRepro"]


class ProvenanceRepro(Repro):
    """A repro that signs attestations and a run record and appends it to the ledger."""

    def __init__(self, ws: Workspace, opts: ReproOptions, *, key: str | None = None, **kw: Any) -> None:
        super().__init__(ws, opts, **kw)
        from engine.provenance.recorder import Provenance

        self.prov = Provenance(ws, key=key)
        self.record: Any = None
        self._derived_done = False
        self._packaged = False
        self._unattested: set[str] = set()
        self._index: Any = None

    def _committed(self, record: Any) -> None:
        self.record = record

    def run(self) -> ReproResult:
        # fail before any stage runs if the run could not be signed, or would extend a ledger that
        # verify would reject (damaged, rolled back, trust.json edited outside the ledger)
        from engine.errors import LedgerError
        from engine.provenance.recorder import git_state

        self.prov.signer("trainer")
        self.prov.signer("ledger")
        try:
            self.prov.ensure_ledger()
        except OSError as e:
            raise LedgerError(f"{e.filename}: cannot create the ledger ({e.strerror}); nothing was run") from e
        with self.prov.ledger_lock(exclusive=False):
            try:
                self._index = self.prov.check_appendable(self.prov.open_ledger(create=False))
            except LedgerError as e:
                raise LedgerError(f"{e}; nothing was run") from e
        # outputs certus.lock records that no attestation in the ledger covers (a run killed before
        # its record was signed): run them again rather than call them up to date
        adopted = self._index.logged.get("adopted_sha256", {})  # dvc.lock entries adopted (ledger events)
        self._unattested = {n for n in self.plan_names() if (entry := self.lock.get(n)) is not None
                            and entry.outs and not self._index.attested(entry.outs)
                            and _adopted_sha256(n, entry.outs) not in adopted}
        self._git = git_state(self.ws.root)
        return super().run()

    def _ledger_index(self) -> Any:
        return self._index

    def _extra_reasons(self, stage: str) -> tuple[str, ...]:
        if stage in self._unattested:
            return ("its outputs in certus.lock are not attested in the ledger (an earlier run ended before "
                    "its record was signed)",)
        return ()

    def _restorable(self, st: Any, outs: dict[str, dict[str, Any]]) -> bool:
        from engine.provenance.recorder import restore_source

        return restore_source(self._index, st.name, outs) is not None

    def _refused(self, stage: str, ref: str, why: str) -> None:
        self.prov.append_event("dataset.refused", ref, {"stage": stage, "reason": why, "run_id": self.run_id})

    def _after(self, result: ReproResult) -> None:
        if self.record is not None:  # recorded already: a Ctrl-C after the append must not record it twice
            return
        if not self._derived_done:
            self._derived_done = True
            self._register_derived(result)
        gates = self._gates.sign_pending(self.prov.signer("trainer")) if self._gates is not None else []
        _, at = self.prov.record_run(self, result, self._git, on_commit=self._committed, gate_results=gates)
        self.err.write(f"[certus] signed run record {result.run_id} ({len(self.record.attestations)} "
                       f"attestation(s), merkle root {self.record.merkle_root[:16]}…) appended to the ledger\n")
        if self._gates is not None:  # gate results evaluated in this run: listed in its record, appended after it
            self._gates.committed(at, self.err)
        problems: list[str] = []
        try:
            if self.spec.packages and result.status == "succeeded" and not self._packaged:
                self._packaged = True  # once: the release record cites this run's record and gate results
                from engine.run.packaging import package_after_run

                problems = package_after_run(self.prov, self.spec, self.lock, result, self.err,
                                             getattr(self, "package_extras", None))
        finally:
            if result.status == "interrupted":  # Ctrl-C: no network now; the next sync or run sequences it
                pass
            elif os.path.exists(os.path.join(self.ws.root, ".certus", "remotes.json")):
                from engine.run.ledger_remotes import sync_remotes  # a team's shared log (issue 16)

                sync_remotes(self.prov, self.err)
        if problems:
            from engine.errors import ReleaseError

            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ReleaseError(problems[0] + more)


    def _register_derived(self, result: ReproResult) -> None:
        """Outputs a stage declares under ``register:`` become derived datasets (lineage raw -> split)."""
        from engine.datasets.registry import Registry, register_derived
        from engine.provenance.recorder import sha256_hex

        todo = [(n, o) for n, o in sorted(result.outcomes.items())
                if o.state in ("ran", "restored") and self.spec[n].register]
        if not todo:
            return
        reg = Registry.load(self.ws.root)
        signer = self.prov.signer("trainer")
        for name, oc in todo:
            st = self.spec[name]
            parents = []
            for d in oc.datasets:  # consumed datasets, named by their manifests
                parent = reg.resolve(d["annotations"]["dataset"])
                if parent not in parents:
                    parents.append(parent)
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


def _adopted_sha256(stage: str, outs: dict[str, Any]) -> str:
    from engine.pipeline.dvc_pipeline import adopted_sha256

    return adopted_sha256(stage, outs)


def make_repro(ws: Workspace, opts: ReproOptions, args: argparse.Namespace | None = None) -> Repro:
    from engine.provenance.recorder import Provenance

    if opts.dry or not Provenance(ws).enabled:
        return Repro(ws, opts)
    return ProvenanceRepro(ws, opts, key=getattr(args, "key", None))
