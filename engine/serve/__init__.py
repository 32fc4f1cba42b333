"""Serving a verified deployment with guardrails and telemetry, and monitoring it for drift (issue 13).

Nothing here is imported by ``certus status`` or ``repro``: the serving stack (Starlette, uvicorn,
prometheus-client, limits, scipy) loads only for ``certus serve`` / ``certus monitor`` and packaging's
drift reference.
"""
