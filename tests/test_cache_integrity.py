"""Local caches are a convenience, never evidence: each test is an attack on the object cache,
the run cache or the store path, on real files and the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from engine.errors import HashMismatchError
from engine.store.cache import ObjectCache
from engine.store.hashing import Hasher, parse_dir_manifest


def _obj(ws, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return ws.root / ".certus" / "cache" / hexd[:2] / hexd[2:]


def _garble(path: Path, data: bytes = b"forged bytes\n") -> None:
    if path.exists():
        os.chmod(path, 0o644)
    path.write_bytes(data)


def _digest_of(ws, stage: str, out: str) -> str:
    return ws.lock()["stages"][stage]["outs"][out]["digest"]


def _cache_files(ws) -> list[str]:
    root = ws.root / ".certus" / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- 1. hash while storing -----------------------------------------------------------------

def test_store_refuses_a_file_that_changed_after_it_was_hashed(ws):
    """The coordinator hashed one content; by the time it copies, the file holds another. The
    copy is hashed as it is written, so the other bytes are never filed under the first digest."""
    (ws.root / "out.txt").write_text("the bytes the stage wrote\n")
    entry = Hasher(str(ws.root)).hash_path("out.txt")
    (ws.root / "out.txt").write_text("bytes swapped in mid-copy\n")  # the attack: same path, new bytes
    cache = ObjectCache(str(ws.root / ".certus" / "cache"))
    with pytest.raises(HashMismatchError) as exc:
        cache.add(str(ws.root), "out.txt", entry)
    msg = str(exc.value)
    assert "output 'out.txt' changed while it was being stored" in msg and "\n" not in msg
    assert not cache.has(entry.digest)
    assert _cache_files(ws) == []  # no object, no half-written temp file


def test_stage_whose_output_changes_during_store_fails_cleanly(ws):
    """End to end: a stage leaves a daemon that rewrites its output; whatever bytes are stored
    hash to the digest recorded in the lock (or the stage fails), never another file's bytes."""
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("rewriter.py", """
        import os, sys, time
        open("big.bin", "wb").write(b"A" * (8 << 20))
        if os.fork() == 0:
            os.setsid()
            end = time.time() + 3
            i = 0
            while time.time() < end:
                with open("big.bin", "r+b") as f:
                    f.write(bytes([66 + i % 20]) * (8 << 20))
                i += 1
            os._exit(0)
    """)
    ws.write("pipelines/p.yaml", "stages:\n  s: {cmd: python rewriter.py, outs: [big.bin]}\n")
    r = ws.proc("repro")
    assert "Traceback" not in r.stderr
    if r.returncode == 0:  # the store won the race: the object must hold exactly the locked digest
        d = _digest_of(ws, "s", "big.bin")
        import hashlib
        assert "sha256:" + hashlib.sha256(_obj(ws, d).read_bytes()).hexdigest() == d
    else:
        assert "changed while it was being stored" in r.stderr or "stage(s) failed" in r.stderr
    assert not [f for f in _cache_files(ws) if ".tmp-" in f]


# -- 2. verify before restore ----------------------------------------------------------------

def test_checkout_refuses_a_garbled_cache_object(diamond):
    ws = diamond
    assert ws.certus("repro") == 0
    obj = _obj(ws, _digest_of(ws, "a", "out/a.txt"))
    _garble(obj)  # the attack: rewrite the read-only object in place
    (ws.root / "out" / "a.txt").unlink()
    r = ws.proc("checkout")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "cannot restore 'out/a.txt'" in line and "re-run the stage" in line
    assert not (ws.root / "out" / "a.txt").exists()  # nothing garbled reaches the workspace
    assert not obj.exists()  # quarantined, kept aside for inspection
    assert list((ws.root / ".certus" / "quarantine").iterdir())
    # --force over a modified file: the file stays as it was rather than get the forged bytes
    (ws.root / "out" / "a.txt").write_text("mine\n")
    _garble(obj, b"forged again\n")
    r = ws.proc("checkout", "--force")
    assert r.returncode == 1 and ws.read("out/a.txt") == "mine\n"
    # repro puts things right: the stage re-runs and the cache is whole again
    ws.clear_runs()
    assert ws.certus("repro") == 0 and ws.runs() == ["a"]
    assert ws.proc("checkout").returncode == 0


def test_repro_reruns_instead_of_restoring_a_garbled_object(diamond):
    """Today's hole: a run-cache restore served (and signed) a garbled object under its true digest."""
    ws = diamond
    assert ws.certus("repro") == 0
    good = ws.read("out/a.txt")
    d1 = _digest_of(ws, "a", "out/a.txt")
    assert ws.certus("repro", "a.x=2") == 0
    _garble(_obj(ws, d1))
    ws.clear_runs()
    r = ws.proc("repro")  # back to a.x=1: a known key, so a restore from the run cache is tried
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "stage 'a': cannot restore 'out/a.txt'" in r.stderr and "running it instead" in r.stderr
    assert "a" in ws.runs()  # it ran
    assert ws.read("out/a.txt") == good
    assert _digest_of(ws, "a", "out/a.txt") == d1 and _obj(ws, d1).read_text() == good  # healed


def test_garbled_file_inside_a_directory_output(ws):
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", textwrap.dedent("""\
        stages:
          d:
            cmd: mkdir -p d/sub && echo one > d/one.txt && echo two > d/sub/two.txt
            outs: [d]
    """))
    assert ws.certus("repro") == 0
    manifest = parse_dir_manifest(_obj(ws, _digest_of(ws, "d", "d")).read_bytes())
    two = dict(manifest)["sub/two.txt"]
    _garble(_obj(ws, "sha256:" + two))
    shutil.rmtree(ws.root / "d")
    r = ws.proc("checkout")
    assert r.returncode == 1 and "cannot restore 'd/sub/two.txt'" in r.stderr and "Traceback" not in r.stderr
    assert not (ws.root / "d").exists()  # all or nothing: no half-restored directory
    assert not list(ws.root.glob("*.certus-tmp"))


def test_object_changed_after_first_use_is_hashed_again(ws):
    """Within one process an object is hashed on first use; a later use re-hashes it if its stat
    moved (size, mtime or ctime), so a rewrite between two restores is caught."""
    (ws.root / "f.txt").write_text("v1\n")
    cache = ObjectCache(str(ws.root / ".certus" / "cache"))
    e = Hasher(str(ws.root)).hash_path("f.txt")
    cache.add(str(ws.root), "f.txt", e)
    cache.checkout(str(ws.root), "g.txt", e.digest, "file")
    assert (ws.root / "g.txt").read_text() == "v1\n"
    p = Path(cache.path(e.digest))
    st = p.stat()
    _garble(p, b"v2\n")  # same size as the original
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime put back, ctime moved
    with pytest.raises(HashMismatchError):
        cache.checkout(str(ws.root), "h.txt", e.digest, "file")
    assert not (ws.root / "h.txt").exists()


def test_store_replaces_a_damaged_object_with_fresh_bytes(diamond):
    ws = diamond
    assert ws.certus("repro") == 0
    d = _digest_of(ws, "a", "out/a.txt")
    good = ws.read("out/a.txt")
    _garble(_obj(ws, d))
    assert ws.certus("repro", "--force", "a") == 0  # same bytes again: the stored object's stat moved
    assert _obj(ws, d).read_text() == good


# -- 6. disk faults -----------------------------------------------------------------------

def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


TWO_STAGES = """\
    stages:
      small:
        cmd: python -c "open('small.txt','w').write('small\\\\n')"
        outs: [small.txt]
      big:
        cmd: python -c "open('big.bin','wb').write(b'x' * (2 << 20))"
        deps: [small.txt]
        outs: [big.bin]
"""


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare -rm (a private tmpfs mount)")
@pytest.mark.parametrize("fault", ["full", "readonly"])
def test_full_or_read_only_cache_fails_the_stage_in_one_line(ws, fault):
    """The cache on a real 256 KiB tmpfs (a private mount namespace): storing a 2 MiB output
    hits ENOSPC; remounted read-only, EROFS. The stage fails in one line, earlier stages are
    kept in the lock, and no temp file is left behind."""
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", TWO_STAGES)
    cache = ws.root / ".certus" / "cache"
    cache.mkdir(parents=True)
    mount = f"mount -t tmpfs -o size=256k tmpfs {cache}"
    if fault == "readonly":
        mount += f" && mount -o remount,ro {cache}"
    import sys
    script = (f"{mount} && {sys.executable} -m engine -C {ws.root} repro; rc=$?; "
              f"find {cache} -name '*.tmp-*' | sed 's/^/LEFT /'; exit $rc")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "LEFT" not in r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("certus: error:")]
    assert len(err) == 1
    want = "the disk is full" if fault == "full" else "read-only file system"
    stage = "big" if fault == "full" else "small"
    assert f"{stage} (cannot store output" in err[0] and want in err[0] and "run 'certus repro' again" in err[0]
    stages = ws.lock().get("stages", {}) if (ws.root / "certus.lock").exists() else {}
    assert "big" not in stages
    if fault == "full":
        assert "small" in stages  # the earlier stage is kept
