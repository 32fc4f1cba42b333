"""Dataset governance inside a run: every dataset a selected stage consumes passes its checks
(bytes, approval, role matrix, retention, sensitivity, schema) before anything runs."""

from __future__ import annotations

import os
from typing import Any

from engine.pipeline.spec import StageSpec
from engine.pipeline.status import evaluate
from engine.run.outcome import StageOutcome

__all__ = ["DatasetChecks"]


class DatasetChecks:
    """Mixed into :class:`engine.run.repro.Repro` (uses its workspace, spec, hasher, lock, config)."""

    ws: Any
    spec: Any
    hasher: Any
    lock: Any
    config: Any
    opts: Any

    def _trust(self) -> Any:
        if not os.path.exists(self.ws.p("trust.json")):
            return None
        from engine.provenance.recorder import Provenance

        return Provenance(self.ws).trust()

    def _check_datasets(self, names: list[str]) -> dict[str, list[Any]]:
        """Every dataset a selected stage consumes must pass governance before anything runs."""
        wanted = [(n, ref) for n in names for ref in self.spec[n].datasets]
        if not wanted:
            return {}
        from engine.datasets.policy import check_use
        from engine.datasets.registry import Registry
        from engine.errors import DatasetError

        reg = Registry.load(self.ws.root)
        trust = self._trust()
        uses: dict[str, list[Any]] = {}
        for stage, ref in wanted:
            try:
                entry = reg.resolve(ref)
                e = self.hasher.hash_path(entry.manifest.path)
                use = check_use(reg, ref, stage, self.config, str(e.digest) if e else None, trust,
                                ledger_index=self._ledger_index())
                uses.setdefault(stage, []).append(use)
                # a stage that will run consumes the data now: its schema is checked before anything runs
                if self.opts.force or evaluate(self.spec[stage], self.hasher, self.lock).reasons:
                    why = self._schema_problem(use)
                    if why:
                        raise DatasetError(f"stage '{stage}': dataset {use.manifest.ref} refused: {why}")
            except DatasetError as err:
                self._refused(stage, ref, str(err))
                raise
        return uses

    def _schema_problem(self, use: Any) -> str | None:
        """Schema-check a consumed dataset once per run (memoised by content and schema)."""
        from engine.datasets.schema import load_schema_file, validate
        from engine.errors import DatasetError

        man = use.manifest
        if not man.schema:
            return None
        memo = self.__dict__.setdefault("_schema_memo", {})
        tag = (man.id, man.schema.get("sha256"))
        if tag not in memo:
            try:
                schema = load_schema_file(self.ws.p(man.schema["path"]), man.schema["path"])
                validate(self.ws.p(man.path), schema, label=man.path)
                memo[tag] = None
            except (OSError, DatasetError) as e:
                memo[tag] = str(e).replace("\n", "; ")
        return memo[tag]

    def _refused(self, stage: str, ref: str, why: str) -> None:
        """Hook: a dataset was refused for a stage (provenance records it in the ledger)."""

    def _validate_datasets(self, st: StageSpec, oc: StageOutcome) -> bool:
        for use in self.dataset_uses.get(st.name, []):
            oc.datasets.append(use.as_dependency())
            why = self._schema_problem(use)
            if why:
                oc.state, oc.error = "failed", f"dataset {use.manifest.ref} refused: {why}"
                self._refused(st.name, use.ref, oc.error)
                return False
        return True
