"""``repro --check-determinism STAGE``: run a stage again and compare its output hashes.

The stage is first brought up to date by the normal repro; then its command runs once
more on the same inputs. Whatever the verdict, the outputs recorded in the lock are put
back from the cache afterwards, so the check never changes the workspace's state.
"""

from __future__ import annotations

from engine.core.digest import Digest
from engine.errors import StageFailedError
from engine.run.repro import Repro

__all__ = ["check_determinism"]


def check_determinism(rep: Repro, target: str) -> dict[str, tuple[str, str | None]]:
    """Map each output to (recorded digest, digest of the re-run)."""
    [name] = rep.dag.resolve_targets([target])[:1] or [target]
    st = rep.spec[name]
    locked = rep.lock.get(name)
    if locked is None:
        raise StageFailedError(f"stage '{name}' has no lock entry to compare with; run 'certus repro {name}' first")
    from engine.store.workspace import WorkspaceLock

    wslock = WorkspaceLock(rep.ws)
    wslock.acquire(wait=rep.opts.wait, command="repro --check-determinism")
    try:
        kinds = rep._prepare_outs(st)
        ex = rep._make_executor(wslock.record_running)  # confined like any stage (certus.sandbox)
        try:
            res = ex.submit(rep._job(st, rep._sde_cached(), kinds)).result()
        finally:
            ex.shutdown()
        outs = rep.hasher.hash_many(st.all_outs)
        report = {p: (rec["digest"], str(outs[p].digest) if outs.get(p) else None) for p, rec in locked.outs.items()}
        for p, rec in locked.outs.items():  # put the recorded outputs back
            rep.cache.checkout(rep.ws.root, p, Digest.parse(rec["digest"]), rec.get("kind", "file"))
        rep.state.flush()
    finally:
        wslock.record_running([])
        wslock.release()
    if res.returncode != 0 or res.error:
        why = res.error or f"exit {res.returncode}"
        raise StageFailedError(f"stage '{name}' failed on the re-run ({why}); see {res.log_path}")
    return report
