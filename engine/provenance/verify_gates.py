"""``certus verify``, gates: each gate result and waiver, judged at its ledger position.

A gate result (trainer) must be a sound Test Result statement (result, test lists and per-rule
outcomes agreeing; the policy descriptor's digest that of its rules), follow the run record it names,
and have every metrics file it read attested by some run. A waiver (approver) must name an earlier
gate result by its envelope digest, match its run, gate, rule and observed value, waive a rule that
needed review (not one that passed or failed), not be expired at its own time, and be signed by a key
that signed neither that run record nor the gate result. Each valid waiver is named with the metric it
covers.
"""

from __future__ import annotations

from typing import Any

from engine.provenance.gate_records import gate_detail, is_gate_result, waiver_problem
from engine.provenance.verify_runs import Report, Slice, parse_time

__all__ = ["verify_gates"]


def verify_gates(entries: Slice, report: Report) -> None:
    runs = {run_id: index for index, _, _, _, run_id in entries.runs}
    attested = {(p, d) for p, d, _ in entries.attested}
    attested |= {(p, d) for _, _, subjects in entries.attestations.values() for p, d in subjects.items()}
    results: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}
    for index, where, sha, payload, signers, trusted in sorted(entries.gate_entries):
        if is_gate_result(payload):
            detail, why = gate_detail(payload)
            if detail is None:
                report.fail(f"{where}: {why}")
                continue
            run_id = detail["run_id"]
            w = f"{where} gate '{detail.get('gate')}' of run {run_id}"
            if runs.get(run_id, index) >= index:
                report.fail(f"{w}: no run record for run '{run_id}' precedes it in the ledger")
                continue
            for path, digest in sorted((detail.get("metric_files") or {}).items()):
                if (path, digest) not in attested:
                    report.fail(f"{w}: metrics file {path} ({str(digest)[:23]}…) is not attested by any run")
            subjects = {s.get("name"): s.get("digest", {}).get("sha256") for s in payload.get("subject", [])}
            if any(subjects.get(p) != str(d).split(":", 1)[-1] for p, d in (detail.get("metric_files") or {}).items()):
                report.fail(f"{w}: its subjects are not the metrics files it records")
                continue
            if trusted:
                results[sha] = (index, detail, signers)
                report.count("gate results")
        else:
            rsha = str(payload.get("gate_result_sha256"))
            w = f"{where} for run {payload.get('run_id')} gate '{payload.get('gate')}' metric '{payload.get('metric')}'"
            hit = results.get(rsha)
            if hit is None or hit[0] >= index:
                report.fail(f"{w}: names gate result {rsha[:16]}…, which no earlier trusted gate result in the "
                            "ledger has (bound to another or a tampered result)")
                continue
            r_index, detail, r_signers = hit
            try:
                at = parse_time(str(payload.get("time")))
            except ValueError:
                report.fail(f"{w}: unreadable time")
                continue
            own = r_signers + entries.run_signers.get(str(detail.get("run_id")), ())
            problem = waiver_problem(payload, rsha, detail, at, signers, own)
            if problem:
                report.fail(f"{w}: {problem}")
                continue
            if trusted:
                report.count("gate waivers")
                report.notes.append(f"ledger entry {index}: waiver by key {signers[0][:16]}… covers gate "
                                    f"'{detail['gate']}' metric '{payload['metric']}' (observed "
                                    f"{payload.get('observed')}) of run {detail['run_id']} (gate result at ledger "
                                    f"entry {r_index}) until {payload.get('expires')}: {payload.get('reason')}")
