"""ECDSA P-256 (FIPS 186-5) through the ``cryptography`` package: the releaser's key type.

OpenSSF Model Signing's key-based method signs with an elliptic-curve key (P-256 required), so a
``releaser`` key is ECDSA P-256 with SHA-256; everything else in Certus signs with Ed25519. This
module is the only one that imports ``cryptography``; the core reaches :func:`verify_p256` lazily
(from :meth:`engine.provenance.signing.PublicKey.verify`) and imports nothing from Certus but its
errors, so no cycle runs through it.

Signatures are DER-encoded ``ECDSA-Sig-Value`` (what DSSE, Sigstore bundles and ``model-signing``
carry) and deterministic (RFC 6979), so the same key over the same bytes gives the same signature:
a re-packaged bundle is byte-identical. Private keys are PKCS#8 PEM, encrypted (PBES2: PBKDF2-SHA256
and AES-256-CBC, what ``BestAvailableEncryption`` picks) unless explicitly written unencrypted;
``openssl`` and ``model-signing`` read them as they are.
"""

from __future__ import annotations

import unicodedata

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine.errors import KeyError_, WrongPassphraseError

__all__ = ["P256Key", "generate_p256", "load_p256_pem", "verify_p256"]


def _ecdsa() -> ec.ECDSA:
    try:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except (TypeError, UnsupportedAlgorithm):  # older cryptography / OpenSSL: randomized nonces
        return ec.ECDSA(hashes.SHA256())


class P256Key:
    """An ECDSA P-256 private key: signs bytes, gives its public half as DER SubjectPublicKeyInfo."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyError_("not an ECDSA P-256 (secp256r1) private key")
        self._key = key

    @property
    def spki_der(self) -> bytes:
        """The public key as DER SubjectPublicKeyInfo (uncompressed point)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA-with-SHA256 signature over ``message``."""
        return self._key.sign(message, _ecdsa())

    def to_pem(self, passphrase: str | None) -> bytes:
        """PKCS#8 PEM, encrypted under ``passphrase`` (NFC-normalized UTF-8) unless it is None."""
        enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if passphrase is not None:
            enc = serialization.BestAvailableEncryption(_secret(passphrase))
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    def __repr__(self) -> str:
        return "P256Key(<private>)"

    def __reduce__(self) -> object:
        raise TypeError("refusing to pickle a private key")


def generate_p256() -> P256Key:
    """A fresh random P-256 key."""
    return P256Key(ec.generate_private_key(ec.SECP256R1()))


def load_p256_pem(data: bytes, passphrase: str | None, where: str) -> P256Key:
    """Open a PEM private key (encrypted or not); ``where`` names the file in errors."""
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeyError_(f"{where}: encrypted and no passphrase given (set CERTUS_KEY_PASSPHRASE)")
    try:
        key = serialization.load_pem_private_key(data, _secret(passphrase) if encrypted and passphrase else None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        if encrypted:
            raise WrongPassphraseError(f"{where}: wrong passphrase (set CERTUS_KEY_PASSPHRASE)") from e
        raise KeyError_(f"{where}: not a PEM private key ({e})") from e
    try:
        return P256Key(key)  # type: ignore[arg-type]
    except KeyError_ as e:
        raise KeyError_(f"{where}: {e}") from e


def verify_p256(spki_der: bytes, sig: bytes, message: bytes) -> bool:
    """True iff ``sig`` (DER) is a valid ECDSA-SHA256 signature of ``message`` under the P-256 key."""
    try:
        pub = serialization.load_der_public_key(spki_der)
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            return False
        pub.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _secret(passphrase: str) -> bytes:
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")
