"""Package and verify a 1 GiB model file: hashing throughput against ``openssl dgst -sha256`` on the
same file, and what verification costs beyond hashing.

    .venv/bin/python benchmarks/bench_bundle.py [--size-mib 1024] [--repeat 3] [--dir /tmp]

Targets (issue 12): packaging hashes at >= 90 % of OpenSSL's SHA-256 throughput; verify overhead
beyond hashing < 200 ms. The model is written with os.urandom chunks (no sparse file) in a temp dir,
which is removed at the end. Each figure is the best of --repeat runs (page cache warm for all).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.adapters.release_keys import generate_ecdsa_key  # noqa: E402
from engine.release.bundle import PackageRequest, build_bundle  # noqa: E402
from engine.release.verify import verify_bundle  # noqa: E402
from engine.store.hashing import file_digest  # noqa: E402


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="certus-bench-bundle-", dir=a.dir))
    try:
        model = work / "model.bin"
        with open(model, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        size = model.stat().st_size
        mib = size / (1 << 20)
        print(f"model: {mib:.0f} MiB ({size} bytes) in {work}")
        t_ossl, _ = best(lambda: subprocess.run(["openssl", "dgst", "-sha256", str(model)], check=True,
                                                capture_output=True), a.repeat)
        t_hash, _ = best(lambda: file_digest(str(model)), a.repeat)
        key = generate_ecdsa_key("bench")
        n = iter(range(1000))

        def package() -> Path:
            out = work / f"dist{next(n)}"
            return build_bundle(PackageRequest(model=str(model), name="m", version="1", out=str(out)), key).path

        t_pkg, bundle = best(package, a.repeat)
        for i in range(a.repeat - 1):
            shutil.rmtree(work / f"dist{i}")
        t_ver, rep = best(lambda: verify_bundle(bundle, pubkey=key.public_key), a.repeat)
        assert rep.ok, rep.failures
        # hashing-only time of the same files verify hashes, measured right after verify
        files = [p for p in Path(bundle).rglob("*") if p.is_file() and p.name != "model.sig"]
        t_vh, _ = best(lambda: [file_digest(str(p)) for p in files], a.repeat)
        r = lambda t: mib / t  # noqa: E731
        print(f"openssl dgst -sha256      {t_ossl:7.3f} s  {r(t_ossl):7.0f} MiB/s")
        print(f"certus file_digest        {t_hash:7.3f} s  {r(t_hash):7.0f} MiB/s  "
              f"({100 * t_ossl / t_hash:.0f} % of openssl; target >= 90 %)")
        print(f"certus package (copy+hash+sign)  {t_pkg:7.3f} s  {r(t_pkg):7.0f} MiB/s  "
              f"({100 * t_ossl / t_pkg:.0f} % of openssl's hashing, the copy included)")
        print(f"certus bundle verify      {t_ver:7.3f} s; hashing the same files {t_vh:7.3f} s; "
              f"overhead beyond hashing {1000 * (t_ver - t_vh):.0f} ms (target < 200 ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
