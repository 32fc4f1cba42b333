"""Certus: a declarative pipeline engine for governed, provable AI model lifecycles.

Packages, top to bottom (the layers ``lint-imports`` enforces, see pyproject.toml): ``cli`` (the
command line) > ``run`` (the coordinator) > ``release`` (model bundles) > ``gates`` (evaluation
gates) > ``provenance`` and ``datasets`` (signed records,
governed data) > ``pipeline`` (what to run and why) > ``store`` (bytes on disk) > ``core`` (shared
value primitives). ``adapters`` wraps the outside world (Hydra, DVC, PyNaCl, subprocesses,
Landlock, git) and is reached from ``run`` and ``cli``.
"""

__version__ = "0.1.0"

from engine.errors import EngineError

__all__ = ["EngineError", "__version__"]
