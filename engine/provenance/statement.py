"""in-toto Statement v1 with a SLSA Provenance v1 predicate, one per stage a run executed or restored.

Field choices (https://in-toto.io/Statement/v1, https://slsa.dev/spec/v1.0/provenance):

- ``subject``: the stage's outputs, ``name`` = workspace path, ``digest.sha256`` = file digest; a
  directory output is digested with in-toto's ``dirHash`` (the tree digest of its files, see
  :mod:`engine.store.hashing`). Workspace paths are ``name`` only: a relative path is no RFC 8089 URI.
- ``buildDefinition.externalParameters``: what the user controls: stage, resolved ``cmd``, the
  stage's param values, pipeline path and the run's CLI overrides.
- ``buildDefinition.internalParameters``: engine version, Python, platform, the environment the
  engine set, the stage key, and the confinement the stage ran under (``sandbox``: Landlock ABI and
  the ``writable:`` paths it declared, or why it ran unconfined) — so a record can say "this stage
  wrote nothing undeclared".
- ``buildDefinition.resolvedDependencies``: the deps with digests, and each consumed dataset's
  signed manifest file by its workspace path and the SHA-256 of those bytes (the data itself is a dep).
- ``runDetails``: builder id, the run id as ``invocationId``, start and finish times, and the log's
  digest as a byproduct annotated with the exit status. A stage restored from the run cache adds a
  ``restored-from`` byproduct naming the run that first produced the outputs and the digest of
  that run's attestation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["STATEMENT_TYPE", "PROVENANCE_TYPE", "PAYLOAD_TYPE", "BUILD_TYPE", "BUILDER_ID", "stage_statement",
           "rfc3339", "subject_digests"]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://certus.dev/buildtypes/stage/v1"
BUILDER_ID = "https://certus.dev/builders/local/v1"


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _algorithm(out: Mapping[str, Any]) -> str:
    """The DigestSet key for an output: ``dirHash`` (in-toto's tree digest) for directories."""
    return "dirHash" if out.get("kind") == "dir" else "sha256"


def subject_digests(statement: Mapping[str, Any]) -> dict[str, str]:
    """``{name: "sha256:<hex>"}`` for a statement's subjects, as certus.lock writes digests.

    A directory's ``dirHash`` is the SHA-256 of its manifest object (see :mod:`engine.store.hashing`),
    so both algorithms map to the lock's ``sha256:`` form; a subject with neither is left out.
    """
    out: dict[str, str] = {}
    for s in statement.get("subject") or ():
        digest = s.get("digest") if isinstance(s, Mapping) else None
        if not isinstance(digest, Mapping):
            continue
        value = digest.get("sha256", digest.get("dirHash"))
        if isinstance(value, str) and isinstance(s.get("name"), str):
            out[s["name"]] = "sha256:" + value
    return out


def stage_statement(
    *,
    stage: str,
    cmd: str,
    params: Mapping[str, Any],
    pipeline: str,
    overrides: Sequence[str],
    outs: Mapping[str, Mapping[str, Any]],
    deps: Mapping[str, str],
    datasets: Sequence[Mapping[str, Any]] = (),
    key: str,
    engine_version: str,
    python: str,
    platform: str,
    env: Mapping[str, str],
    run_id: str,
    started: float,
    finished: float,
    exit_status: int | None,
    log_digest: str | None,
    restored_from: Mapping[str, str] | None = None,
    sandbox: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the statement as a plain dict (canonical JSON is applied when it is signed)."""
    subjects = [{"name": p, "digest": {_algorithm(o): _hex(str(o["digest"]))}} for p, o in sorted(outs.items())]
    resolved = [{"name": p, "digest": {"sha256": _hex(d)}} for p, d in sorted(deps.items())]
    resolved += [dict(d) for d in datasets]
    byproducts: list[dict[str, Any]] = []
    if log_digest is not None:
        byproducts.append({"name": "log", "digest": {"sha256": _hex(log_digest)},
                           "annotations": {"exitStatus": exit_status}})
    if restored_from:
        byproducts.append({"name": "restored-from", "uri": f"certus:run/{restored_from['run_id']}/{stage}",
                           **({"digest": {"sha256": _hex(restored_from["attestation"])}}
                              if restored_from.get("attestation") else {})})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PROVENANCE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"stage": stage, "cmd": cmd, "params": dict(params), "pipeline": pipeline,
                                       "overrides": list(overrides)},
                "internalParameters": {"engine": engine_version, "python": python, "platform": platform,
                                       "env": dict(sorted(env.items())), "stageKey": key,
                                       **({"sandbox": dict(sandbox)} if sandbox else {})},
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID},
                "metadata": {"invocationId": run_id, "startedOn": rfc3339(started), "finishedOn": rfc3339(finished)},
                "byproducts": byproducts,
            },
        },
    }
