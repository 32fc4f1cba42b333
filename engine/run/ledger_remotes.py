"""After a signed run: sequence what it appended into the team's shared logs (issue 16).

A remote that cannot be reached leaves the run recorded locally, said in one line; the next
``certus ledger sync`` (or run) sequences it. A shared log that does not extend what this machine
saw is an error: the run is recorded locally, and the user must look before anything is pushed.
"""

from __future__ import annotations

from typing import Any, TextIO

__all__ = ["sync_remotes", "install_git_bits"]


def sync_remotes(prov: Any, err: TextIO, names: list[str] | None = None, *, quiet_if_none: bool = True) -> list[Any]:
    from engine.adapters.shared_log import Unreachable, load_remotes, open_shared_log
    from engine.errors import SharedLogError
    from engine.provenance.ledger_sync import sync

    remotes = load_remotes(prov.ws.root)
    import contextlib

    from engine.adapters.lock_driver import install_merge_driver
    from engine.errors import WorkspaceError

    with contextlib.suppress(WorkspaceError):  # clone-local git config: a team's clones merge certus.lock per stage
        install_merge_driver(prov.ws.root)
    if names:
        missing = [n for n in names if n not in remotes]
        if missing:
            raise SharedLogError(f"no ledger remote '{missing[0]}' (configured: {', '.join(sorted(remotes)) or 'none'})"
                                 "; add it with 'certus ledger remote add NAME URL'")
        remotes = {n: remotes[n] for n in names}
    done = []
    for remote in remotes.values():
        def say(msg: str, _n: str = remote.name) -> None:
            err.write(f"[certus] ledger remote '{_n}': {msg}\n")

        try:
            res = sync(prov, open_shared_log(remote, prov.ws.root), say=say)
        except Unreachable as e:
            err.write(f"[certus] {e}; recorded locally: 'certus ledger sync' sequences it later\n")
            done.append(None)
            continue
        done.append(res)
        if res.pushed:
            err.write(f"[certus] ledger remote '{remote.name}': sequenced {res.pushed} entr"
                      f"{'y' if res.pushed == 1 else 'ies'} as entries {res.first}..{res.first + res.pushed - 1} "
                      f"of {res.size}\n")
        elif not quiet_if_none:
            err.write(f"[certus] ledger remote '{remote.name}': up to date ({res.size} entries)\n")
    return done


def install_git_bits(root: str) -> list[str]:
    """With a shared log the ledger leaves the working tree: ignore it (the shared log is its home)."""
    import os

    path = os.path.join(root, ".gitignore")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    want = [".certus/ledger/", ".certus/ledger.*"]
    add = [w for w in want if w not in lines]
    if add:
        with open(path, "a", encoding="utf-8") as f:
            if lines and lines[-1] != "":
                f.write("\n")
            f.write("\n".join(add) + "\n")
    return [f".gitignore: {a}" for a in add]
