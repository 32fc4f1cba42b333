"""Running stages: the coordinator (``repro``, the only writer of cache, lock and ledger), the executor
protocol, the determinism check, and the signed run that records provenance.

Uses the pipeline, the store, datasets and provenance; executors themselves live in
:mod:`engine.adapters` (local subprocesses, the sandbox).
"""
