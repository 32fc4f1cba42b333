"""Gate evaluation overhead per run: the time GateRunner spends (key, ledger lookup, evaluation, statement)
beyond the metrics stage, on a signed workspace. Prints milliseconds per evaluation; target < 100 ms."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from engine.cli.main import main as certus

    with tempfile.TemporaryDirectory() as d:
        ws, home = Path(d) / "ws", Path(d) / "home"
        ws.mkdir()
        os.environ.update(CERTUS_HOME=str(home), CERTUS_KEY_PASSPHRASE="bench", CERTUS_KDF_FAST="1")
        (ws / "conf/policy").mkdir(parents=True)
        (ws / "pipelines").mkdir()
        (ws / "conf/config.yaml").write_text(
            "defaults: [{policy: default}, _self_]\ncertus: {pipeline: p}\nm: {a: 0.9}\n")
        (ws / "conf/policy/default.yaml").write_text(
            "release:\n" + "".join(f"  r{i}: {{metric: m{i}, min: 0.5, hard_limit: 0.1}}\n" for i in range(20)))
        (ws / "ev.py").write_text(textwrap.dedent('''
            import json, os
            a = json.load(open(os.environ["CERTUS_PARAMS"]))["m"]["a"]
            json.dump({f"m{i}": a for i in range(20)}, open("eval.json", "w"))
        '''))
        (ws / "pipelines/p.yaml").write_text(textwrap.dedent('''
            stages:
              evaluate: {cmd: python ev.py, deps: [ev.py], params: [m], metrics: [eval.json]}
            gates:
              release: {after: evaluate}
        '''))
        (ws / ".gitignore").write_text(".certus/\neval.json\n")
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        certus(["-C", str(ws), "keys", "generate", "--name", "a", "--role", "trainer"])
        certus(["-C", str(ws), "keys", "trust", str(home / "keys/a.pub"), "--role", "trainer", "--role", "ledger",
                "--role", "admin"])
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "x", "--allow-empty"],
                       cwd=ws, check=True)
        subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"], cwd=ws, check=True)
        from engine.gates import runner as runner_mod

        spent: list[float] = []
        orig = runner_mod.GateRunner.ensure

        def timed(self, name):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return orig(self, name)
            finally:
                spent.append(time.perf_counter() - t0)

        runner_mod.GateRunner.ensure = timed  # type: ignore[method-assign]
        for i in range(10):
            certus(["-C", str(ws), "repro", f"m.a=0.{60 + i}"])
        ms = sorted(s * 1000 for s in spent)
        print(f"gate evaluation (20 rules, signed workspace, {len(ms)} evaluations): median {ms[len(ms) // 2]:.1f} ms, "
              f"max {ms[-1]:.1f} ms (target < 100 ms; signing + append happen with the run record)")


if __name__ == "__main__":
    main()
