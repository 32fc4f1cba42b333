"""The command line's DVC front end: ``-S`` and dvc.lock adoption around ``repro``, the status view, and
``certus import-dvc [--to-hydra]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.errors import ConfigError

__all__ = ["register", "before_repro", "status_lock", "is_dvc"]


def is_dvc(ws: Any) -> bool:
    from engine.pipeline.dvc_pipeline import is_dvc_project

    return is_dvc_project(ws.root)


def before_repro(ws: Any, args: argparse.Namespace, overrides: list[str]) -> None:
    """A DVC project: overrides into the params files, then adopt what dvc.lock proves (not on --dry)."""
    sets = list(getattr(args, "set_params", None) or ())
    if not is_dvc(ws):
        if sets:
            raise ConfigError(f"-S {sets[0]}: -S writes a DVC project's params files; this workspace has "
                              "pipelines/, so pass Hydra overrides instead (certus repro key=value)")
        return
    if args.dry or args.multirun:
        if sets:
            raise ConfigError("-S cannot be combined with --dry or --multirun (it writes the params file)")
        return
    from engine.run.dvc_front import prepare_repro

    for line in prepare_repro(ws, overrides, sets, err=sys.stderr, key=getattr(args, "key", None)):
        if not line.startswith("adopted"):
            print(f"[certus] {line}", file=sys.stderr)


def status_lock(ws: Any, spec: Any, hasher: Any, lock: Any, names: list[str]) -> Any:
    """certus.lock as ``status`` should judge it: plus, read-only, the entries dvc.lock proves."""
    from engine.pipeline.dvc_pipeline import DvcPipelineSpec

    if not isinstance(spec, DvcPipelineSpec) or all(lock.get(n) is not None for n in names):
        return lock
    from engine.run.dvc_adopt import adoptable

    entries, _ = adoptable(spec, ws.root, hasher, lock, names)
    for name, entry in entries.items():
        lock.set(name, entry)
    return lock


def cmd_import_dvc(args: argparse.Namespace) -> int:
    from engine.store.workspace import Workspace

    ws = Workspace.discover(args.directory or ".")
    if not is_dvc(ws):
        raise ConfigError(f"{ws.root}: not a DVC project (no .dvc/ without pipelines/); nothing to import")
    if args.to_hydra:
        from engine.run.dvc_export import to_hydra

        written, dropped = to_hydra(ws, force=args.force)
        for p in written:
            print(f"wrote {p}")
        for line in dropped:
            print(f"not carried over: {line}")
        return 0
    from engine.run.dvc_front import prepare_repro

    lines = prepare_repro(ws, [], [], err=None, key=getattr(args, "key", None))
    adopted = [ln for ln in lines if ln.startswith("adopted")]
    for line in adopted:
        print(line)
    print(f"{len(adopted)} stage(s) adopted from dvc.lock into certus.lock")
    return 0


def register(sub: Any, add: Any) -> None:
    i = add("import-dvc", "adopt what dvc.lock proves into certus.lock; --to-hydra: convert to pipelines/ + conf/",
            cmd_import_dvc)
    i.add_argument("--to-hydra", action="store_true", help="write pipelines/*.yaml and conf/ from the DVC project")
    i.add_argument("-f", "--force", action="store_true", help="with --to-hydra: overwrite existing files")
    i.add_argument("--key", help="trainer key that signs the adoption events (default: CERTUS_KEY)")
