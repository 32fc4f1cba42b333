"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs, and an O(log n) compact range.

Everything here is pure: values in, values out, no I/O.

* Hashing (RFC 9162 §2.1.1): ``leaf_hash(d) = H(0x00 || d)``, ``node_hash(l, r) = H(0x01 || l || r)``,
  and the root of the empty tree is ``H("")``. The hash function is a :class:`Hasher` parameter that
  defaults to SHA-256.
* Proof generation follows the recursive definitions of RFC 9162 §2.1.3.1 (``PATH``) and §2.1.4.1
  (``PROOF`` / ``SUBPROOF``), split in two: :func:`inclusion_ranges` / :func:`consistency_ranges`
  turn sizes into the leaf ranges ``[lo, hi)`` whose subtree roots form the proof (index arithmetic
  only), and :func:`inclusion_proof` / :func:`consistency_proof` hash those ranges from any
  ``Sequence`` of leaf hashes (a list, or a lazy view over a file: the "node store").
* Verification (RFC 9162 §2.1.3.2 / §2.1.4.2) ports the semantics of transparency-dev/merkle
  ``proof/verify.go``, including its edge policy: an inclusion proof needs ``0 <= index < size`` and
  a leaf hash of the hasher's size; a consistency proof fails when ``size2 < size1`` or ``size1 == 0``
  (even ``0 -> 0``), must be empty with ``root1 == root2`` when the sizes are equal, and fails when
  empty otherwise. Malformed proofs raise :class:`ProofError`; well-formed proofs that lead to another
  root raise :class:`RootMismatchError`, which carries both roots.
* :class:`Frontier` is the compact range ``[0, size)``: the roots of the perfect subtrees that make up
  the tree, one per set bit of ``size``. Appending a leaf merges ``trailing_ones(size)`` of them
  (amortised O(1), at most O(log n)) and the root is a fold of at most ``log2(n)`` hashes, so an
  append-only log never has to re-read its leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import LedgerError

__all__ = [
    "SHA256",
    "ConsistencyProof",
    "Frontier",
    "Hasher",
    "InclusionProof",
    "MerkleError",
    "ProofError",
    "RootMismatchError",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_proofs",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]


class MerkleError(LedgerError):
    """A Merkle tree value (proof, frontier, size) is unusable."""


class ProofError(MerkleError):
    """A proof is malformed: wrong sizes, wrong number of hashes, or hashes of the wrong length."""


class RootMismatchError(MerkleError):
    """A well-formed proof leads to a root other than the expected one."""

    def __init__(self, expected: bytes, calculated: bytes, what: str = "root") -> None:
        self.expected = expected
        self.calculated = calculated
        super().__init__(f"{what} mismatch: calculated {calculated.hex()}, expected {expected.hex()}")


@dataclass(frozen=True, slots=True)
class Hasher:
    """RFC 9162 §2.1.1 domain-separated tree hashing over one hash function."""

    name: str
    new: Callable[[bytes], Any]
    size: int

    def empty_root(self) -> bytes:
        """MTH({}) = HASH(): the root of the empty tree."""
        return bytes(self.new(b"").digest())

    def leaf(self, data: bytes) -> bytes:
        """HASH(0x00 || data)."""
        return bytes(self.new(b"\x00" + data).digest())

    def node(self, left: bytes, right: bytes) -> bytes:
        """HASH(0x01 || left || right)."""
        return bytes(self.new(b"\x01" + left + right).digest())


SHA256 = Hasher(name="sha256", new=hashlib.sha256, size=32)
"""The RFC 6962 hasher: SHA-256."""


def leaf_hash(data: bytes, *, hasher: Hasher = SHA256) -> bytes:
    """The leaf hash of an entry: ``H(0x00 || data)``."""
    return hasher.leaf(data)


def node_hash(left: bytes, right: bytes, *, hasher: Hasher = SHA256) -> bytes:
    """The hash of an interior node: ``H(0x01 || left || right)``."""
    return hasher.node(left, right)


def root(leaf_hashes: Sequence[bytes], *, hasher: Hasher = SHA256) -> bytes:
    """MTH of a list of leaf hashes (RFC 9162 §2.1.1), level by level in O(n).

    Pairing neighbours and promoting a lone right-most node to the next level yields the same
    tree as RFC 6962's split at the largest power of two smaller than n.
    """
    level = list(leaf_hashes)
    if not level:
        return hasher.empty_root()
    node = hasher.node
    while len(level) > 1:
        paired = [node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


Range = tuple[int, int]


def inclusion_ranges(index: int, size: int) -> tuple[Range, ...]:
    """Leaf ranges whose subtree roots form PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf to root."""
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: index {index} is outside a tree of size {size}")
    out: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo = mid
    out.reverse()
    return tuple(out)


def consistency_ranges(size1: int, size2: int) -> tuple[Range, ...]:
    """Leaf ranges whose subtree roots form PROOF(size1, D[size2]) (RFC 9162 §2.1.4.1).

    Sizes must satisfy ``0 < size1 <= size2``; equal sizes give the empty proof.
    """
    if not 0 < size1 <= size2:
        raise ProofError(f"consistency proof: sizes {size1} -> {size2}; expected 0 < size1 <= size2")
    out: list[Range] = []
    lo, hi, whole = 0, size2, True
    while hi != size1:  # SUBPROOF(m, D[lo:hi], b) with m counted from the left edge of the log
        mid = lo + _split(hi - lo)
        if size1 <= mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo, whole = mid, False
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return tuple(out)


def _hash_ranges(ranges: Sequence[Range], leaves: Sequence[bytes], hasher: Hasher) -> tuple[bytes, ...]:
    return tuple(root(leaves[lo:hi], hasher=hasher) for lo, hi in ranges)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """An audit path: the sibling hashes from leaf ``index`` up to the root of a tree of ``size``."""

    index: int
    size: int
    hashes: tuple[bytes, ...]

    def verify(self, leaf_hash: bytes, root: bytes, *, hasher: Hasher = SHA256) -> None:
        """Raise unless ``leaf_hash`` sits at ``index`` in the tree with this ``root``."""
        verify_inclusion(leaf_hash, self.index, self.size, self.hashes, root, hasher=hasher)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InclusionProof:
        return cls(index=int(data["index"]), size=int(data["size"]), hashes=_unhex(data["hashes"]))


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """Hashes proving that the tree of ``size2`` extends the tree of ``size1`` (append-only)."""

    size1: int
    size2: int
    hashes: tuple[bytes, ...]

    def verify(self, root1: bytes, root2: bytes, *, hasher: Hasher = SHA256) -> None:
        """Raise unless the trees with roots ``root1`` (size1) and ``root2`` (size2) are consistent."""
        verify_consistency(self.size1, self.size2, self.hashes, root1, root2, hasher=hasher)

    def to_dict(self) -> dict[str, Any]:
        return {"size1": self.size1, "size2": self.size2, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsistencyProof:
        return cls(size1=int(data["size1"]), size2=int(data["size2"]), hashes=_unhex(data["hashes"]))


def _unhex(values: Sequence[str]) -> tuple[bytes, ...]:
    try:
        return tuple(bytes.fromhex(v) for v in values)
    except (TypeError, ValueError) as e:
        raise ProofError(f"proof hashes: not hex: {e}") from e


def inclusion_proof(index: int, leaves: Sequence[bytes], *, hasher: Hasher = SHA256) -> InclusionProof:
    """The inclusion proof of leaf ``index`` in the tree of ``len(leaves)`` leaf hashes."""
    ranges = inclusion_ranges(index, len(leaves))
    return InclusionProof(index=index, size=len(leaves), hashes=_hash_ranges(ranges, leaves, hasher))


def inclusion_proofs(leaves: Sequence[bytes], *, hasher: Hasher = SHA256) -> list[InclusionProof]:
    """Every leaf's inclusion proof; subtree roots are shared, so O(n log n) in all, not O(n) each."""
    memo: dict[Range, bytes] = {}

    def subtree(lo: int, hi: int) -> bytes:
        h = memo.get((lo, hi))
        if h is None:
            if hi - lo == 1:
                h = leaves[lo]
            else:
                mid = lo + _split(hi - lo)
                h = hasher.node(subtree(lo, mid), subtree(mid, hi))
            memo[(lo, hi)] = h
        return h

    n = len(leaves)
    return [InclusionProof(index=i, size=n, hashes=tuple(subtree(lo, hi) for lo, hi in inclusion_ranges(i, n)))
            for i in range(n)]


def consistency_proof(size1: int, leaves: Sequence[bytes], *, hasher: Hasher = SHA256) -> ConsistencyProof:
    """The proof that the tree of ``len(leaves)`` leaf hashes extends its first ``size1`` leaves."""
    ranges = consistency_ranges(size1, len(leaves))
    return ConsistencyProof(size1=size1, size2=len(leaves), hashes=_hash_ranges(ranges, leaves, hasher))


# -- verification: a port of transparency-dev/merkle proof/verify.go ------------------------------


def _check_hashes(proof: Sequence[bytes], hasher: Hasher, what: str) -> None:
    for i, h in enumerate(proof):
        if len(h) != hasher.size:
            raise ProofError(f"{what}: proof[{i}] is {len(h)} bytes; expected {hasher.size}")


def _decomp_incl_proof(index: int, size: int) -> tuple[int, int]:
    """Split a proof for ``index`` in ``size`` into (inner, border) lengths, as verify.go does."""
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(hasher: Hasher, seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = hasher.node(seed, h) if (index >> i) & 1 == 0 else hasher.node(h, seed)
    return seed


def _chain_inner_right(hasher: Hasher, seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = hasher.node(h, seed)
    return seed


def _chain_border_right(hasher: Hasher, seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = hasher.node(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], *, hasher: Hasher = SHA256
) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2); raises :class:`ProofError`."""
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: index {index} is outside a tree of size {size}")
    if len(leaf_hash) != hasher.size:
        raise ProofError(f"inclusion proof: leaf hash is {len(leaf_hash)} bytes; expected {hasher.size}")
    inner, border = _decomp_incl_proof(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"inclusion proof: {len(proof)} hashes; expected {inner + border}")
    _check_hashes(proof, hasher, "inclusion proof")
    res = _chain_inner(hasher, leaf_hash, proof[:inner], index)
    return _chain_border_right(hasher, res, proof[inner:])


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    *,
    hasher: Hasher = SHA256,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``."""
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof, hasher=hasher)
    if calculated != root:
        raise RootMismatchError(root, calculated, f"inclusion proof for leaf {index} of {size}: root")


def verify_consistency(
    size1: int,
    size2: int,
    proof: Sequence[bytes],
    root1: bytes,
    root2: bytes,
    *,
    hasher: Hasher = SHA256,
) -> None:
    """Check that the tree (size2, root2) is an append-only extension of (size1, root1)."""
    what = f"consistency proof {size1} -> {size2}"
    if size2 < size1:
        raise ProofError(f"{what}: size2 is smaller than size1")
    if size1 <= 0:
        raise ProofError(f"{what}: a proof from the empty tree is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError(f"{what}: sizes are equal but the proof is not empty")
        if root1 != root2:
            raise RootMismatchError(root1, root2, f"{what}: root2")
        return
    if not proof:
        raise ProofError(f"{what}: empty proof")

    inner, border = _decomp_incl_proof(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    inner -= shift
    # The proof starts with the root of the subtree of size 2^shift, unless that subtree is the
    # whole old tree, in which case root1 is the seed.
    start = 0 if size1 == 1 << shift else 1
    if len(proof) != start + inner + border:
        raise ProofError(f"{what}: {len(proof)} hashes; expected {start + inner + border}")
    seed, rest = (root1, proof) if start == 0 else (proof[0], proof[1:])
    _check_hashes(proof, hasher, what)
    if len(seed) != hasher.size:
        raise ProofError(f"{what}: root1 is {len(seed)} bytes; expected {hasher.size}")

    mask = (size1 - 1) >> shift
    hash1 = _chain_inner_right(hasher, seed, rest[:inner], mask)
    hash1 = _chain_border_right(hasher, hash1, rest[inner:])
    if hash1 != root1:
        raise RootMismatchError(root1, hash1, f"{what}: root1")
    hash2 = _chain_inner(hasher, seed, rest[:inner], mask)
    hash2 = _chain_border_right(hasher, hash2, rest[inner:])
    if hash2 != root2:
        raise RootMismatchError(root2, hash2, f"{what}: root2")


# -- the compact range [0, size) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frontier:
    """The compact range ``[0, size)``: perfect-subtree roots, largest (left-most) first.

    There is one hash per set bit of ``size``; it is all an append-only log must keep to append a
    leaf and compute the new root in O(log n), without re-reading earlier leaves.
    """

    size: int = 0
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.hashes) != bin(self.size).count("1"):
            raise MerkleError(
                f"frontier: size {self.size} needs {bin(max(self.size, 0)).count('1')} hashes, "
                f"got {len(self.hashes)}"
            )

    def append(self, leaf_hash: bytes, *, hasher: Hasher = SHA256) -> Frontier:
        """The frontier after appending one leaf hash: merges one subtree per trailing 1-bit."""
        hashes = list(self.hashes)
        carry, size = leaf_hash, self.size
        while size & 1:
            carry = hasher.node(hashes.pop(), carry)
            size >>= 1
        hashes.append(carry)
        return Frontier(size=self.size + 1, hashes=tuple(hashes))

    def extend(self, leaf_hashes: Sequence[bytes], *, hasher: Hasher = SHA256) -> Frontier:
        """The frontier after appending several leaf hashes in order."""
        frontier = self
        for h in leaf_hashes:
            frontier = frontier.append(h, hasher=hasher)
        return frontier

    def root(self, *, hasher: Hasher = SHA256) -> bytes:
        """MTH of the range: fold the subtree roots from the right."""
        if not self.hashes:
            return hasher.empty_root()
        acc = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            acc = hasher.node(h, acc)
        return acc

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Frontier:
        try:
            return cls(size=int(data["size"]), hashes=tuple(bytes.fromhex(h) for h in data["hashes"]))
        except (KeyError, TypeError, ValueError) as e:
            raise MerkleError(f"frontier: malformed ({e})") from e
