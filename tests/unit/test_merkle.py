"""RFC 9162 hashing and proofs, against the RFC 6962 reference vectors, with every proof
mutated the way transparency-dev/merkle's proof/verify_test.go does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vox_flow.audit import merkle

LEAVES = [bytes.fromhex(h) for h in
          ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
           "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
EMPTY = hashlib.sha256(b"").digest()
HASHED = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def test_roots_match_the_reference_vectors() -> None:
    for size in range(1, 9):
        assert merkle.root(HASHED[:size]) == ROOTS[size - 1]
    assert merkle.root([]) == EMPTY


def test_compact_range_round_trips_and_matches_root() -> None:
    compact = merkle.CompactRange()
    for size, leaf in enumerate(HASHED, start=1):
        compact.append(leaf)
        again = merkle.CompactRange.from_bytes(compact.size, compact.to_bytes())
        assert again.root() == compact.root() == ROOTS[size - 1]


def test_known_inclusion_proof() -> None:
    proof = merkle.inclusion_proof(5, HASHED)  # leaf 6 of 8 in the Go vectors (1-based)
    assert [p.hex() for p in proof] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


def test_known_consistency_proof() -> None:
    proof = merkle.consistency_proof(6, HASHED)
    assert [p.hex() for p in proof] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


def _fails(fn: object, *args: object) -> bool:
    try:
        fn(*args)  # type: ignore[operator]
    except merkle.ProofError:
        return True
    return False


def inclusion_mutations(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, tuple[int, int, bytes, list[bytes], bytes]]]:
    probes = [
        ("index - 1", (index - 1, size, leaf, proof, root)),
        ("index + 1", (index + 1, size, leaf, proof, root)),
        ("index ^ 2", (index ^ 2, size, leaf, proof, root)),
        ("size * 2", (index, size * 2, leaf, proof, root)),
        ("size / 2", (index, size // 2, leaf, proof, root)),
        ("wrong leaf", (index, size, b"WrongLeaf", proof, root)),
        ("empty root", (index, size, leaf, proof, EMPTY)),
        ("random root", (index, size, leaf, proof, SOME_HASH)),
        ("trailing garbage", (index, size, leaf, [*proof, b""], root)),
        ("trailing root", (index, size, leaf, [*proof, root], root)),
        ("preceding garbage", (index, size, leaf, [b"", *proof], root)),
        ("preceding root", (index, size, leaf, [root, *proof], root)),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((f"proof[{i}] bit 3", (index, size, leaf, wrong, root)))
    if proof:
        probes.append(("removed component", (index, size, leaf, proof[:-1], root)))
    if len(proof) > 1:
        inserted = [proof[0], SOME_HASH, *proof[1:]]
        probes.append(("inserted component", (index, size, leaf, inserted, root)))
    return probes


def consistency_mutations(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]]:
    probes = [
        ("size1 - 1", (size1 - 1, size2, root1, root2, proof)),
        ("size1 + 1", (size1 + 1, size2, root1, root2, proof)),
        ("size1 ^ 2", (size1 ^ 2, size2, root1, root2, proof)),
        ("size2 * 2", (size1, size2 * 2, root1, root2, proof)),
        ("size2 / 2", (size1, size2 // 2, root1, root2, proof)),
        ("wrong root1", (size1, size2, b"WrongRoot", root2, proof)),
        ("wrong root2", (size1, size2, root1, b"WrongRoot", proof)),
        ("swapped roots", (size1, size2, root2, root1, proof)),
        ("empty proof", (size1, size2, root1, root2, [])),
        ("trailing garbage", (size1, size2, root1, root2, [*proof, b""])),
        ("trailing root1", (size1, size2, root1, root2, [*proof, root1])),
        ("trailing root2", (size1, size2, root1, root2, [*proof, root2])),
        ("preceding garbage", (size1, size2, root1, root2, [b"", *proof])),
        ("preceding root1", (size1, size2, root1, root2, [root1, *proof])),
        ("preceding root2", (size1, size2, root1, root2, [root2, *proof])),
        ("preceding proof[0]", (size1, size2, root1, root2, [proof[0], *proof])),
        ("truncated proof", (size1, size2, root1, root2, proof[:-1])),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((f"proof[{i}] bit 4", (size1, size2, root1, root2, wrong)))
    return probes


def _check_inclusion(leaves: list[bytes], index: int) -> None:
    root = merkle.root(leaves)
    proof = merkle.inclusion_proof(index, leaves)
    merkle.verify_inclusion(index, len(leaves), leaves[index], proof, root)
    passed = [d for d, a in inclusion_mutations(index, len(leaves), proof, root, leaves[index])
              if not _fails(merkle.verify_inclusion, *a)]  # fmt: skip
    assert passed == []


def _check_consistency(leaves: list[bytes], size1: int) -> None:
    root1, root2 = merkle.root(leaves[:size1]), merkle.root(leaves)
    proof = merkle.consistency_proof(size1, leaves)
    merkle.verify_consistency(size1, len(leaves), root1, root2, proof)
    if not proof:
        return
    passed = [d for d, a in consistency_mutations(size1, len(leaves), root1, root2, proof)
              if not _fails(merkle.verify_consistency, *a)]  # fmt: skip
    assert passed == []


def test_every_inclusion_mutation_fails_on_the_reference_tree() -> None:
    for size in range(1, 9):
        for index in range(size):
            _check_inclusion(HASHED[:size], index)


def test_every_consistency_mutation_fails_on_the_reference_tree() -> None:
    for size2 in range(1, 9):
        for size1 in range(1, size2):
            _check_consistency(HASHED[:size2], size1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_mutation_fails_on_random_trees(size: int, data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    _check_inclusion(leaves, data.draw(st.integers(0, size - 1)))
    if size > 1:
        _check_consistency(leaves, data.draw(st.integers(1, size - 1)))


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "ok"),
    [
        (0, 0, b"1" * 32, b"2" * 32, [], False),
        (1, 1, b"1" * 32, b"2" * 32, [], False),
        (0, 0, b"1" * 32, b"1" * 32, [], True),
        (0, 1, b"1" * 32, b"2" * 32, [], True),
        (1, 0, b"1" * 32, b"2" * 32, [], False),
        (2, 1, b"1" * 32, b"2" * 32, [], False),
        (1, 2, b"1" * 32, b"2" * 32, [], False),
        (1, 1, EMPTY, EMPTY, [EMPTY], False),
        (0, 1, EMPTY, EMPTY, [EMPTY], False),
    ],
)
def test_consistency_edge_cases(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], ok: bool
) -> None:
    assert _fails(merkle.verify_consistency, size1, size2, root1, root2, proof) is not ok


def test_inclusion_in_one_leaf_tree_needs_matching_hashes() -> None:
    leaf = merkle.leaf_hash(b"data")
    merkle.verify_inclusion(0, 1, leaf, [], leaf)
    assert _fails(merkle.verify_inclusion, 0, 1, b"", [], leaf)
    assert _fails(merkle.verify_inclusion, 0, 1, leaf, [], b"")
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        assert _fails(merkle.verify_inclusion, index, size, SOME_HASH, [], EMPTY)
