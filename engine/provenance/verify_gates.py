"""``certus verify``, gates: each gate result and waiver, judged at its ledger position.

A run record lists the gate results it evaluated by envelope digest; each must follow it in the ledger.
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

from engine.provenance.gate_records import waiver_problem
from engine.provenance.verify_runs import Report, Slice, parse_time

__all__ = ["verify_gates"]


def verify_gates(entries: Slice, report: Report) -> None:
    runs = {run_id: index for index, _, _, _, run_id in entries.runs}
    attested = {(p, d) for p, d, _ in entries.attested}
    attested |= {(p, d) for _, _, subjects in entries.attestations.values() for p, d in subjects.items()}
    results: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}
    seen = {sha: (index, what) for index, _, sha, what, _, _, waiver in entries.gate_entries if not waiver}
    for index, where, run_id, gate, sha in entries.listed_gates:  # what a run record vouches for must be there
        hit = seen.get(sha)
        if hit is None or hit[0] <= index:
            report.fail(f"{where}: lists gate result {sha[:16]}… (gate '{gate}'), which does not follow it in the "
                        "ledger")
        elif not isinstance(hit[1], dict) or hit[1].get("run_id") != run_id or hit[1].get("gate") != gate:
            report.fail(f"{where}: lists gate result {sha[:16]}… as gate '{gate}' of this run; ledger entry "
                        f"{hit[0]} is another run's or gate's")
    for index, where, sha, what, signers, trusted, waiver in sorted(entries.gate_entries):
        if not waiver:
            if isinstance(what, str):
                report.fail(f"{where}: {what}")
                continue
            run_id = what["run_id"]
            w = f"{where} gate '{what.get('gate')}' of run {run_id}"
            if runs.get(run_id, index) >= index:
                report.fail(f"{w}: no run record for run '{run_id}' precedes it in the ledger")
                continue
            for path, digest in sorted((what.get("metric_files") or {}).items()):
                if (path, digest) not in attested:
                    report.fail(f"{w}: metrics file {path} ({str(digest)[:23]}…) is not attested by any run")
            if trusted:
                results[sha] = (index, what, signers)
                report.count("gate results")
            continue
        payload = what if isinstance(what, dict) else {}
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
