"""Value-level primitives every other package shares: RFC 8785 canonical JSON, typed digests, and
the rules a workspace path must meet. Pure: no I/O, no outside library; imports nothing from engine
but :mod:`engine.errors`.
"""
