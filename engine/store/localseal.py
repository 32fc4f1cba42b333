"""Tamper-evident local caches: an HMAC keyed by a per-user secret kept outside the workspace.

Parse caches under ``.certus/tmp`` (the composed config, the resolved spec) skip Hydra and
OmegaConf on the fast path, so whatever they hold is what stages run. Anyone who can write
the workspace could edit them and have an injected command run while the signed record
names the untouched spec. So each entry carries HMAC-SHA256(key, kind ‖ cache key ‖ bytes)
with ``key`` = 32 random bytes in ``$CERTUS_HOME/local.key`` (default ``~/.certus``),
created 0600 inside a 0700 directory. Stages cannot read ``$CERTUS_HOME`` (they run
sandboxed), so a stage cannot forge an entry either. An entry that fails the check is
ignored and rebuilt, with one note on stderr. Without a usable key (read-only home) the
caches are simply not used: they are a convenience, never evidence.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sys

__all__ = ["certus_home", "local_key", "seal", "unseal", "TAG_LEN"]

KEY_NAME = "local.key"
KEY_LEN = 32
TAG_LEN = 64  # hex digits of the HMAC-SHA256 tag that prefixes each sealed entry
_MAGIC = b"certus-seal-v1\n"

_key_cache: dict[str, bytes | None] = {}


def certus_home() -> str:
    """``$CERTUS_HOME``, default ``~/.certus`` (the same rule as the key directory's)."""
    return os.environ.get("CERTUS_HOME") or os.path.join(os.path.expanduser("~"), ".certus")


def _read_key(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(KEY_LEN + 1)
    return data if len(data) == KEY_LEN else None


def _create_key(home: str, path: str) -> bytes | None:
    """Write a fresh key: temp file (0600, O_EXCL) then ``link`` into place, which fails if another
    process won the race, in which case its key is the one everybody uses."""
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
    except OSError:
        return None
    tmp = os.path.join(home, f".{KEY_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_LEN))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return _read_key(path)


def local_key() -> bytes | None:
    """This user's cache-sealing key, created on first use; None if it cannot be had."""
    home = certus_home()
    if home in _key_cache:
        return _key_cache[home]
    path = os.path.join(home, KEY_NAME)
    key = _read_key(path)
    if key is None:  # absent: create it; or another process created it since our read: read it again
        key = _create_key(home, path) if not os.path.lexists(path) else _read_key(path)
    _key_cache[home] = key
    return key


def _tag(key: bytes, kind: str, name: str, data: bytes) -> bytes:
    mac = hmac.new(key, _MAGIC + kind.encode() + b"\0" + name.encode() + b"\0", hashlib.sha256)
    mac.update(data)
    return mac.hexdigest().encode()


def seal(kind: str, name: str, data: bytes) -> bytes | None:
    """``tag ‖ '\\n' ‖ data`` for a cache file, or None when no key is available (do not cache)."""
    key = local_key()
    if key is None:
        return None
    return _tag(key, kind, name, data) + b"\n" + data


def unseal(kind: str, name: str, blob: bytes, *, where: str = "") -> bytes | None:
    """The data in a sealed entry, or None (with a note) if its tag does not check out."""
    key = local_key()
    if key is None:
        return None
    tag, data = blob[:TAG_LEN], blob[TAG_LEN + 1 :]
    if len(blob) > TAG_LEN and blob[TAG_LEN : TAG_LEN + 1] == b"\n" and hmac.compare_digest(
        tag, _tag(key, kind, name, data)
    ):
        return data
    sys.stderr.write(f"certus: note: {where or kind + ' cache entry'}: failed its integrity check "
                     "(edited or damaged); ignored it and rebuilt it\n")
    return None
