"""The Ed25519 verify primitive (PyNaCl / libsodium), alone, so the pure core can reach it lazily.

:mod:`engine.provenance.signing` and :mod:`engine.provenance.note` call :func:`verify_ed25519` only
when a signature is checked, so importing them never loads nacl; keeping it apart from the key
files adapter (:mod:`engine.adapters.keys`, which builds on the core's key types) leaves no cycle.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

__all__ = ["verify_ed25519"]


def verify_ed25519(public_key: bytes, sig: bytes, message: bytes) -> bool:
    """True iff ``sig`` is a valid Ed25519 signature of ``message`` under ``public_key``."""
    if len(public_key) != 32 or len(sig) != 64:
        return False
    try:  # the binding, not VerifyKey: verify checks tens of thousands of signatures, and the wrapper's cost shows
        nacl.bindings.crypto_sign_open(sig + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
