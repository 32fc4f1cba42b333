"""Re-derive what a run's stages were told to do, from the committed spec and the recorded config.

An attestation says which command and params a stage ran with. Certus resolved them from the
spec and the composed config, through parse caches under ``.certus/tmp`` — local state that a
hostile process could edit to run an injected command while the record names the untouched
spec. ``certus verify`` therefore resolves the spec again, from the bytes the run record names
(``spec_sha256``: the file as it is, or the blob at the recorded commit) and the config the
record carries, and compares every attested stage's ``cmd`` and ``params``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from engine.errors import EngineError

__all__ = ["SpecSource"]


class SpecSource:
    """Spec texts by digest and resolved stages by (digest, config), memoised per verifier process."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._texts: dict[tuple[str, str], str | None] = {}
        self._stages: dict[tuple[str, str], dict[str, tuple[str, dict[str, Any]]] | str] = {}

    def text(self, pipeline: str, sha: str, commit: str | None) -> str | None:
        """The spec text whose SHA-256 is ``sha``: the workspace file, else the blob at ``commit``."""
        key = (pipeline, sha)
        if key not in self._texts:
            self._texts[key] = self._find(pipeline, sha, commit)
        return self._texts[key]

    def _find(self, pipeline: str, sha: str, commit: str | None) -> str | None:
        try:
            with open(os.path.join(self.root, pipeline), "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() == sha:
                return data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            pass
        if not commit or not isinstance(commit, str) or not commit.isalnum():
            return None
        try:
            out = subprocess.run(["git", "show", f"{commit}:{pipeline}"], cwd=self.root, capture_output=True,
                                 timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and hashlib.sha256(out.stdout).hexdigest() == sha:
            try:
                return out.stdout.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None

    def stages(self, record: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]] | str:
        """``{stage: (cmd, params)}`` as the record's spec and config resolve them, or why not."""
        pipeline, sha = str(record.get("pipeline", "")), str(record.get("spec_sha256", ""))
        config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
        key = (sha, hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest())
        if key in self._stages:
            return self._stages[key]
        git = record.get("git") if isinstance(record.get("git"), Mapping) else {}
        text = self.text(pipeline, sha, git.get("commit"))
        result: dict[str, tuple[str, dict[str, Any]]] | str
        if text is None:
            result = (f"the spec it names ({pipeline}, sha256 {sha[:16]}…) is neither in the workspace nor at "
                      f"commit {str(git.get('commit'))[:12]}")
        else:
            from engine.pipeline.spec import load_spec_text

            try:
                spec = load_spec_text(text, path=pipeline, config=config)
                result = {n: (st.cmd, st.params_dict()) for n, st in spec.stages.items()}
            except EngineError as e:
                result = f"its spec does not resolve with its recorded config ({str(e).splitlines()[0]})"
        self._stages[key] = result
        return result
