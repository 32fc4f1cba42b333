"""Verification before deploy on a 1 GiB model: what the chain check costs beyond hashing the bundle.

    .venv/bin/python benchmarks/bench_deploy.py [--size-mib 1024] [--repeat 3] [--dir /tmp]

Builds a signed workspace in a temp dir (trainer/ledger/admin, ECDSA releaser and deployer keys; a
one-stage pipeline whose stage writes SIZE MiB of random bytes; its `packages:` step releases the model),
then times, best of --repeat with the page cache warm: hashing the bundle's files alone
(:func:`engine.release.verify.verify_bundle`'s hashing: SHA-256 of every file), the whole chain check
(:func:`engine.release.chain.verify_chain`: ledger, release record, bundle, run, attestation, links,
inclusion proofs), and a full ``certus deploy`` in a new process (imports, chain check, copy into the
registry, VSA and registry events). Target (issue 12): chain check minus hashing < 200 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = """\
stages:
  train:
    cmd: python -c "import os; f=open('model.bin','wb'); [f.write(os.urandom(1<<20)) for _ in range({mib})]"
    outs: [model.bin]
packages:
  bench-model:
    model: model.bin
    version: 1.0.0
    key: rel
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="certus-bench-deploy-", dir=a.dir))
    home, ws = work / "home", work / "ws"
    env = {**os.environ, "CERTUS_HOME": str(home), "CERTUS_KDF_FAST": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    os.environ.update({"CERTUS_HOME": str(home)})

    def certus(*args: str) -> float:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "engine", "-C", str(ws), *args], env=env, capture_output=True,
                           text=True)
        if p.returncode:
            sys.exit(f"certus {' '.join(args)}: {p.stdout}{p.stderr}")
        return time.perf_counter() - t

    try:
        (ws / "pipelines").mkdir(parents=True)
        (ws / "conf").mkdir()
        (ws / "conf/config.yaml").write_text("certus: {pipeline: p, sandbox: off}\n")
        (ws / "pipelines/p.yaml").write_text(SPEC.replace("{mib}", str(a.size_mib)))
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        for name, role, extra in (("tr", "trainer", ("--role", "ledger", "--role", "admin")),
                                  ("rel", "releaser", ()), ("dep", "deployer", ())):
            kind = ("--type", "ecdsa-p256") if role == "releaser" else ()
            certus("keys", "generate", "--name", name, "--role", role, *kind, "--unencrypted")
            certus("keys", "trust", str(home / "keys" / f"{name}.pub"), "--role", role, *extra)
        t_repro = certus("repro")
        bundle = ws / "dist/bench-model-1.0.0"
        size = (bundle / "model/model.bin").stat().st_size
        print(f"model: {size / (1 << 20):.0f} MiB; repro (stage + hash + package + sign + release record): "
              f"{t_repro:.1f} s")

        from engine.provenance.recorder import Provenance
        from engine.release.chain import verify_chain
        from engine.store.hashing import file_digest
        from engine.store.workspace import Workspace

        prov = Provenance(Workspace(str(ws)))
        files = [p for p in bundle.rglob("*") if p.is_file()]

        def best(fn) -> float:
            out = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
            return min(out)

        t_hash = best(lambda: [file_digest(str(p)) for p in files])
        t_chain = best(lambda: verify_chain(prov, str(bundle), now=datetime.now(UTC)))
        rep = verify_chain(prov, str(bundle), now=datetime.now(UTC))
        assert rep.ok, rep.failures
        print(f"hashing the bundle's {len(files)} files: {t_hash * 1000:.0f} ms "
              f"({size / (1 << 20) / t_hash:.0f} MiB/s)")
        print(f"verification before deploy (chain + bundle, {len(rep.links)} links): {t_chain * 1000:.0f} ms; "
              f"beyond hashing: {(t_chain - t_hash) * 1000:.0f} ms  (target < 200 ms)")
        t_deploy = certus("deploy", str(bundle), "--alias", "production")
        print(f"`certus deploy` (new process: imports, chain check, copy into the registry, VSA + registry "
              f"events): {t_deploy:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
