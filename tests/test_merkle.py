"""engine.provenance.merkle against the RFC 6962 / RFC 9162 known answers and a naive reference tree.

Vectors: tests/vectors/rfc6962.json (transparency-dev/merkle testdata and the certificate-transparency
C++ / Go known answers; see tests/vectors/README.md). The reference implementation below is the
textbook recursion of RFC 9162 §2.1 (MTH, PATH, PROOF/SUBPROOF) on lists, written independently
of the iterative code under test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import LedgerError
from engine.provenance import merkle

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962.json").read_text())


# -- the naive reference (RFC 9162 §2.1, verbatim recursion) ----------------------------------------


def ref_leaf(d: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + d).digest()


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return ref_leaf(leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return ref_subproof(m, leaves, True)


def data(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def hexes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


# -- known answers -----------------------------------------------------------------------------------

TREE_LEAVES = [merkle.leaf_hash(bytes.fromhex(h)) for h in VECTORS["tree"]["leaves_hex"]]


def test_hasher_known_answers() -> None:
    h = VECTORS["hasher"]
    assert merkle.SHA256.empty_root().hex() == h["empty_tree_root"]
    assert merkle.root([]).hex() == h["empty_tree_root"]
    assert merkle.leaf_hash(b"").hex() == h["leaf_hash_of_empty"]
    assert merkle.leaf_hash(h["leaf_hash"]["data_ascii"].encode()).hex() == h["leaf_hash"]["hash"]
    nh = h["node_hash"]
    assert merkle.node_hash(nh["left_ascii"].encode(), nh["right_ascii"].encode()).hex() == nh["hash"]


@pytest.mark.parametrize("size", sorted(int(n) for n in VECTORS["tree"]["roots"]))
def test_roots(size: int) -> None:
    want = VECTORS["tree"]["roots"][str(size)]
    assert merkle.root(TREE_LEAVES[:size]).hex() == want
    assert merkle.Frontier().extend(TREE_LEAVES[:size]).root().hex() == want


def test_perfect_node_hashes() -> None:
    for level, row in enumerate(VECTORS["tree"]["node_hashes"]):
        width = 1 << level
        got = [merkle.root(TREE_LEAVES[i : i + width]).hex() for i in range(0, 8, width)]
        assert got == row, f"level {level}"


@pytest.mark.parametrize("kat", VECTORS["inclusion_kat"], ids=lambda k: k["source"])
def test_inclusion_kat(kat: dict[str, Any]) -> None:
    leaves = TREE_LEAVES[: kat["tree_size"]]
    proof = merkle.inclusion_proof(kat["leaf_index"], leaves)
    assert [h.hex() for h in proof.hashes] == kat["proof"]
    proof.verify(leaves[kat["leaf_index"]], merkle.root(leaves))


@pytest.mark.parametrize("kat", VECTORS["consistency_kat"], ids=lambda k: k["source"][-20:])
def test_consistency_kat(kat: dict[str, Any]) -> None:
    leaves = TREE_LEAVES[: kat["size2"]]
    proof = merkle.consistency_proof(kat["size1"], leaves)
    assert [h.hex() for h in proof.hashes] == kat["proof"]
    proof.verify(merkle.root(leaves[: kat["size1"]]), merkle.root(leaves))


@pytest.mark.parametrize("probe", VECTORS["probes"]["inclusion"], ids=lambda p: p["file"])
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    args = (
        bytes.fromhex(probe["leaf_hash"]),
        probe["leaf_index"],
        probe["tree_size"],
        hexes(probe["proof"]),
        bytes.fromhex(probe["root"]),
    )
    if probe["want_err"]:
        with pytest.raises(merkle.MerkleError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("probe", VECTORS["probes"]["consistency"], ids=lambda p: p["file"])
def test_consistency_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        hexes(probe["proof"]),
        bytes.fromhex(probe["root1"]),
        bytes.fromhex(probe["root2"]),
    )
    if probe["want_err"]:
        with pytest.raises(merkle.MerkleError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_probe_counts() -> None:
    """Every probe file is exercised: 98 of each, 6 of them happy."""
    for kind in ("inclusion", "consistency"):
        probes = VECTORS["probes"][kind]
        assert len(probes) == 98
        assert sum(not p["want_err"] for p in probes) == 6


# -- against the naive reference, exhaustively for small trees -------------------------------------


@pytest.mark.parametrize("n", range(1, 65))
def test_against_reference(n: int) -> None:
    raw = data(n)
    leaves = [merkle.leaf_hash(d) for d in raw]
    assert leaves == [ref_leaf(d) for d in raw]
    roots = [ref_mth(raw[:m]) for m in range(n + 1)]
    assert merkle.root(leaves) == roots[n]
    assert merkle.Frontier().extend(leaves).root() == roots[n]

    all_proofs = merkle.inclusion_proofs(leaves)
    assert [p.index for p in all_proofs] == list(range(n))
    for i in range(n):
        proof = merkle.inclusion_proof(i, leaves)
        assert list(proof.hashes) == ref_path(i, raw)
        assert all_proofs[i] == proof
        merkle.verify_inclusion(leaves[i], i, n, proof.hashes, roots[n])
        with pytest.raises(merkle.RootMismatchError):
            merkle.verify_inclusion(flip(leaves[i]), i, n, proof.hashes, roots[n])
        for j in range(len(proof.hashes)):
            bad = list(proof.hashes)
            bad[j] = flip(bad[j], j % 32)
            with pytest.raises(merkle.RootMismatchError):
                merkle.verify_inclusion(leaves[i], i, n, bad, roots[n])

    for m in range(1, n + 1):
        proof = merkle.consistency_proof(m, leaves)
        assert list(proof.hashes) == ref_proof(m, raw)
        merkle.verify_consistency(m, n, proof.hashes, roots[m], roots[n])
        with pytest.raises(merkle.RootMismatchError):
            merkle.verify_consistency(m, n, proof.hashes, flip(roots[m]), roots[n])
        with pytest.raises(merkle.RootMismatchError):
            merkle.verify_consistency(m, n, proof.hashes, roots[m], flip(roots[n], 31))
        for j in range(len(proof.hashes)):
            bad = list(proof.hashes)
            bad[j] = flip(bad[j], 7)
            with pytest.raises(merkle.RootMismatchError):
                merkle.verify_consistency(m, n, bad, roots[m], roots[n])


def test_frontier_grows_by_popcount() -> None:
    f = merkle.Frontier()
    for i, h in enumerate(merkle.leaf_hash(d) for d in data(100)):
        f = f.append(h)
        assert f.size == i + 1
        assert len(f.hashes) == bin(i + 1).count("1")
    assert merkle.Frontier.from_dict(f.to_dict()) == f


# -- properties ---------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=150), st.data())
def test_property_proofs(raw: list[bytes], draw: st.DataObject) -> None:
    n = len(raw)
    leaves = [merkle.leaf_hash(d) for d in raw]
    i = draw.draw(st.integers(0, n - 1), label="index")
    m = draw.draw(st.integers(1, n), label="size1")
    root_n = ref_mth(raw)
    assert merkle.root(leaves) == root_n == merkle.Frontier().extend(leaves).root()

    incl = merkle.inclusion_proof(i, leaves)
    assert list(incl.hashes) == ref_path(i, raw)
    incl.verify(leaves[i], root_n)
    assert merkle.InclusionProof.from_dict(json.loads(json.dumps(incl.to_dict()))) == incl

    cons = merkle.consistency_proof(m, leaves)
    assert list(cons.hashes) == ref_proof(m, raw)
    cons.verify(ref_mth(raw[:m]), root_n)
    assert merkle.ConsistencyProof.from_dict(json.loads(json.dumps(cons.to_dict()))) == cons
    if m < n:  # the old root is bound: appending to the old tree cannot be faked
        with pytest.raises(merkle.RootMismatchError):
            cons.verify(ref_mth(raw[:m] + [b"x"]), root_n)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 1 << 40), st.data())
def test_property_proof_lengths_are_logarithmic(n: int, draw: st.DataObject) -> None:
    i = draw.draw(st.integers(0, n - 1))
    m = draw.draw(st.integers(1, n))
    depth = (n - 1).bit_length()
    assert len(merkle.inclusion_ranges(i, n)) <= depth
    assert len(merkle.consistency_ranges(m, n)) <= depth + 1


# -- errors are typed and say what is wrong -----------------------------------------------------------


def test_root_mismatch_carries_both_roots() -> None:
    leaves = [merkle.leaf_hash(d) for d in data(5)]
    proof = merkle.inclusion_proof(2, leaves)
    wrong = b"\x00" * 32
    with pytest.raises(merkle.RootMismatchError) as info:
        proof.verify(leaves[2], wrong)
    assert info.value.expected == wrong
    assert info.value.calculated == merkle.root(leaves)
    assert isinstance(info.value, LedgerError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: merkle.inclusion_ranges(3, 3), "inclusion proof: index 3 is outside a tree of size 3"),
        (
            lambda: merkle.consistency_ranges(0, 3),
            "consistency proof: sizes 0 -> 3; expected 0 < size1 <= size2",
        ),
        (
            lambda: merkle.verify_inclusion(b"\x00" * 32, 0, 2, [], b"\x00" * 32),
            "inclusion proof: 0 hashes; expected 1",
        ),
        (
            lambda: merkle.verify_inclusion(b"\x00" * 31, 0, 1, [], b""),
            "inclusion proof: leaf hash is 31 bytes; expected 32",
        ),
        (
            lambda: merkle.verify_consistency(2, 1, [], b"", b""),
            "consistency proof 2 -> 1: size2 is smaller than size1",
        ),
        (
            lambda: merkle.verify_consistency(3, 4, [b"\x00" * 32, b"\x00", b"\x00" * 32], b"", b""),
            "consistency proof 3 -> 4: proof[1] is 1 bytes; expected 32",
        ),
        (lambda: merkle.Frontier(size=3, hashes=()), "frontier: size 3 needs 2 hashes, got 0"),
    ],
)
def test_malformed_is_proof_error(call: Any, message: str) -> None:
    with pytest.raises(merkle.MerkleError) as info:
        call()
    assert str(info.value) == message
    assert not isinstance(info.value, merkle.RootMismatchError)
