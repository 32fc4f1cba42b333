"""DVC through its Python API (``dvc.repo.Repo``): track, check out, push and pull data.

DVC does the versioning and storage of raw data; Certus's governance (manifests, approvals,
policy) sits on top. Only ``certus dataset`` commands import this module: ``status`` and
ordinary runs never import DVC.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from engine.errors import DatasetError

__all__ = ["open_repo", "track", "restore", "push", "pull", "read_dvcfile"]


def open_repo(root: str, *, init: bool = False) -> Any:
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    if not os.path.isdir(os.path.join(root, ".git")):
        raise DatasetError(f"{root}: not a git repository; run 'git init' first (DVC and Certus version data in git)")
    if not os.path.isdir(os.path.join(root, ".dvc")):
        if not init:
            raise DatasetError(f"{root}: DVC is not initialised here; run 'dvc init' (or pass --init to let Certus "
                               "do it) and commit .dvc/")
        try:
            with _quiet():
                Repo.init(root)
        except DvcException as e:
            raise DatasetError(f"{root}: 'dvc init' failed: {e}") from e
    try:
        return Repo(root)
    except NotDvcRepoError as e:
        raise DatasetError(f"{root}: not a DVC repository: {e}") from e


@contextlib.contextmanager
def _quiet() -> Any:
    """DVC talks to the terminal through its own ``ui``; Certus prints its own one-line summary."""
    import logging

    from dvc.ui import ui

    was = ui._enabled
    ui._enabled = False
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ui._enabled = was
        dvc_log.setLevel(level)


def read_dvcfile(root: str, dvcfile: str) -> dict[str, Any]:
    import yaml

    try:
        with open(os.path.join(root, dvcfile), encoding="utf-8") as f:
            data = yaml.safe_load(f)
        out = data["outs"][0]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as e:
        raise DatasetError(f"{dvcfile}: not a readable DVC file ({e})") from e
    return {"file": dvcfile, "md5": out.get("md5"), "size": out.get("size"), "nfiles": out.get("nfiles"),
            "hash": out.get("hash"), "path": out.get("path")}


def track(root: str, rel: str, *, init: bool = False) -> dict[str, Any]:
    """``dvc add`` a file or directory; returns what the ``.dvc`` file records."""
    from dvc.exceptions import DvcException

    repo = open_repo(root, init=init)
    try:
        with _quiet():
            repo.add(os.path.join(root, rel))
    except DvcException as e:
        text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        raise DatasetError(f"{rel}: dvc add failed: {text}") from e
    finally:
        repo.close()
    return read_dvcfile(root, rel + ".dvc")


def restore(root: str, rel: str, dvc_info: dict[str, Any]) -> None:
    """Bring back the version of ``rel`` that ``dvc_info`` records, from DVC's cache."""
    import yaml
    from dvc.exceptions import DvcException

    dvcfile = dvc_info.get("file") or rel + ".dvc"
    out = {k: dvc_info[k] for k in ("md5", "size", "nfiles", "hash") if dvc_info.get(k) is not None}
    out["path"] = os.path.basename(rel)
    with open(os.path.join(root, dvcfile), "w", encoding="utf-8") as f:
        yaml.safe_dump({"outs": [out]}, f, sort_keys=False)
    repo = open_repo(root)
    try:
        with _quiet():
            repo.checkout(targets=[os.path.join(root, dvcfile)], force=True)
    except DvcException as e:
        raise DatasetError(f"{rel}: dvc checkout failed: {e}; is the data in the DVC cache? try "
                           "'certus dataset pull'") from e
    finally:
        repo.close()


def _remote_call(root: str, what: str, remote: str | None, targets: list[str] | None) -> int:
    from dvc.exceptions import DvcException

    repo = open_repo(root)
    try:
        with _quiet():
            fn = repo.push if what == "push" else repo.pull
            res = fn(targets=[os.path.join(root, t) for t in targets] if targets else None, remote=remote)
    except DvcException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"dvc {what}: {msg}; configure a remote with 'dvc remote add -d NAME URL'") from e
    finally:
        repo.close()
    if isinstance(res, dict):
        return len(res.get("fetched", res.get("added", []))) if "fetched" in res or "added" in res else 0
    return int(res or 0)


def push(root: str, remote: str | None = None, targets: list[str] | None = None) -> int:
    return _remote_call(root, "push", remote, targets)


def pull(root: str, remote: str | None = None, targets: list[str] | None = None) -> int:
    return _remote_call(root, "pull", remote, targets)
