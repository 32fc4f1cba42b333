"""Releaser key files (ECDSA P-256): ``NAME.key`` (PKCS#8 PEM, 0600), ``NAME.pub`` and ``NAME.pub.pem``.

``NAME.pub`` is the same JSON as an Ed25519 key's (:class:`engine.provenance.signing.PublicKeyInfo`,
``"algorithm": "ecdsa-p256"``, the DER SubjectPublicKeyInfo in base64), so ``certus keys trust
NAME.pub --role releaser`` works as for every other key; ``NAME.pub.pem`` is the PEM public key that
OMS tools (``model-signing``'s ``use_elliptic_key_verifier``, ``certus bundle verify --pubkey``) take.
The private key is encrypted under ``CERTUS_KEY_PASSPHRASE`` (or a prompt) unless ``unencrypted``.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.adapters.ecdsa import P256Key, generate_p256, load_p256_pem
from engine.adapters.keys import (
    ENV_PASSPHRASE,
    _passphrase_from_env_or_tty,
    _read_private,
    _write_new,
    make_private_dir,
)
from engine.errors import KeyError_, KeyFileExistsError
from engine.provenance.signing import ECDSA_P256, ECDSA_ROLES, PublicKey, PublicKeyInfo, check_key_name, check_role

__all__ = ["EcdsaSigningKey", "generate_ecdsa_key", "is_pem_private_key", "load_ecdsa_signer", "save_ecdsa_key"]


class EcdsaSigningKey:
    """A named ECDSA P-256 releaser key; implements :class:`engine.provenance.signing.Signer`."""

    __slots__ = ("_name", "_role", "_key", "_public_key")

    def __init__(self, *, name: str, role: str, key: P256Key) -> None:
        self._name = check_key_name(name)
        self._role = check_role(role)
        if self._role not in ECDSA_ROLES:
            raise KeyError_(f"key '{name}': an {ECDSA_P256} key may hold only {', '.join(ECDSA_ROLES)}, "
                            f"not {role}")
        self._key = key
        self._public_key = PublicKey(key.spki_der, ECDSA_P256)

    name = property(lambda self: self._name, doc="The key's name; the stem of its file names.")
    role = property(lambda self: self._role, doc="The role it was made for.")
    public_key = property(lambda self: self._public_key, doc="The public half (DER SubjectPublicKeyInfo).")

    @property
    def keyid(self) -> str:
        """Hex SHA-256 of the public key's PEM text: the OMS ``publicKey.hint``."""
        return self._public_key.keyid

    @property
    def info(self) -> PublicKeyInfo:
        """What ``NAME.pub`` records."""
        return PublicKeyInfo(name=self._name, role=self._role, public_key=self._public_key)

    def sign(self, payload: bytes) -> bytes:
        """Deterministic DER ECDSA-SHA256 signature over ``payload``."""
        return self._key.sign(payload)

    def __repr__(self) -> str:
        return f"EcdsaSigningKey(name={self._name!r}, role={self._role!r}, keyid={self.keyid!r})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("refusing to pickle a private key")


def generate_ecdsa_key(name: str, role: str = "releaser") -> EcdsaSigningKey:
    """A fresh P-256 releaser key in memory; write it with :func:`save_ecdsa_key`."""
    return EcdsaSigningKey(name=name, role=role, key=generate_p256())


def save_ecdsa_key(key: EcdsaSigningKey, directory: str | os.PathLike[str], *, passphrase: str | None = None,
                   unencrypted: bool = False) -> tuple[Path, Path, Path]:
    """Write ``NAME.key`` (0600), ``NAME.pub`` and ``NAME.pub.pem``; refuse to overwrite any of them."""
    directory = Path(directory)
    priv, pub, pem = (directory / f"{key.name}{ext}" for ext in (".key", ".pub", ".pub.pem"))
    for path in (priv, pub, pem):
        if path.exists() or path.is_symlink():
            raise KeyFileExistsError(f"key file {path}: already exists; refusing to overwrite")
    if unencrypted:
        if passphrase is not None:
            raise KeyError_(f"key file {priv}: both a passphrase and unencrypted=True given; choose one")
        secret = None
    else:
        secret = passphrase or _passphrase_from_env_or_tty(priv, confirm=True)
        if not secret:
            raise KeyError_(f"key file {priv}: no passphrase given (set {ENV_PASSPHRASE}); "
                            "an unencrypted key needs an explicit unencrypted flag")
    try:
        make_private_dir(directory)
    except OSError as e:
        raise KeyError_(f"key directory {directory}: cannot create ({e.strerror})") from e
    _write_new(priv, key._key.to_pem(secret), 0o600)
    _write_new(pub, key.info.to_json_bytes(), 0o644)
    _write_new(pem, key.public_key.pem(), 0o644)
    return priv, pub, pem


def is_pem_private_key(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts like a PEM private key (a releaser key) rather than Certus's JSON."""
    try:
        with open(path, "rb") as f:
            return f.read(11) == b"-----BEGIN "
    except OSError:
        return False


def load_ecdsa_signer(path: str | os.PathLike[str], *, name: str | None = None, role: str = "releaser",
                      passphrase: str | None = None) -> EcdsaSigningKey:
    """Open ``NAME.key`` (PEM); its name is the file's stem unless given. Passphrase: the argument,
    ``CERTUS_KEY_PASSPHRASE`` or a prompt."""
    p = Path(path)
    where = f"key file {p}"
    data = _read_private(p, where)
    secret = passphrase
    if b"ENCRYPTED" in data.split(b"\n", 1)[0] and not secret:
        secret = _passphrase_from_env_or_tty(p, confirm=False)
    key = load_p256_pem(data, secret, where)
    stem = p.name[:-4] if p.name.endswith(".key") else p.stem
    try:
        return EcdsaSigningKey(name=name or stem, role=role, key=key)
    except KeyError_ as e:
        raise KeyError_(f"{where}: {e}") from e
