"""Bytes on disk: content hashing and the stat cache, the object and run caches, checkout, gc,
atomic file writes, sealed local caches, the workspace and its lock, forked parallel work.

May use :mod:`engine.pipeline` (a workspace loads specs); never imports the coordinator
(:mod:`engine.run`), provenance or the CLI. Everything here is a cache or a convenience: what is
evidence lives in :mod:`engine.provenance`.
"""
