"""Model release: signed bundles in the OpenSSF Model Signing (OMS) v1.0 format.

A bundle is a directory — the model's files under ``model/``, the serving/guardrail config, the
license, a model card (``MODEL_CARD.md`` and ``model_card.json``) — and ``model.sig``, a Sigstore
bundle holding a DSSE envelope over an in-toto Statement with the OMS predicate, signed by an ECDSA
P-256 ``releaser`` key. :mod:`~engine.release.oms` is the format (pure), :mod:`~engine.release.card`
the model card, :mod:`~engine.release.bundle` builds bundles (and their reproducible tar) and
:mod:`~engine.release.verify` checks them offline against a trust file or one public key.

Layer: above provenance and datasets (it reads run records and trust), below run and the CLI.
Gate results, release records and deployment (issues 11 and 12) build on top of this.
"""
