"""Thin adapters around the outside world, one per library or system facility: Hydra (config),
DVC (data), PyNaCl (keys), subprocesses (the local executor), Landlock (the sandbox), git.

The rule: every import of an outside library that does I/O or has heavy start-up lives here, so
the rest of the engine is testable without it and the fast paths (``status``, a no-op ``repro``)
never load it. Adapters may use any engine package; no package but :mod:`engine.run` and
:mod:`engine.cli` reaches for an adapter at import time.
"""
