"""What to run and why: the spec, its YAML and interpolation, the DAG, stage keys, staleness, certus.lock.

Pure: values and bytes in, values out. It may use :mod:`engine.errors` and the store's value types
(digests, hash entries); it imports no Hydra, DVC, subprocess, signing, ledger or CLI.
"""
