"""``certus gate show|check`` and ``certus waive``: evaluation gates on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from engine.errors import EngineError

__all__ = ["register", "gate_rows", "print_gate_table"]


def _ws(args: argparse.Namespace) -> Any:
    from engine.store.workspace import Workspace

    return Workspace.discover(args.directory or ".")


def _current(ws: Any, prov: Any, pipeline: str | None) -> tuple[Any, dict[str, Any]]:
    """The gate states for the workspace's current inputs (the lock, the composed config)."""
    from engine.gates.runner import GateRunner
    from engine.pipeline.lockfile import LockFile
    from engine.run.load import load

    config, spec, dag = load(ws, [], pipeline)
    rep = SimpleNamespace(spec=spec, config=config, dag=dag, lock=LockFile.load(ws.lock_path, lenient=True),
                          run_id="(current)", ws=ws, err=sys.stderr)
    runner = GateRunner(rep, prov if prov.enabled else None)
    runner._say = lambda state: None  # type: ignore[method-assign]
    return runner, {name: runner.ensure(name) for name in spec.gates}


def gate_rows(book: Any, states: dict[str, Any]) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for name, st in sorted(states.items()):
        if st is None:
            rows.append({"gate": name, "result": None, "standing": "not evaluated", "ok": False, "metrics": []})
            continue
        rec = st.record if hasattr(st, "record") else st
        if rec is None:
            rows.append({"gate": name, "result": st.result, "ok": False, "metrics": st.outcomes, "recorded": False,
                         "standing": "not recorded for the current inputs; run 'certus repro'"})
            continue
        ok, why = book.standing(rec, now)
        covered, _ = book.coverage(rec, now)
        metrics = [{**m, "waiver": (f"ledger entry {covered[m['name']].index}" if m.get("name") in covered else None)}
                   for m in rec.detail.get("metrics", [])]
        rows.append({"gate": name, "result": rec.result, "ok": ok, "standing": why, "run_id": rec.detail.get("run_id"),
                     "ledger_index": rec.index, "sha256": rec.sha256, "key": rec.detail.get("key"),
                     "metrics": metrics, "recorded": True})
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no gate results")
    for r in rows:
        where = f" run {r['run_id']} (ledger entry {r['ledger_index']})" if r.get("run_id") else ""
        print(f"gate {r['gate']}: {r['result'] or '-'}{where} — {'OK' if r['ok'] else 'NOT OK'}: {r['standing']}")
        for m in r["metrics"]:
            limit = f" hard {m['hard_limit']}" if m.get("hard_limit") is not None else ""
            waived = f"  waived ({m['waiver']})" if m.get("waiver") else ""
            print(f"  {m['name']:<24} {str(m.get('value_text')):<12} {m['comparator']} {m['threshold']}{limit}"
                  f"  {m['outcome']}{waived}")


def print_gate_table(prov: Any, run_id: str) -> None:
    """The gate table of one run (for ``certus show``)."""
    from engine.gates.book import GateBook

    book = GateBook.load(prov)
    recs = {str(r.detail.get("gate")): r for r in book.for_run(run_id)}
    if recs:
        print("gates:")
        _print(gate_rows(book, recs))


def _states(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from engine.gates.book import GateBook
    from engine.gates.waive import find_result
    from engine.provenance.recorder import Provenance

    prov = Provenance(_ws(args))
    if args.run:
        book = GateBook.load(prov)
        gates = {str(r.detail.get("gate")) for r in book.results}
        for gate in sorted(gates):
            try:
                run_id = str(find_result(book, args.run, gate).detail["run_id"])
                return book, {str(r.detail.get("gate")): r for r in book.for_run(run_id)}
            except EngineError:
                continue
        raise EngineError(f"run '{args.run}': no gate result in the ledger (see 'certus log')")
    runner, states = _current(prov.ws, prov, args.pipeline)
    return runner.book, states


def cmd_gate_show(args: argparse.Namespace) -> int:
    book, states = _states(args)
    rows = gate_rows(book, states)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        _print(rows)
    return 0


def cmd_gate_check(args: argparse.Namespace) -> int:
    book, states = _states(args)
    rows = gate_rows(book, states)
    bad = [r for r in rows if not r["ok"]]
    for r in rows:
        print(f"gate {r['gate']}: {'OK' if r['ok'] else 'NOT OK'}: {r['standing']}")
    return 1 if bad else 0


def cmd_waive(args: argparse.Namespace) -> int:
    from engine.gates.waive import waive
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import WorkspaceLock

    ws = _ws(args)
    prov = Provenance(ws, key=args.key)
    with WorkspaceLock(ws).held(wait=True, command="waive"):
        index, p = waive(prov, run=args.run, gate=args.gate, metric=args.metric, reason=args.reason,
                         expires=args.expires, key=args.key, result_sha=args.result)
    print(f"waiver for run {p['run_id']} gate '{p['gate']}' metric '{p['metric']}' (observed {p['observed']}) signed "
          f"by '{p['approver']}', until {p['expires']}: ledger entry {index}")
    return 0


def register(sub: Any, add: Any) -> None:
    g = sub.add_parser("gate", help="evaluation gates: results, waivers, CI check",
                       description="evaluation gates: results, waivers, CI check")
    gs = g.add_subparsers(dest="gate_command", metavar="COMMAND")
    gs.required = True
    for name, func, help_ in (("show", cmd_gate_show, "per gate and metric: value, comparator, threshold, outcome"),
                              ("check", cmd_gate_check, "exit 0 only if every gate passed or is validly waived")):
        p = gs.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        p.add_argument("run", nargs="?", help="a run id (prefix, or 'latest'); default: the current inputs")
        p.add_argument("-p", "--pipeline", help="pipeline name under pipelines/ (default: certus.pipeline)")
        if name == "show":
            p.add_argument("--json", action="store_true")
    w = add("waive", "sign a waiver for a metric that needs review (approver key)", cmd_waive)
    w.add_argument("run", help="the run whose gate result is waived")
    w.add_argument("--gate", required=True)
    w.add_argument("--metric", required=True, help="the policy rule's name or its metric path")
    w.add_argument("--reason", required=True, help="the rationale, recorded and signed")
    w.add_argument("--expires", required=True, help="YYYY-MM-DD (end of that day, UTC) or an RFC 3339 time")
    w.add_argument("--key", help="the approver key (name in the key directory, or a .key path)")
    w.add_argument("--result", help="the gate result's sha256 the approver reviewed (refused if it is not the run's)")
