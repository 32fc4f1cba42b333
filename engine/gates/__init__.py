"""Evaluation gates: policy thresholds over a stage's metrics, signed results, waivers, enforcement.

- :mod:`engine.gates.policy` — pure: the ``policy`` config group's rules and their evaluation
  (comparators, thresholds compared as decimals, hard limits, baseline changes). No I/O.
- :mod:`engine.gates.book` — the gate results and waivers the ledger holds, each signature judged
  by the trust state at its position.
- :mod:`engine.gates.runner` — what ``certus repro`` calls: evaluate a gate right after its metrics
  stage settles (content-addressed: re-evaluated only when metrics, policy or model change), sign the
  result, and refuse to start a ``requires_gate`` stage whose gate neither passed nor was waived.
- :mod:`engine.gates.waive` — ``certus waive``: the refusals, then a signed waiver in the ledger.

Record formats and their verification live in :mod:`engine.provenance.gate_records` and
:mod:`engine.provenance.verify_gates`. This package may use provenance, pipeline, store and core.
"""
