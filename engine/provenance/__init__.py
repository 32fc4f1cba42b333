"""Signed records and their checking: canonical JSON, DSSE, in-toto statements, run records, Merkle
trees, C2SP signed notes and cosignatures, the ledger and its audit and index, trust and its history,
``certus verify``, lineage and witnessing.

The formats (canonical, dsse, statement, records, merkle, note, trust_log) are pure; the rest reads
files. Verification never runs stages: nothing here imports :mod:`engine.run` or the executors.
"""
