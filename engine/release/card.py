"""The model card: ``model_card.json`` (the record) and ``MODEL_CARD.md`` (rendered from it).

Fields follow the usual model-card sections (Mitchell et al., "Model Cards for Model Reporting"):
intended use, metrics, training data, the training run and its environment, plus what a release
adds: the files, the license, the releaser key. What a run record says is taken from the ledger
(:func:`run_section`): run id, status, times, git commit, pipeline, config and overrides, the
Merkle root of its attestations, the engine/Python/platform its stages ran under and the dataset
manifests they consumed (path, digest, media type), each by digest, so the card links back to the
evidence. Both files are resources in the signed OMS manifest.

**Gates (issue 11).** :func:`gate_section` is the hook: today it records ``status: not-evaluated``;
the release gate fills in thresholds, outcomes and waivers there, and packaging is then refused
unless the gate passed or is validly waived (issue 12 item 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CARD_SCHEMA", "build_card", "gate_section", "render_markdown", "run_section"]

CARD_SCHEMA = "https://certus.dev/model-card/v1"


def gate_section(run: Mapping[str, Any] | None, gates: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The gates the release passed, as the ledger records them: per gate its result, the digest and
    ledger index of the signed result, per metric value, comparator, threshold, hard limit and outcome,
    and each waiver that covers a metric (approver, reason, expiry, digest). ``gates`` comes from the
    packaging command, which refuses a run whose gates do not stand."""
    if not run or not run.get("run_id"):
        return {"status": "ungated", "results": [], "waivers": [],
                "note": "packaged without a training run (--run): no gate is claimed for this model"}
    if not gates:
        return {"status": "no-gates", "results": [], "waivers": [],
                "note": "the training run's pipeline declares no evaluation gate"}
    waivers = [w for g in gates for w in g.get("waivers", [])]
    return {"status": "passed" if all(g.get("result") == "PASSED" for g in gates) else "waived",
            "results": [{k: v for k, v in g.items() if k != "waivers"} for g in gates], "waivers": waivers}


def run_section(record: Mapping[str, Any], *, ledger_index: int | None, record_sha256: str | None,
                attestations: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """What the card says about the training run, from its run record and its stage statements."""
    env: dict[str, Any] = {}
    datasets: dict[str, dict[str, Any]] = {}
    for st in attestations:
        build = (st.get("predicate") or {}).get("buildDefinition") or {}
        internal = build.get("internalParameters") or {}
        for k in ("engine", "python", "platform"):
            if isinstance(internal.get(k), str):
                env.setdefault(k, internal[k])
        for dep in build.get("resolvedDependencies") or []:
            if isinstance(dep, dict) and dep.get("mediaType") and isinstance(dep.get("name"), str):
                datasets[dep["name"]] = {k: dep[k] for k in ("name", "digest", "mediaType", "annotations")
                                         if k in dep}
    git = record.get("git") or {}
    return {
        "run_id": record.get("run_id"),
        "status": record.get("status"),
        "started": record.get("started"),
        "finished": record.get("finished"),
        "git": {"commit": git.get("commit"), "dirty": git.get("dirty")},
        "pipeline": record.get("pipeline"),
        "overrides": list(record.get("overrides") or []),
        "config": record.get("config") or {},
        "attestations_merkle_root": record.get("merkle_root"),
        "ledger_index": ledger_index,
        "run_record_sha256": record_sha256,
        "environment": env,
        "datasets": [datasets[k] for k in sorted(datasets)],
    }


def build_card(*, name: str, version: str, released_at: str, releaser: Mapping[str, str],
               model_files: Sequence[Mapping[str, Any]], license_name: str, intended_use: str | None,
               metrics: Mapping[str, Any], training: Mapping[str, Any] | None,
               gates: Sequence[Mapping[str, Any]] = (),
               approvals: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``model_card.json`` object (rendered with sorted keys)."""
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "version": version,
        "released_at": released_at,
        "releaser": dict(releaser),
        "intended_use": intended_use or "not stated (certus package --intended-use TEXT)",
        "license": license_name,
        "model": {"files": [dict(f) for f in model_files]},
        "metrics": dict(metrics),
        "training": dict(training) if training else {"run_id": None, "note": "packaged without a run (--run)"},
        "datasets": list((training or {}).get("datasets", [])),
        "environment": dict((training or {}).get("environment", {})),
        "gates": gate_section(training, gates),
        # each consumed dataset's manifest and approval, by the digest and position of their ledger records
        "dataset_approvals": [dict(a) for a in approvals],
    }


def card_bytes(card: Mapping[str, Any]) -> bytes:
    return (json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def render_markdown(card: Mapping[str, Any]) -> str:
    """A human-readable card; ``model_card.json`` is the record."""
    tr = card.get("training") or {}
    lines = [f"# {card['name']} {card['version']}", "",
             f"Released {card['released_at']} by releaser key `{card['releaser'].get('name')}` "
             f"(`{card['releaser'].get('keyid', '')[:16]}…`). License: {card['license']}.", "",
             "## Intended use", "", str(card["intended_use"]), "", "## Model files", ""]
    lines += [f"- `{f['path']}` ({f['size']} bytes, sha256 `{f['sha256']}`)" for f in card["model"]["files"]]
    lines += ["", "## Metrics", ""]
    if not card["metrics"]:
        lines.append("None recorded.")
    for path, m in sorted(card["metrics"].items()):
        vals = m.get("values") if isinstance(m, dict) else m
        shown = ", ".join(f"{k} = {v}" for k, v in sorted(vals.items())) if isinstance(vals, dict) else str(vals)
        lines.append(f"- `{path}`: {shown}")
    lines += ["", "## Training run", ""]
    if tr.get("run_id"):
        git = tr.get("git") or {}
        lines += [f"- run `{tr['run_id']}` ({tr.get('status')}), {tr.get('started')} .. {tr.get('finished')}",
                  f"- commit `{git.get('commit')}`{' (dirty)' if git.get('dirty') else ''}, "
                  f"pipeline `{tr.get('pipeline')}`, overrides: {' '.join(tr.get('overrides') or []) or '(none)'}",
                  f"- ledger entry {tr.get('ledger_index')}, run record sha256 `{tr.get('run_record_sha256')}`"]
    else:
        lines.append(str(tr.get("note", "none")))
    lines += ["", "## Datasets", ""]
    lines += [f"- `{d['name']}` sha256 `{(d.get('digest') or {}).get('sha256')}`"
              for d in card["datasets"]] or ["None."]
    for a in card.get("dataset_approvals", []):
        app = a.get("approval")
        how = "approval inherited from its parents" if app == "inherited" else \
            f"approved (approval sha256 `{(app or {}).get('sha256')}`, ledger entry {(app or {}).get('ledger_index')})"
        lines.append(f"- `{a['dataset']}` manifest sha256 `{a['manifest_sha256']}` ({a.get('event')}, ledger entry "
                     f"{a.get('ledger_index')}): {how}")
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(card["environment"].items())] or ["Not recorded."]
    gates = card["gates"]
    lines += ["", "## Gates", "", f"Status: {gates['status']}. {gates.get('note', '')}".rstrip(), ""]
    for g in gates.get("results", []):
        lines.append(f"- gate `{g['gate']}`: {g['result']} (signed result sha256 `{g['sha256']}`, ledger entry "
                     f"{g['ledger_index']})")
        lines += [f"  - {m['name']}: {m.get('value')} ({m.get('comparator')} {m.get('threshold')}"
                  f"{', hard limit ' + str(m['hard_limit']) if m.get('hard_limit') is not None else ''}): "
                  f"{m.get('outcome')}" for m in g.get("metrics", [])]
    for w in gates.get("waivers", []):
        lines.append(f"- waiver for `{w['metric']}` by {w.get('approver')} until {w.get('expires')}: {w.get('reason')} "
                     f"(sha256 `{w['sha256']}`, ledger entry {w['ledger_index']})")
    return "\n".join(lines) + "\n"
