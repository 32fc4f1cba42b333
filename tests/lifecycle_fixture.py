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


def build(base: Path, *, deploy: bool = True) -> Path:
    ws = base / "ws"
    ws.mkdir(parents=True)
    for d in ("conf", "pipelines", "stages"):
        shutil.copytree(REPO / d, ws / d, ignore=shutil.ignore_patterns("__pycache__"))
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
    certus(base, "repro")
    home = base / "home"
    certus(base, "keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256", "--unencrypted")
    certus(base, "keys", "trust", str(home / "keys/rel.pub"), "--role", "releaser")
    certus(base, "keys", "generate", "--name", "dep", "--role", "deployer", "--unencrypted")
    certus(base, "keys", "trust", str(home / "keys/dep.pub"), "--role", "deployer")
    certus(base, "package", "models/model.pkl", "--name", NAME, "--version", "1.0.0", "--key", "rel", "--run", "latest",
           "--serving", "conf/serving/penguins.yaml")
    if deploy:
        certus(base, "deploy", f"dist/{NAME}-1.0.0", "--alias", "production", "--key", "dep")
    return base


def copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest
