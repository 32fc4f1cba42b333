"""PyNaCl adapter: Ed25519 signing keys and the files that hold them.

This is the only module that imports ``nacl`` (the core reaches :func:`verify_ed25519` lazily
through :meth:`engine.provenance.signing.PublicKey.verify`). Ed25519 is RFC 8032; the passphrase KDF is
Argon2id (RFC 9106) via libsodium's ``crypto_pwhash``; the seed is sealed with libsodium's
``crypto_secretbox`` (XSalsa20-Poly1305), https://doc.libsodium.org/.

**Private key file** ``<name>.key`` (mode 0600, pretty sorted JSON)::

    {"algorithm": "ed25519", "name": ..., "role": ..., "keyid": hex, "public_key": b64,
     "encrypted": true,
     "kdf": {"alg": "argon2id", "opslimit": int, "memlimit": int, "salt": b64},
     "secretbox": b64(nonce || ciphertext of the 32-byte seed)}

or, only when asked for explicitly (CI keys held in a secret store), ``"encrypted": false``
with ``"seed": b64`` instead of ``kdf`` / ``secretbox``. **Public key file** ``<name>.pub``:
see :class:`engine.provenance.signing.PublicKeyInfo`. The keyid is the hex SHA-256 of the raw public key.

Files are written atomically and never overwritten: a temporary file is written, fsynced,
then hard-linked to its final name (which fails if the name exists) and unlinked, so a reader
sees either no file or the whole file. Loading refuses a private key file that group or others
can access, and checks that the seed reproduces the recorded public key.

Passphrases come from the caller, else ``CERTUS_KEY_PASSPHRASE``, else a getpass prompt when
stdin is a terminal. They are NFC-normalised, never stored, logged or shown; neither the seed
nor the passphrase appears in any ``repr`` or error message, and keys refuse to be pickled.

``CERTUS_KDF_FAST=1`` makes *new* keys use Argon2id's minimum cost. It exists for tests only:
keys written with it are cheap to brute-force. Loading always uses the file's own parameters.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import secrets
import sys
import unicodedata
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.signing
import nacl.utils

from engine.adapters.ed25519 import verify_ed25519  # noqa: F401  (re-exported)
from engine.errors import KeyError_, KeyFileExistsError, KeyFilePermissionError, WrongPassphraseError
from engine.provenance.signing import (
    ED25519,
    PublicKey,
    PublicKeyInfo,
    b64decode_strict,
    check_key_name,
    check_role,
)

__all__ = [
    "ENV_KDF_FAST",
    "ENV_PASSPHRASE",
    "Ed25519SigningKey",
    "generate_key",
    "load_public_key",
    "load_signer",
    "make_private_dir",
    "save_key",
    "verify_ed25519",
]

ENV_PASSPHRASE = "CERTUS_KEY_PASSPHRASE"
ENV_KDF_FAST = "CERTUS_KDF_FAST"  # test-only: minimum Argon2id cost for new keys

_SEED_BYTES = 32
_COMMON = frozenset({"algorithm", "encrypted", "keyid", "name", "public_key", "role"})
_ENCRYPTED = _COMMON | {"kdf", "secretbox"}
_PLAIN = _COMMON | {"seed"}
_KDF = frozenset({"alg", "memlimit", "opslimit", "salt"})


class Ed25519SigningKey:
    """An Ed25519 private key with its name and role; implements :class:`engine.provenance.signing.Signer`."""

    __slots__ = ("_name", "_role", "_public_key", "_sk")

    def __init__(self, *, name: str, role: str, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != _SEED_BYTES:
            raise KeyError_(f"key '{name}': an Ed25519 seed is {_SEED_BYTES} bytes")
        self._name = check_key_name(name)
        self._role = check_role(role)
        self._sk = nacl.signing.SigningKey(seed)
        self._public_key = PublicKey(bytes(self._sk.verify_key))

    @classmethod
    def from_seed(cls, seed: bytes, *, name: str, role: str) -> Ed25519SigningKey:
        """A key from a known 32-byte seed (fixed test keys and golden files)."""
        return cls(name=name, role=role, seed=seed)

    @property
    def name(self) -> str:
        """The key's name; also the stem of its file names."""
        return self._name

    @property
    def role(self) -> str:
        """The role the key was made for (the trust file decides what it may sign)."""
        return self._role

    @property
    def public_key(self) -> PublicKey:
        """The public half."""
        return self._public_key

    @property
    def keyid(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return self._public_key.keyid

    @property
    def info(self) -> PublicKeyInfo:
        """What the ``.pub`` file records about this key."""
        return PublicKeyInfo(name=self._name, role=self._role, public_key=self._public_key)

    def sign(self, payload: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``payload``."""
        return bytes(self._sk.sign(payload).signature)

    def __repr__(self) -> str:
        return f"Ed25519SigningKey(name={self._name!r}, role={self._role!r}, keyid={self.keyid!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("refusing to pickle a private key")

    def _seed(self) -> bytes:
        return bytes(self._sk)


def generate_key(name: str, role: str) -> Ed25519SigningKey:
    """A fresh random Ed25519 key, in memory; write it with :func:`save_key`."""
    return Ed25519SigningKey(name=name, role=role, seed=nacl.utils.random(_SEED_BYTES))


def save_key(
    key: Ed25519SigningKey,
    directory: str | os.PathLike[str],
    *,
    passphrase: str | None = None,
    unencrypted: bool = False,
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` into ``directory``; return both paths.

    The private key is sealed under ``passphrase`` (else ``CERTUS_KEY_PASSPHRASE``, else a
    prompt on a terminal). ``unencrypted=True`` stores the bare seed instead, for CI keys.
    Refuses to overwrite either file.
    """
    directory = Path(directory)
    priv, pub = directory / f"{key.name}.key", directory / f"{key.name}.pub"
    for path in (priv, pub):
        if path.exists() or path.is_symlink():
            raise KeyFileExistsError(f"key file {path}: already exists; refusing to overwrite")
    if unencrypted:
        if passphrase is not None:
            raise KeyError_(f"key file {priv}: both a passphrase and unencrypted=True given; choose one")
        body: dict[str, Any] = {"encrypted": False, "seed": _b64(key._seed())}
    else:
        secret = passphrase if passphrase else _passphrase_from_env_or_tty(priv, confirm=True)
        if not secret:
            raise KeyError_(
                f"key file {priv}: no passphrase given (set {ENV_PASSPHRASE}); "
                "an unencrypted key needs an explicit unencrypted flag"
            )
        body = _seal(key._seed(), secret)
    body |= {
        "algorithm": ED25519,
        "keyid": key.keyid,
        "name": key.name,
        "public_key": key.public_key.to_b64(),
        "role": key.role,
    }
    try:
        make_private_dir(directory)
    except OSError as e:
        raise KeyError_(f"key directory {directory}: cannot create ({e.strerror})") from e
    _write_new(priv, _pretty(body), 0o600)
    _write_new(pub, key.info.to_json_bytes(), 0o644)
    return priv, pub


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and every missing parent 0700 (umask aside): key and witness directories
    ($CERTUS_HOME included) are nobody else's to list or read. Existing directories are left alone."""
    missing: list[Path] = []
    p = Path(path).absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def load_signer(path: str | os.PathLike[str], passphrase: str | None = None) -> Ed25519SigningKey:
    """Open a private key file; the passphrase defaults to ``CERTUS_KEY_PASSPHRASE`` / a prompt."""
    where = f"key file {path}"
    data = _read_private(Path(path), where)
    obj = _parse_json(data, where)
    if not isinstance(obj, dict):
        raise KeyError_(f"{where}: expected a JSON object")
    encrypted = obj.get("encrypted")
    if not isinstance(encrypted, bool):
        raise KeyError_(f"{where}: field 'encrypted': expected true or false")
    _check_fields(obj, _ENCRYPTED if encrypted else _PLAIN, where)
    for field in ("algorithm", "keyid", "name", "public_key", "role"):
        if not isinstance(obj[field], str):
            raise KeyError_(f"{where}: field '{field}': expected a string")
    if obj["algorithm"] != ED25519:
        raise KeyError_(
            f"{where}: field 'algorithm': {obj['algorithm']!r} is not supported; expected ed25519"
        )
    if encrypted:
        secret = passphrase if passphrase else _passphrase_from_env_or_tty(Path(path), confirm=False)
        if not secret:
            raise KeyError_(f"{where}: encrypted and no passphrase given (set {ENV_PASSPHRASE})")
        seed = _unseal(obj, secret, where)
    else:
        seed = _b64_field(obj, "seed", where)
    if len(seed) != _SEED_BYTES:
        raise KeyError_(f"{where}: the seed is {len(seed)} bytes; expected {_SEED_BYTES}")
    try:
        key = Ed25519SigningKey(name=obj["name"], role=obj["role"], seed=seed)
    except KeyError_ as e:
        raise KeyError_(f"{where}: {e}") from e
    if obj["public_key"] != key.public_key.to_b64() or obj["keyid"] != key.keyid:
        raise KeyError_(f"{where}: the recorded public key or keyid does not match the private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> PublicKeyInfo:
    """Read a ``<name>.pub`` file."""
    where = f"public key file {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise KeyError_(f"{where}: not found") from e
    except OSError as e:
        raise KeyError_(f"{where}: cannot read ({e.strerror})") from e
    return PublicKeyInfo.from_json_bytes(data, source=where)


# --- sealing -------------------------------------------------------------------------------


def _kdf_limits() -> tuple[int, int]:
    if os.environ.get(ENV_KDF_FAST) == "1":
        return argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN
    return argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE


def _box(secret: str, salt: bytes, opslimit: int, memlimit: int) -> nacl.secret.SecretBox:
    password = unicodedata.normalize("NFC", secret).encode("utf-8")
    key = argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password, salt, opslimit=opslimit, memlimit=memlimit
    )
    return nacl.secret.SecretBox(key)


def _seal(seed: bytes, secret: str) -> dict[str, Any]:
    opslimit, memlimit = _kdf_limits()
    salt = nacl.utils.random(argon2id.SALTBYTES)
    sealed = _box(secret, salt, opslimit, memlimit).encrypt(seed)  # nonce || ciphertext
    kdf = {"alg": "argon2id", "memlimit": memlimit, "opslimit": opslimit, "salt": _b64(salt)}
    return {"encrypted": True, "kdf": kdf, "secretbox": _b64(bytes(sealed))}


def _unseal(obj: dict[str, Any], secret: str, where: str) -> bytes:
    kdf = obj["kdf"]
    if not isinstance(kdf, dict):
        raise KeyError_(f"{where}: field 'kdf': expected an object")
    _check_fields(kdf, _KDF, f"{where}: field 'kdf'")
    if kdf["alg"] != "argon2id":
        raise KeyError_(f"{where}: field 'kdf.alg': {kdf['alg']!r} is not supported; expected argon2id")
    limits = {
        "opslimit": (argon2id.OPSLIMIT_MIN, argon2id.OPSLIMIT_SENSITIVE),
        "memlimit": (argon2id.MEMLIMIT_MIN, argon2id.MEMLIMIT_SENSITIVE),
    }
    for field, (lo, hi) in limits.items():
        value = kdf[field]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise KeyError_(f"{where}: field 'kdf.{field}': expected an integer in [{lo}, {hi}]")
    salt = _b64_field(kdf, "salt", where, "kdf.salt")
    if len(salt) != argon2id.SALTBYTES:
        raise KeyError_(f"{where}: field 'kdf.salt': expected {argon2id.SALTBYTES} bytes")
    sealed = _b64_field(obj, "secretbox", where)
    try:
        return bytes(_box(secret, salt, kdf["opslimit"], kdf["memlimit"]).decrypt(sealed))
    except nacl.exceptions.CryptoError as e:
        raise WrongPassphraseError(f"{where}: wrong passphrase (set {ENV_PASSPHRASE})") from e


def _passphrase_from_env_or_tty(path: Path, *, confirm: bool) -> str | None:
    value = os.environ.get(ENV_PASSPHRASE)
    if value:
        return value
    if not _stdin_is_tty():
        return None
    first = getpass.getpass(f"Passphrase for {path}: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise KeyError_(f"key file {path}: the two passphrases differ")
    return first


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):
        return False


# --- files ---------------------------------------------------------------------------------


def _read_private(path: Path, where: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as e:
        raise KeyError_(f"{where}: not found") from e
    except OSError as e:
        raise KeyError_(f"{where}: cannot open ({e.strerror})") from e
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if os.name == "posix" and mode & 0o077:
            raise KeyFilePermissionError(
                f"{where}: permissions {mode:04o} let group/others access it; run `chmod 600 {path}`"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise KeyError_(f"{where}: cannot read ({e.strerror})") from e
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Atomically create ``path`` with ``data``; never replace an existing file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if path exists (rename would replace it)
        except FileExistsError as e:
            raise KeyFileExistsError(f"key file {path}: already exists; refusing to overwrite") from e
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise KeyError_(f"key file {path}: cannot write ({e.strerror})") from e
    finally:
        tmp.unlink(missing_ok=True)


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KeyError_(f"{where}: not valid JSON ({e})") from e


def _check_fields(obj: dict[str, Any], expected: frozenset[str], where: str) -> None:
    missing, unknown = sorted(expected - obj.keys()), sorted(obj.keys() - expected)
    if missing:
        raise KeyError_(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    if unknown:
        raise KeyError_(f"{where}: unknown field {', '.join(repr(u) for u in unknown)}")


def _b64_field(obj: dict[str, Any], field: str, where: str, label: str | None = None) -> bytes:
    try:
        return b64decode_strict(obj[field])
    except ValueError as e:
        raise KeyError_(f"{where}: field '{label or field}': {e}") from e


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _pretty(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
