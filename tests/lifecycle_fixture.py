"""The reference lifecycle (Palmer Penguins) built once, for tests that need a deployed model.

Like tests/test_deploy.py's module fixture: bootstrap (data steward, approver, trainer keys; registered and
approved raw data), ``certus repro``, an ECDSA releaser and an Ed25519 deployer, ``certus package`` — here with
the reference serving config and its drift reference — and ``certus deploy`` to ``production``. Tests copy
the result (workspace and CERTUS_HOME) per test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "penguin-classifier"


def env_for(base: Path) -> dict[str, str]:
    return {**os.environ, "CERTUS_HOME": str(base / "home"), "CERTUS_KDF_FAST": "1", "HOME": str(base),
            "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@e",
            "PYTHONPATH": str(REPO)}


def certus(base: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "engine", "-C", str(base / "ws"), *args], cwd=base / "ws",
                       env=env_for(base), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def build(base: Path, *, deploy: bool = True, rate_limit: str | None = None, second: bool = False) -> Path:
    """The lifecycle in ``base/ws`` (CERTUS_HOME ``base/home``); ``rate_limit`` replaces the serving config's;
    ``second`` also trains a gbt model and packages it as 1.1.0 (not deployed)."""
    ws = base / "ws"
    ws.mkdir(parents=True)
    for d in ("conf", "pipelines", "stages"):
        shutil.copytree(REPO / d, ws / d, ignore=shutil.ignore_patterns("__pycache__"))
    if rate_limit:
        serving = ws / "conf/serving/penguins.yaml"
        text = serving.read_text()
        assert "rate_limit: 200/second" in text
        serving.write_text(text.replace("rate_limit: 200/second", f"rate_limit: {rate_limit}"))
    env = env_for(base)

    def sh(*cmd: str) -> None:
        p = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)

    sh("git", "init", "-q")
    (ws / ".gitignore").write_text(".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/lock\n"
                                   ".certus/telemetry/\nregistry/\ndist/\n")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "lifecycle")
    sh(sys.executable, "stages/bootstrap.py")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "governance")
    certus(base, "repro", "package.version=0.0.1")  # the pipeline's own release; 1.0.0 below adds the reference
    home = base / "home"
    certus(base, "keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256", "--unencrypted")
    certus(base, "keys", "trust", str(home / "keys/rel.pub"), "--role", "releaser")
    certus(base, "keys", "generate", "--name", "dep", "--role", "deployer", "--unencrypted")
    certus(base, "keys", "trust", str(home / "keys/dep.pub"), "--role", "deployer")
    certus(base, "package", "models/model.pkl", "--name", NAME, "--version", "1.0.0", "--key", "rel", "--run", "latest",
           "--serving", "conf/serving/penguins.yaml")
    if deploy:
        certus(base, "deploy", f"dist/{NAME}-1.0.0", "--alias", "production", "--key", "dep")
    if second:
        certus(base, "repro", "model=gbt", "package.version=0.0.2")
        certus(base, "package", "models/model.pkl", "--name", NAME, "--version", "1.1.0", "--key", "rel", "--run",
               "latest", "--serving", "conf/serving/penguins.yaml")
    return base


def copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


# -- a real server on a loopback port ------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``certus serve`` in a subprocess; stop() ends it (SIGINT, then its own process only)."""

    def __init__(self, base: Path, ref: str = f"{NAME}@production", *extra: str, wait: bool = True) -> None:
        import tempfile

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", dir=base, delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "-C", str(base / "ws"), "serve", ref, "--port",
                                      str(self.port), "--poll", "0.2", *extra], cwd=base / "ws", env=env_for(base),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = 90) -> None:
        import time

        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.output()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        import http.client

        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def infer(self, rows: list[dict[str, object]], client: str = "c0", path: str | None = None
              ) -> tuple[int, dict[str, str], dict[str, object]]:
        import json

        inputs = [{"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "individual_id" else "FP64",
                   "data": [r[k] for r in rows]} for k in rows[0]]
        status, headers, body = self.request("POST", path or f"/v2/models/{NAME}/infer",
                                             json.dumps({"inputs": inputs}).encode(), {"x-client-id": client})
        return status, headers, json.loads(body)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def training_rows(base: Path) -> list[dict[str, float]]:
    import csv

    with open(base / "ws" / "data/split/train.csv", newline="") as f:
        return [{k: float(r[k]) for k in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")}
                for r in csv.DictReader(f)]
