"""Certus: a declarative pipeline engine for governed, provable AI model lifecycles.

The pure core (spec, dag, hashing, planning, canonical JSON, Merkle, statements) lives in
top-level modules; everything that touches the outside world (Hydra, DVC, subprocesses,
PyNaCl, the file system's odd corners) sits in ``engine.adapters``.
"""

__version__ = "0.1.0"

from engine.errors import EngineError

__all__ = ["EngineError", "__version__"]
