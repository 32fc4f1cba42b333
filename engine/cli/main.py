"""The ``certus`` command line: parse, dispatch, and turn errors into one line.

Holds no engine logic: each command calls the library and prints. Only
:class:`~engine.errors.EngineError` is caught; it becomes ``certus: error: <message>`` on
stderr and the error's exit code. ``--verbose`` re-raises for a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from engine import __version__
from engine.errors import EngineError
from engine.run.load import compose as compose_config
from engine.run.load import load as load_pipeline

__all__ = ["main"]


def _split_overrides(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra overrides (``a.b=1``, ``+x=1``, ``~y``) versus stage targets."""
    targets, overrides = [], []
    for w in words:
        (overrides if ("=" in w or w.startswith(("~", "+"))) else targets).append(w)
    return targets, overrides


def _workspace(args: argparse.Namespace) -> Any:
    from engine.store.workspace import Workspace

    return Workspace.discover(args.directory or ".")


# -- commands --------------------------------------------------------------------------------

def cmd_repro(args: argparse.Namespace) -> int:
    from engine.run.repro import ReproOptions

    targets, overrides = _split_overrides(args.args)
    ws = _workspace(args)
    from engine.cli.dvc_front import before_repro

    before_repro(ws, args, overrides)  # a DVC project: -S into its params files, dvc.lock adoption
    if args.multirun:
        from engine.adapters.hydra import expand_sweep

        points = expand_sweep(overrides)
    else:
        points = [overrides]
    failures = 0
    summary = []
    for i, point in enumerate(points, 1):
        if args.multirun:
            print(f"[certus] multirun {i}/{len(points)}: {' '.join(point) or '(defaults)'}", file=sys.stderr)
        opts = ReproOptions(targets=targets, overrides=point, pipeline=args.pipeline, downstream=args.downstream,
                            single=args.single_item, force=args.force, dry=args.dry, jobs=args.jobs,
                            wait=args.wait, run_cache=not args.no_run_cache,
                            check_determinism=args.check_determinism,
                            executor={"kind": args.executor or ("dask" if args.scheduler else None),
                                      "scheduler": args.scheduler})
        if args.check_determinism:
            opts.targets = [args.check_determinism]
        try:
            code, line = _repro_once(ws, opts, args)
        except EngineError as e:
            if not args.multirun:
                raise
            print(f"certus: error: {e.diagnostics()}", file=sys.stderr)
            code, line = e.exit_code, "failed"
        failures += code != 0
        summary.append((point, line))
    if args.multirun:
        print(f"multirun: {len(points)} point(s), {failures} failed")
        for point, line in summary:
            print(f"  {' '.join(point) or '(defaults)'}: {line}")
    return 1 if failures else 0


def _package_extras(ws: Any) -> Any:
    """Files a pipeline's `packages:` step signs into the bundle besides the model: the drift reference
    (`reference.json`) when the step's serving config names reference data (engine.serve, imported only then)."""
    def extras(pk: Any) -> dict[str, bytes]:
        if not pk.serving:
            return {}
        from engine.serve.packaging import reference_file

        return reference_file(ws.root, ws.p(pk.model), ws.p(pk.serving), None)

    return extras


def _repro_once(ws: Any, opts: Any, args: argparse.Namespace) -> tuple[int, str]:
    from engine.run.signed import make_repro

    rep = make_repro(ws, opts, args)
    if getattr(rep, "spec", None) is not None and getattr(rep.spec, "packages", None):
        rep.package_extras = _package_extras(ws)  # the serving side's drift reference, for `packages:` steps
    if opts.dry:
        rows = rep.dry_run()
        if args.json:
            print(json.dumps([{"stage": n, "verdict": v, "reasons": list(r)} for n, v, r in rows], indent=2))
        else:
            for n, v, r in rows:
                print(f"{n}: {v}" + (f" ({'; '.join(r)})" if r else ""))
        return 0, "dry run"
    result = rep.run()
    line = (f"ran {result.count('ran')}, restored {result.count('restored')}, "
            f"up to date {result.count('skipped')}")
    print(f"[certus] run {result.run_id}: {line}", file=sys.stderr)
    if getattr(rep, "prov", None) is None:
        print("[certus] no trust.json in the workspace: this run is not signed (see 'certus keys --help')",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "status": result.status,
                          "stages": {n: {"state": o.state, "key": o.key}
                                     for n, o in result.outcomes.items()}}, indent=2, sort_keys=True))
    if opts.check_determinism:
        from engine.run.determinism import check_determinism

        report = check_determinism(rep, opts.check_determinism)
        for path, (old, new) in sorted(report.items()):
            same = old == new
            print(f"{path}: {'same' if same else 'DIFFERENT'} ({old}{'' if same else ' -> ' + str(new)})")
        if any(o != n for o, n in report.values()):
            print(f"stage '{opts.check_determinism}' is NOT deterministic", file=sys.stderr)
            return 1, "nondeterministic"
        print(f"stage '{opts.check_determinism}' is deterministic: outputs hash the same")
    return 0, line


def cmd_status(args: argparse.Namespace) -> int:
    from engine.pipeline.lockfile import LockFile
    from engine.pipeline.status import workspace_status
    from engine.store.hashing import Hasher
    from engine.store.state import StatCache

    ws = _workspace(args)
    targets, overrides = _split_overrides(args.args)
    _, spec, dag = load_pipeline(ws, overrides, args.pipeline)
    names = dag.select(targets) if targets else dag.order()
    state = StatCache(os.path.join(ws.dot, "state.db"))
    hasher = Hasher(ws.root, state=state)
    from engine.cli.dvc_front import status_lock

    lock = status_lock(ws, spec, hasher, LockFile.load(ws.lock_path), names)  # + what dvc.lock proves
    rows = workspace_status([spec[n] for n in names], hasher, lock)
    state.flush()
    stale = [r for r in rows if r.stale]
    if args.json:
        print(json.dumps({"clean": not stale, "stages": {r.name: {"stale": r.stale, "reasons": list(r.reasons)}
                                                         for r in rows}}, indent=2, sort_keys=True))
    elif not stale:
        print("Everything is up to date.")
    else:
        for r in stale:
            print(f"{r.name}:")
            for reason in r.reasons:
                print(f"    {reason}")
    if os.environ.get("CERTUS_DEBUG_READS"):
        print(f"bytes read: {hasher.bytes_read}, files read: {hasher.files_read}", file=sys.stderr)
    return 1 if (stale and args.exit_code) else 0


def cmd_dag(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    _, _, dag = load_pipeline(ws, args.overrides, args.pipeline)
    fmt = {"mermaid": dag.to_mermaid, "dot": dag.to_dot, "ascii": dag.to_ascii}[args.format]
    sys.stdout.write(fmt())
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    from engine.run.checkout import checkout

    ws = _workspace(args)
    restored, kept = checkout(ws, targets=args.targets, force=args.force)
    for p in restored:
        print(f"restored {p}")
    if kept:
        print("modified, left alone (use --force to overwrite): " + ", ".join(kept), file=sys.stderr)
        return 1
    if not restored:
        print("Nothing to restore: outputs match certus.lock.")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from engine.run.gc import gc

    ws = _workspace(args)
    n, size, kept = gc(ws, workspace_only=args.workspace, dry=args.dry)
    verb = "would remove" if args.dry else "removed"
    print(f"{verb} {n} cache object(s), {size} bytes; kept {kept}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    cfg = compose_config(ws, args.overrides)
    if args.json:
        print(json.dumps(cfg, indent=2, sort_keys=True))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(cfg, sort_keys=True))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    _, spec, _ = load_pipeline(ws, [], args.pipeline)
    found: dict[str, Any] = {}
    for st in spec.stages.values():
        for m in st.metrics:
            try:
                with open(ws.p(m), encoding="utf-8") as f:
                    found[m] = json.load(f)
            except (OSError, ValueError) as e:
                found[m] = {"error": str(e)}
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
    else:
        for path, data in found.items():
            print(path)
            if isinstance(data, dict):
                for k, v in sorted(data.items()):
                    print(f"    {k}: {v}")
    return 0


# -- parser ----------------------------------------------------------------------------------

def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of parallel stages")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certus", description="Certus: reproducible, signed, governed ML pipelines.")
    p.add_argument("-C", dest="directory", metavar="DIR", help="run as if started in DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks for errors")
    p.add_argument("--version", action="version", version=f"certus {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        sp.add_argument("-p", "--pipeline", help="pipeline name under pipelines/ (default: certus.pipeline)")
        return sp

    r = add("repro", "bring outputs up to date, re-running only what changed", cmd_repro)
    r.add_argument("args", nargs="*", metavar="TARGET|OVERRIDE",
                   help="stage names (and their upstream) and Hydra overrides such as train.C=0.5 model=gbt")
    r.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: one run per sweep point")
    r.add_argument("--dry", action="store_true", help="plan only: which stages would run, and why")
    r.add_argument("-f", "--force", action="store_true", help="run selected stages even if up to date")
    r.add_argument("-s", "--single-item", action="store_true", help="only the targets, not their upstream")
    r.add_argument("--downstream", action="store_true", help="the targets and everything downstream of them")
    r.add_argument("-j", "--jobs", type=_jobs, default=0, help="parallel stages (default: number of cores)")
    r.add_argument("--wait", action="store_true", help="wait for another repro's workspace lock")
    r.add_argument("--no-run-cache", action="store_true", help="run even when the stage key was seen before")
    r.add_argument("--check-determinism", metavar="STAGE", help="re-run STAGE and compare its output hashes")
    r.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    r.add_argument("--executor", choices=("local", "dask"), help="where stage commands run (default: "
                   "certus.executor, else local); dask: on a Dask cluster, see README 'Distributed execution'")
    r.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: "
                   "certus.executor.scheduler, else a LocalCluster started for the run)")
    r.add_argument("--key", help="trainer key (name in the key directory, or a .key path); default: CERTUS_KEY")
    r.add_argument("-S", "--set-param", dest="set_params", action="append", metavar="[FILE:]KEY=VALUE",
                   help="DVC project: write KEY=VALUE into the params file the stages read (like dvc exp run -S)")

    s = add("status", "what is stale and why (read-only)", cmd_status)
    s.add_argument("args", nargs="*", metavar="TARGET|OVERRIDE")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--exit-code", action="store_true", help="exit 1 when anything is stale")

    d = add("dag", "show the stage graph", cmd_dag)
    d.add_argument("overrides", nargs="*")
    d.add_argument("--format", choices=("ascii", "mermaid", "dot"), default="ascii")

    c = add("checkout", "restore outputs recorded in certus.lock from the cache", cmd_checkout)
    c.add_argument("targets", nargs="*", help="stages or output paths (default: all)")
    c.add_argument("-f", "--force", action="store_true", help="also overwrite modified outputs")

    g = add("gc", "drop cache objects that no lock entry or run-cache entry references", cmd_gc)
    g.add_argument("-w", "--workspace", action="store_true",
                   help="keep only what certus.lock references (forget the run cache's other entries)")
    g.add_argument("--dry", action="store_true", help="only say what would be removed")

    cf = add("config", "print the composed Hydra configuration", cmd_config)
    cf.add_argument("overrides", nargs="*")
    cf.add_argument("--json", action="store_true")

    m = add("metrics", "show the metrics files the stages wrote", cmd_metrics)
    m.add_argument("--json", action="store_true")

    from engine.cli.provenance import register as register_provenance

    register_provenance(sub, add)
    from engine.cli.gates import register as register_gates

    register_gates(sub, add)
    from engine.cli.release import register as register_release

    register_release(sub, add)
    from engine.cli.deploy import register as register_deploy

    register_deploy(sub, add)
    from engine.cli.dvc_front import register as register_dvc

    register_dvc(sub, add)
    from engine.cli.serve import register as register_serve

    register_serve(sub, add)
    from engine.cli.lock import register as register_lock

    register_lock(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as e:
        if args.verbose:
            raise
        print(f"certus: error: {e.diagnostics()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("certus: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
