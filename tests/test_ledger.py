"""engine.provenance.ledger: append/reopen, proofs, O(log n) appends, crash injection and tamper detection.

Each tamper test corrupts one thing the way an attacker or a bad merge would, and pins the
problem :meth:`Ledger.verify_structure` names (file, entry index or line, reason).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import SeedSigner

import engine.provenance.ledger as ledger_mod
from engine.core.canonical import canonical_bytes
from engine.errors import LedgerError
from engine.provenance import merkle
from engine.provenance.ledger import (
    CHECKPOINT,
    CHECKPOINTS,
    ENTRIES,
    STATE,
    ForkError,
    Ledger,
    RollbackError,
    TornTail,
    TornTailError,
    _decode_note_line,
    _encode_note_line,
    check_extends,
    decode_frame,
    encode_frame,
)
from engine.provenance.note import Checkpoint, Note, Verifier

ORIGIN = "certus/ws-test"
REPO = Path(__file__).resolve().parents[1]


SIGNER = SeedSigner(ORIGIN, b"\x01" * 32)
VERIFIER = Verifier(ORIGIN, SIGNER.public_key)
OTHER = SeedSigner(ORIGIN, b"\x02" * 32)


def envelope(i: int, tag: str = "") -> bytes:
    """Stand-in for DSSE envelope JSON bytes (the ledger never parses them)."""
    return json.dumps({"payload": f"cnVu{i}{tag}", "payloadType": "application/vnd.in-toto+json"}).encode()


def make(path: Path, n: int, tag: str = "") -> Ledger:
    led = Ledger.open(path, origin=ORIGIN)
    for i in range(n):
        assert led.append(envelope(i, tag), SIGNER)[0] == i
    return led


def history(path: Path) -> list[Checkpoint]:
    lines = (path / CHECKPOINTS).read_bytes().splitlines()
    return [Checkpoint.from_note(json.loads(line)["note"], [VERIFIER]) for line in lines]


def lines(path: Path, name: str = ENTRIES) -> list[bytes]:
    return (path / name).read_bytes().splitlines(keepends=True)


def write_lines(path: Path, items: list[bytes], name: str = ENTRIES) -> None:
    (path / name).write_bytes(b"".join(items))


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def history_mismatch(path: Path, n: int) -> str:
    return f"{path / CHECKPOINTS}: line {n}: root of size {n} does not match entries 0..{n - 1}"


# -- the happy path ---------------------------------------------------------------------------------


def test_append_reopen_and_read(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    make(d, 5)
    led = Ledger.open(d, origin=ORIGIN, create=False)
    assert led.size == 5
    assert led.status().ok
    assert list(led.entries()) == [envelope(i) for i in range(5)]
    assert led.entry(3) == envelope(3)
    assert led.verify_structure(VERIFIER) == []
    assert sorted(os.listdir(d)) == [CHECKPOINT, CHECKPOINTS, ENTRIES, STATE]

    cp = led.checkpoint()
    assert cp is not None and cp.size == 5 and cp.origin == ORIGIN
    assert cp.root_hash == merkle.root([merkle.leaf_hash(envelope(i)) for i in range(5)])
    assert (d / CHECKPOINT).read_text() == led.checkpoint_note()
    assert Checkpoint.from_note(led.checkpoint_note() or "", [VERIFIER]) == cp
    assert [c.size for c in history(d)] == [1, 2, 3, 4, 5]

    index, cp6 = led.append(b"six", SIGNER)
    assert (index, cp6.size) == (5, 6)
    assert Ledger.open(d, origin=ORIGIN).entry(5) == b"six"


def test_frames_are_canonical_json_lines(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 2)
    assert lines(d)[1] == encode_frame(1, envelope(1))
    for i, entry in ((0, b""), (7, envelope(1)), (123456, bytes(range(256)))):
        obj = {"entry": base64.b64encode(entry).decode(), "index": i, "leaf": merkle.leaf_hash(entry).hex()}
        assert encode_frame(i, entry) == canonical_bytes(obj) + b"\n"
        assert decode_frame(encode_frame(i, entry), i) == (entry, merkle.leaf_hash(entry))
    frame = json.loads(lines(d)[1])
    assert frame["index"] == 1 and frame["leaf"] == merkle.leaf_hash(envelope(1)).hex()


def test_append_many_signs_one_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "l"
    led = make(d, 2)
    first, cp = led.append_many([envelope(i) for i in range(2, 7)], SIGNER)
    assert (first, cp.size) == (2, 7)
    assert [c.size for c in history(d)] == [1, 2, 7]
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == []


def test_proofs_verify_against_every_signed_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "l"
    led = make(d, 9)
    roots = {c.size: c.root_hash for c in history(d)}
    leaves = led.leaf_hashes()
    for size in range(1, 10):
        for i in range(size):
            led.inclusion_proof(i, size).verify(leaves[i], roots[size])
        for m in range(1, size + 1):
            led.consistency_proof(m, size).verify(roots[m], roots[size])
    proof = led.inclusion_proof(4)
    assert (proof.index, proof.size) == (4, 9)


def test_reads_and_proofs_check_their_arguments(tmp_path: Path) -> None:
    d = tmp_path / "l"
    led = make(d, 3)
    with pytest.raises(LedgerError, match=exactly(f"{d / ENTRIES}: entry 3: out of range (size 3)")):
        led.entry(3)
    with pytest.raises(LedgerError, match=exactly(f"{d / ENTRIES}: entry 2: not in a tree of size 2")):
        led.inclusion_proof(2, 2)
    with pytest.raises(LedgerError, match=exactly(f"{d}: size 4 is outside the ledger (size 3)")):
        led.consistency_proof(1, 4)
    with pytest.raises(LedgerError, match=exactly(f"{d}: entry 3: expected bytes, got str")):
        led.append("text", SIGNER)  # type: ignore[arg-type]


def test_open_checks_origin_and_existence(tmp_path: Path) -> None:
    make(tmp_path / "l", 1)
    with pytest.raises(LedgerError, match="origin 'certus/ws-test', but opened as 'certus/other'"):
        Ledger.open(tmp_path / "l", origin="certus/other")
    with pytest.raises(LedgerError, match=exactly(f"{tmp_path / 'nothing'}: no ledger here")):
        Ledger.open(tmp_path / "nothing", origin=ORIGIN, create=False)


# -- O(log n) appends -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("big") / "ledger"
    Ledger.open(d, origin=ORIGIN).append_many([envelope(i) for i in range(10_000)], SIGNER)
    return d


def test_append_reads_nothing_and_writes_o_log_n(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = big.parent / "copy"
    shutil.copytree(big, d)
    led = Ledger.open(d, origin=ORIGIN)
    assert led.size == 10_000

    reads: list[str] = []
    real_open, real_os_open = open, os.open

    def spy_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        reads.append(f"{path}:{mode}")
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    def spy_os_open(path: object, flags: int, *args: object) -> int:
        if not flags & (os.O_WRONLY | os.O_RDWR) and not os.path.isdir(str(path)):
            reads.append(f"{path}:os.open")
        return real_os_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_mod, "open", spy_open, raising=False)
    monkeypatch.setattr(ledger_mod.os, "open", spy_os_open)
    before = {n: (d / n).stat().st_size for n in (ENTRIES, CHECKPOINTS)}
    led.append(envelope(10_000), SIGNER)
    assert reads == []
    assert (d / ENTRIES).stat().st_size - before[ENTRIES] == len(encode_frame(10_000, envelope(10_000)))
    assert (d / CHECKPOINTS).stat().st_size - before[CHECKPOINTS] < 400
    state = json.loads((d / STATE).read_bytes())
    assert state["size"] == 10_001 and len(state["frontier"]) == bin(10_001).count("1")
    monkeypatch.undo()
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == []


def _median_append_seconds(led: Ledger, start: int, count: int = 15) -> float:
    """Median CPU time of an append (CPU, not wall: fsync latency is the disk's, not ours)."""
    times = []
    for i in range(start, start + count):
        t = time.process_time()
        led.append(envelope(i), SIGNER)
        times.append(time.process_time() - t)
    return sorted(times)[count // 2]


def test_append_time_does_not_grow_with_size(big: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(big, d)
    small = _median_append_seconds(make(tmp_path / "small", 10), 10)
    large = _median_append_seconds(Ledger.open(d, origin=ORIGIN), 10_000)
    # Re-reading 10k entries would cost tens of milliseconds; an O(log n) append costs well under one.
    assert large < 4 * small + 0.002, (small, large)


# -- crash injection ----------------------------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    import nacl.signing
    from engine.provenance.ledger import Ledger

    path, step, origin = sys.argv[1:]
    key = nacl.signing.SigningKey(b"\\x01" * 32)

    class Signer:
        name = origin
        public_key = bytes(key.verify_key)
        def sign(self, msg):
            return key.sign(msg).signature

    def hook(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    Ledger.open(path, origin=origin, _hook=hook).append(b"the crashing entry", Signer())
    """
)
STEPS_BEFORE_COMMIT = ["begin", "entries", "checkpoints", "checkpoint.tmp"]
STEPS_AFTER_COMMIT = ["checkpoint", "state.json.tmp", "state"]


def crash_append(d: Path, step: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(d), step, ORIGIN], cwd=REPO, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_crash_steps_cover_every_durable_step(tmp_path: Path) -> None:
    steps: list[str] = []
    Ledger.open(tmp_path / "l", origin=ORIGIN, _hook=steps.append).append(b"x", SIGNER)
    assert steps == STEPS_BEFORE_COMMIT + STEPS_AFTER_COMMIT


@pytest.mark.parametrize("step", STEPS_BEFORE_COMMIT)
def test_crash_before_commit_leaves_a_torn_tail_that_repair_cuts(tmp_path: Path, step: str) -> None:
    d = tmp_path / "l"
    make(d, 3)
    crash_append(d, step)
    led = Ledger.open(d, origin=ORIGIN)
    status = led.status()
    assert status.size == 3 and not status.damage
    torn_files = {Path(t.file).name for t in status.torn_tails}
    assert torn_files == {"begin": set(), "entries": {ENTRIES}}.get(step, {ENTRIES, CHECKPOINTS})
    assert list(led.entries()) == [envelope(i) for i in range(3)]  # the tail is never read as valid
    if status.torn_tails:
        with pytest.raises(TornTailError, match="are a torn tail; run repair"):
            led.append(b"x", SIGNER)
        assert any("torn tail" in p for p in led.verify_structure(VERIFIER))
    led.repair()
    assert os.listdir(d) == [n for n in os.listdir(d) if not n.endswith(".tmp")]
    led = Ledger.open(d, origin=ORIGIN)
    assert led.status().ok and led.size == 3
    assert led.verify_structure(VERIFIER) == []
    led.append(b"after repair", SIGNER)
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == []


@pytest.mark.parametrize("step", STEPS_AFTER_COMMIT)
def test_crash_after_commit_keeps_the_entry(tmp_path: Path, step: str) -> None:
    d = tmp_path / "l"
    make(d, 3)
    crash_append(d, step)
    led = Ledger.open(d, origin=ORIGIN)
    assert led.status().ok and led.size == 4
    assert led.entry(3) == b"the crashing entry"
    assert led.verify_structure(VERIFIER) == []
    led.append(b"next", SIGNER)
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == []


def test_partial_frame_is_a_torn_tail(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 3)
    crash_append(d, "entries")
    data = (d / ENTRIES).read_bytes()
    (d / ENTRIES).write_bytes(data[:-20])  # the crash tore the frame itself
    led = Ledger.open(d, origin=ORIGIN)
    committed = len(b"".join(lines(d)[:3]))
    assert led.status().torn_tails == (TornTail(str(d / ENTRIES), committed, len(data) - 20),)
    partial = f"{d / ENTRIES}: entry 3: partial frame (torn tail); run repair"
    assert led.verify_structure(VERIFIER) == [partial]
    assert led.repair() == [f"{d / ENTRIES}: cut {len(data) - 20 - committed} bytes (torn tail)"]
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"entry":"AA==","index":0,"leaf":"x"}', "partial frame (no newline): torn tail"),
        (b"{nope\n", "bad frame: not JSON (Expecting property name enclosed in double quotes"),
        (b'{"entry":"AA==","index":0}\n', "bad frame: expected the fields entry, index, leaf"),
        (b'{"entry":"AA==","index":true,"leaf":"x"}\n', "index field says True: entries reordered"),
        (b'{"entry":"A","index":0,"leaf":"x"}\n', "bad frame: 'entry' is not base64"),
        (b'{"entry":"AA==","index":0,"leaf":"x"}\n', "leaf hash mismatch: frame says x, entry hashes to 96a2"),
        (encode_frame(0, b"\0").replace(b",", b", ", 1), "bad frame: not in canonical form"),
        (encode_frame(0, b"\0").replace(b"AA==", b"AB=="), "bad frame: not in canonical form"),
    ],
    ids=["partial", "not-json", "fields", "bool-index", "base64", "leaf", "spacing", "base64-bits"],
)
def test_bad_frames_are_named(line: bytes, message: str) -> None:
    with pytest.raises(LedgerError, match=f"^{re.escape(message)}"):
        decode_frame(line, 0)


def test_lost_state_file_is_rebuilt(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 6)
    (d / STATE).unlink()
    led = Ledger.open(d, origin=ORIGIN)
    assert led.status().ok and led.size == 6
    assert led.verify_structure(VERIFIER) == [f"{d / STATE}: missing"]
    assert led.repair() == [f"{d / STATE}: rewritten for size 6"]
    assert led.verify_structure(VERIFIER) == []


# -- tampering: each detected and named ------------------------------------------------------------


def test_truncated_entries(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 10)
    write_lines(d, lines(d)[:9])
    led = Ledger.open(d, origin=ORIGIN)
    assert not led.status().ok
    problems = led.verify_structure(VERIFIER)
    assert problems[0] == (
        f"{d / CHECKPOINT}: size 10, but {d / ENTRIES} holds 9 entries: "
        f"entries truncated or the checkpoint's size is wrong"
    )
    assert f"{d / CHECKPOINTS}: line 10: size 10, but {d / ENTRIES} holds 9 entries" in problems
    with pytest.raises(LedgerError, match="not appending to a damaged ledger"):
        led.append(b"x", SIGNER)
    with pytest.raises(LedgerError, match="cannot repair damage"):
        led.repair()


def test_rollback_is_caught_by_the_witness(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 6)
    old = tmp_path / "old"
    shutil.copytree(d, old)
    led = make(d, 0)
    for i in range(6, 10):
        led.append(envelope(i), SIGNER)
    seen = led.witness(Checkpoint(ORIGIN, 0, merkle.SHA256.empty_root()), VERIFIER)
    assert seen.size == 10
    rolled_back = Ledger.open(old, origin=ORIGIN)
    assert rolled_back.verify_structure(VERIFIER) == []  # internally sound, yet 4 entries are gone
    with pytest.raises(RollbackError, match="^checkpoint: size 6 is smaller than the last seen size 10: "):
        rolled_back.witness(seen, VERIFIER)


def test_entry_changed_in_the_middle(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 10)
    frames = lines(d)
    frame = json.loads(frames[4])
    frame["entry"] = encode_frame(4, b"forged")[10:14].decode() + frame["entry"][4:]
    frames[4] = json.dumps(frame, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    write_lines(d, frames)
    problems = Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER)
    assert problems[0].startswith(f"{d / ENTRIES}: entry 4: leaf hash mismatch: frame says ")
    assert any(p.startswith(f"{d / CHECKPOINT}: root ") for p in problems)
    assert history_mismatch(d, 5) in problems


def test_entry_changed_with_a_matching_frame(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 10)
    frames = lines(d)
    frames[4] = encode_frame(4, b"forged")
    write_lines(d, frames)
    led = Ledger.open(d, origin=ORIGIN)
    size = (d / ENTRIES).stat().st_size
    committed = json.loads((d / STATE).read_bytes())["entries_bytes"]
    # open() only compares lengths (cheap); verify_structure() re-hashes everything.
    assert led.status().damage == (f"{d / ENTRIES}: {size} bytes, but the checkpoint covers {committed}",)
    problems = led.verify_structure(VERIFIER)
    assert problems[0].startswith(f"{d / CHECKPOINT}: root ")
    assert problems[0].endswith("is not the root of entries 0..9 (" + _root(d).hex() + ")")
    assert [p for p in problems if "checkpoints.jsonl" in p] == [history_mismatch(d, n) for n in range(5, 11)]
    message = f"{d / ENTRIES}: the leaf hashes are not those the checkpoint signed; run verify"
    with pytest.raises(LedgerError, match=exactly(message)):
        led.inclusion_proof(0)


def _root(d: Path) -> bytes:
    return merkle.root([decode_frame(line, i)[1] for i, line in enumerate(lines(d))])


def test_entries_reordered(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 10)
    frames = lines(d)
    frames[3], frames[4] = frames[4], frames[3]
    write_lines(d, frames)
    problems = Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER)
    assert problems[:2] == [
        f"{d / ENTRIES}: entry 3: index field says 4: entries reordered, inserted or removed",
        f"{d / ENTRIES}: entry 4: index field says 3: entries reordered, inserted or removed",
    ]
    # Re-numbering the frames does not help: the signed roots still disagree.
    frames = [encode_frame(i, json.loads(f)["entry"].encode()) for i, f in enumerate(frames)]
    write_lines(d, frames)
    problems = Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER)
    assert any(p.startswith(f"{d / CHECKPOINT}: root ") for p in problems)


def test_tail_replaced_by_a_validly_signed_fork(tmp_path: Path) -> None:
    honest, fork = tmp_path / "honest", tmp_path / "fork"
    make(honest, 10)
    led = make(fork, 6)
    for i in range(6, 10):
        led.append(envelope(i, tag="-forked"), SIGNER)
    seen = history(honest)[7]  # a witness remembered size 8
    assert seen.size == 8

    # Wholesale: the fork is internally sound and validly signed; only the witness can tell.
    forked = Ledger.open(fork, origin=ORIGIN)
    assert forked.verify_structure(VERIFIER) == []
    fork_message = (
        f"checkpoint: size 10 is not an append-only extension of the last seen checkpoint "
        f"(size 8, root {seen.root_hash.hex()}): history rewritten, reordered or forked (consistency proof"
    )
    with pytest.raises(ForkError, match=f"^{re.escape(fork_message)}"):
        forked.witness(seen, VERIFIER)
    assert forked.witness(history(honest)[5], VERIFIER).size == 10  # the shared prefix is fine
    with pytest.raises(ForkError, match="size 10 is not an append-only extension"):
        forked.witness(history(honest)[9], VERIFIER)  # same size, other root

    # Spliced into the honest directory while its checkpoint history stays: the history names it.
    for name in (ENTRIES, CHECKPOINT, STATE):
        shutil.copy(fork / name, honest / name)
    problems = Ledger.open(honest, origin=ORIGIN).verify_structure(VERIFIER)
    assert problems == [
        *(history_mismatch(honest, n) for n in range(7, 11)),
        f"{honest / CHECKPOINTS}: no line holds the current checkpoint (size 10)",
    ]


def test_check_extends_is_pure() -> None:
    leaves = [merkle.leaf_hash(envelope(i)) for i in range(7)]
    cp = [Checkpoint(ORIGIN, n, merkle.root(leaves[:n])) for n in range(8)]
    check_extends(cp[3], cp[7], merkle.consistency_proof(3, leaves))
    check_extends(cp[0], cp[7], None)  # every log extends the empty one
    with pytest.raises(ForkError, match=re.escape("(no consistency proof for sizes 3 -> 7)")):
        check_extends(cp[3], cp[7], merkle.consistency_proof(2, leaves))
    with pytest.raises(RollbackError, match="size 3 is smaller than the last seen size 7"):
        check_extends(cp[7], cp[3], None)
    with pytest.raises(ForkError, match="origin 'other', but the seen one is for 'certus/ws-test'"):
        check_extends(cp[3], Checkpoint("other", 7, cp[7].root_hash), None)


def test_checkpoint_with_a_wrong_size(tmp_path: Path) -> None:
    d = tmp_path / "l"
    led = make(d, 10)
    root = (led.checkpoint() or Checkpoint(ORIGIN, 0, b"")).root_hash
    (d / CHECKPOINT).write_text(Checkpoint(ORIGIN, 11, root).sign(SIGNER).to_text())
    led = Ledger.open(d, origin=ORIGIN)
    assert led.status().damage == (
        f"{d / ENTRIES}: 10 entries, but the checkpoint has 11",
        f"{d / CHECKPOINTS}: no checkpoint of size 11 after the committed ones",
    )
    assert led.verify_structure(VERIFIER) == [
        f"{d / CHECKPOINT}: size 11, but {d / ENTRIES} holds 10 entries: "
        f"entries truncated or the checkpoint's size is wrong",
        f"{d / CHECKPOINTS}: no line holds the current checkpoint (size 11)",
    ]

    (d / CHECKPOINT).write_text(Checkpoint(ORIGIN, 9, root).sign(SIGNER).to_text())
    root9 = merkle.root(led.leaf_hashes(9))
    assert Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER) == [
        f"{d / ENTRIES}: entries 9..9 are past the checkpoint (size 9): torn tail; run repair",
        f"{d / CHECKPOINT}: root {root.hex()} is not the root of entries 0..8 ({root9.hex()})",
        f"{d / CHECKPOINTS}: no line holds the current checkpoint (size 9)",
        f"{d / STATE}: size 10 is past the checkpoint (size 9)",
    ]


def test_checkpoint_signed_by_another_key(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 3)
    cp = Checkpoint.from_body(Note.from_text((d / CHECKPOINT).read_text()).text)
    (d / CHECKPOINT).write_text(cp.sign(OTHER).to_text())
    problems = Ledger.open(d, origin=ORIGIN).verify_structure(VERIFIER)
    trusted = f"{ORIGIN}+{VERIFIER.key_id.hex()}"
    assert problems == [
        f"{d / CHECKPOINT}: note: not signed by any trusted key (trusted: {trusted})",
        f"{d / CHECKPOINTS}: no line holds the current checkpoint (size 3)",
    ]
    with pytest.raises(Exception, match="not signed by any trusted key"):
        Ledger.open(d, origin=ORIGIN).witness(cp, VERIFIER)


def test_tampered_state_file(tmp_path: Path) -> None:
    d = tmp_path / "l"
    make(d, 5)
    state = json.loads((d / STATE).read_bytes())
    state["frontier"][0] = "00" * 32
    (d / STATE).write_bytes(json.dumps(state, separators=(",", ":"), sort_keys=True).encode() + b"\n")
    led = Ledger.open(d, origin=ORIGIN)
    signed = merkle.root(led.leaf_hashes())
    cached = merkle.Frontier.from_dict({"size": 5, "hashes": state["frontier"]}).root()
    assert led.status().damage == (
        f"{d / CHECKPOINT}: root {signed.hex()} is not the root of entries 0..4 ({cached.hex()})",
    )
    assert led.verify_structure(VERIFIER) == [f"{d / STATE}: frontier does not match entries 0..4"]


@pytest.mark.parametrize("text", ["origin\n5\nAAAA\n\n\u2014 k AAAA\n", 'quote " and \\ back\n', "tab\there\n",
                                  "del\x7f\n", "\u2028 line sep\n", "\U0001f600\n"])
def test_checkpoint_lines_read_back_whatever_the_text(text: str) -> None:
    line = _encode_note_line(text)
    assert _decode_note_line(line) == text
    with pytest.raises(LedgerError):
        _decode_note_line(line.replace(b'"note"', b'"note" ', 1))  # only the canonical form is read


def test_canonical_frames_and_other_layouts_are_judged_alike() -> None:
    good = encode_frame(3, b"entry bytes")
    assert decode_frame(good, 3) == (b"entry bytes", merkle.leaf_hash(b"entry bytes"))
    with pytest.raises(LedgerError, match="index field says 3"):
        decode_frame(good, 4)  # a canonical frame in the wrong place is still named
    with pytest.raises(LedgerError, match="leaf hash mismatch"):
        decode_frame(good.replace(merkle.leaf_hash(b"entry bytes").hex().encode(), b"0" * 64), 3)


# -- a garbled checkpoint is damage, not a torn tail (issue 9.7) --------------------------------------


def test_garbage_checkpoint_is_named_and_repaired_from_its_history(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    make(d, 4)
    good = (d / CHECKPOINT).read_bytes()
    (d / CHECKPOINT).write_bytes(b"garbage\n")
    led = Ledger.open(d, origin=ORIGIN, create=False)
    [damage] = led.status().damage
    assert "checkpoint: unreadable" in damage and "not a torn tail" in damage and "ledger repair" in damage
    assert not led.status().torn_tails
    problems = led.verify_structure(VERIFIER)
    assert not any("torn tail; run repair" in p or "missing" in p for p in problems), problems
    assert any("unreadable, so nothing past it can be judged a torn tail" in p for p in problems)
    with pytest.raises(LedgerError, match="not appending to a damaged ledger"):
        led.append(b"more", SIGNER)
    [done] = led.repair()
    assert "restored from the last line of checkpoints.jsonl (size 4)" in done
    assert (d / CHECKPOINT).read_bytes() == good
    again = Ledger.open(d, origin=ORIGIN, create=False)
    assert again.status().ok and again.verify_structure(VERIFIER) == []
    assert again.append(b"more", SIGNER)[0] == 4


def test_garbled_history_too_is_refused_by_repair(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    make(d, 3)
    (d / CHECKPOINT).write_bytes(b"garbage\n")
    lines_ = lines(d, CHECKPOINTS)
    write_lines(d, lines_[:-1] + [b'{"note":"also garbage"}\n'], CHECKPOINTS)
    with pytest.raises(LedgerError, match="cannot restore checkpoint from checkpoints.jsonl"):
        Ledger.open(d, origin=ORIGIN, create=False).repair()
    assert (d / CHECKPOINT).read_bytes() == b"garbage\n"  # nothing changed
