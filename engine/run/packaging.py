"""The pipeline's ``packages:`` step, run by the coordinator once the run's record and gate results are logged.

For each declared package whose model the run produced or kept: skipped when that version was already
released with exactly this model (``up to date``); refused when the version was released with another
model (versions are never reused: bump it), when the gate it requires does not stand, or when a ledger
link is missing; otherwise packaged and released through :func:`engine.release.package.package_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from engine.errors import EngineError, ReleaseError

__all__ = ["package_after_run"]


def package_after_run(prov: Any, spec: Any, lock: Any, result: Any, err: TextIO,
                      extras: Callable[[Any], dict[str, bytes]] | None = None) -> list[str]:
    """Package what ``spec.packages`` declares for ``result``'s run; returns one line per refusal.

    ``extras(package)``: more files to sign into the bundle (the CLI passes the serving layer's drift
    reference; this layer cannot import it)."""
    from engine.provenance.recorder import keys_dir
    from engine.release.package import load_releaser, model_digest, package_run, released

    problems: list[str] = []
    producers = {o: st.name for st in spec.stages.values() for o in st.all_outs}
    for pk in spec.packages.values():
        where = f"package '{pk.name}' {pk.version}"
        stage = producers.get(pk.model)
        oc = result.outcomes.get(stage)
        if oc is None or oc.state not in ("ran", "restored", "skipped"):
            problems.append(f"{where}: not packaged: stage '{stage}' did not produce {pk.model} in this run")
            continue
        try:
            digest = model_digest(prov.ws.p(pk.model))
            before = released(prov, pk.name, pk.version)
            if any(m.get("artifact_digest") == digest for r in before for m in r.get("models", [])):
                err.write(f"[certus] {where}: up to date (already released with this model)\n")
                continue
            if before:
                raise ReleaseError(f"version {pk.version} was already released with another model; a version is "
                                   f"never reused: bump it (e.g. certus repro package.version=...)")
            signer = load_releaser(pk.key, keys_dir())
            done = package_run(prov, signer, model=prov.ws.p(pk.model), name=pk.name, version=pk.version,
                               run=result.run_id, out=prov.ws.p(pk.out), license=_opt(prov, pk.license),
                               serving=_opt(prov, pk.serving), intended_use=pk.intended_use,
                               requires_gate=pk.requires_gate, extra=extras(pk) if extras else None)
        except EngineError as e:
            problems.append(f"{where}: {e}")
            continue
        import os

        rel = os.path.relpath(done.built.path, prov.ws.root)
        err.write(f"[certus] {where}: packaged {rel} and logged its release record as ledger entry {done.index}; "
                  f"deploy with 'certus deploy {rel}'\n")
    return problems


def _opt(prov: Any, path: str | None) -> str | None:
    return prov.ws.p(path) if path else None
