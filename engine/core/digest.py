"""Typed content digests: never pass bare hex between modules.

A :class:`Digest` prints as ``sha256:<hex>``; that string form is what the lock file,
run cache and attestations store. The cache path of an object follows from its hex.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["Digest", "sha256_bytes"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A SHA-256 content digest."""

    hex: str
    algorithm: str = "sha256"

    def __post_init__(self) -> None:
        if self.algorithm != "sha256" or not _HEX64.match(self.hex):
            raise ValueError(f"not a sha256 digest: {self.algorithm}:{self.hex}")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``."""
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise ValueError(f"not a digest (expected sha256:<hex>): {text!r}")
        return cls(hex=hexpart, algorithm=algorithm)

    @property
    def short(self) -> str:
        return self.hex[:12]


def sha256_bytes(data: bytes) -> Digest:
    """Digest of an in-memory byte string."""
    return Digest(hashlib.sha256(data).hexdigest())
