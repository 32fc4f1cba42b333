"""CLI: ``certus serve`` (a verified deployment over the Open Inference Protocol) and ``certus monitor``
(drift and health against the bundle's thresholds; signed drift reports; waivers)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from engine.errors import DriftDetected, ServeError

__all__ = ["register"]


def _prov(args: argparse.Namespace) -> Any:
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    return Provenance(Workspace.discover(args.directory or "."), key=getattr(args, "key", None))


def _telemetry_path(prov: Any, args: argparse.Namespace, name: str) -> str:
    if args.telemetry:
        return os.path.abspath(args.telemetry)
    d = os.path.join(prov.ws.root, ".certus", "telemetry")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{name}.sqlite")


def cmd_serve(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from engine.release.registry import parse_ref
    from engine.serve.app import ENV, ServeOptions
    from engine.serve.deployment import load_verified

    prov = _prov(args)
    name, at = parse_ref(args.ref)
    if args.workers < 1:
        raise ServeError(f"--workers {args.workers}: expected 1 or more")
    dep = load_verified(prov, name, at, args.registry)  # refused here, before any port is opened
    telemetry = None if args.no_telemetry else _telemetry_path(prov, args, name)
    prom = tempfile.mkdtemp(prefix="certus-prom-")
    state = tempfile.mkdtemp(prefix="certus-serve-")  # the workers' shared rate-limit table (engine.serve.ratelimit)
    opts = ServeOptions(ws_root=prov.ws.root, name=name, at=at, registry=args.registry, telemetry=telemetry,
                        guardrails=not args.no_guardrails, poll_s=args.poll, workers=args.workers, state_dir=state)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom
    os.environ[ENV] = opts.to_env()
    print(f"serving {name} version {dep.version} ({dep.bundle_version}, bundle sha256:{dep.bundle_root[:16]}…) on "
          f"http://{args.host}:{args.port} with {args.workers} worker(s); telemetry: {telemetry or 'off'}"
          f"{'; GUARDRAILS OFF' if args.no_guardrails else ''}", file=sys.stderr, flush=True)
    import uvicorn

    try:
        uvicorn.run("engine.serve.app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=10)
    finally:
        shutil.rmtree(prom, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    return 0


def _target(prov: Any, ref: str, registry: str | None) -> tuple[str, Any, str, dict[str, Any], Any]:
    """(name, version, bundle path, reference, serving config) of the deployment ``ref`` names, chain verified."""
    from datetime import UTC, datetime

    from engine.release.chain import verify_chain
    from engine.release.registry import parse_ref
    from engine.serve.config import parse_serving
    from engine.serve.deployment import resolve

    name, at = parse_ref(ref)
    version, path = resolve(prov, name, at, registry)
    rep = verify_chain(prov, path, now=datetime.now(UTC))
    if not rep.ok:
        raise ServeError(f"{ref}: version {version.number} does not verify: {rep.failures[0]}")
    try:
        reference = json.load(open(os.path.join(path, "reference.json"), encoding="utf-8"))
    except OSError:
        raise ServeError(f"{ref}: version {version.number} was packaged without a drift reference (reference.json; "
                         "certus package --reference CSV)") from None
    cfg = parse_serving(open(os.path.join(path, "serving.yaml"), encoding="utf-8").read(), f"{path}/serving.yaml")
    return name, version, path, reference, cfg


def _print(res: Any, name: str, version: Any, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps({"model": name, "version": version.number, "bundle_root": version.bundle_root,
                          "result": res.status, "window": res.window, "checks": res.checks, "service": res.service,
                          "features": res.features, "prediction": res.prediction, **extra}, indent=2, default=str))
        return
    w = res.window
    print(f"{name}@{version.number}: {res.status} over {w['requests']} request(s), {w['rows']} row(s)")
    if res.service:
        lat = res.service["latency_ms"]
        print(f"  latency ms p50 {lat['p50']:.2f} p95 {lat['p95']:.2f} p99 {lat['p99']:.2f}; rejection rate "
              f"{res.service['rejection_rate']:.3f} {res.service['refusals'] or ''}; abstain rate "
              f"{res.service['abstain_rate']:.3f}; guardrail-hit rate {res.service['guardrail_hit_rate']:.3f}")
    for f, d in res.features.items():
        if "psi" in d:
            p = f" p={d['p_value']:.3g}" if "p_value" in d else ""
            print(f"  {f}: psi {d['psi']:.3f}; {d['test']} {d['statistic']:.3f}{p}{' DRIFT' if d['drifted'] else ''}")
    for c in res.checks:
        if c["outcome"] == "fail":
            print(f"  FAIL {c['name']}: {c['value']} (threshold {c['comparator']} {c['threshold']})")
    for k, v in extra.items():
        print(f"  {k}: {v}")


def _one_pass(args: argparse.Namespace, prov: Any) -> int:
    from engine.serve.monitor import evaluate, parse_since, record, window_digest
    from engine.serve.telemetry import SQLiteStore

    name, version, _, reference, cfg = _target(prov, args.ref, args.registry)
    path = _telemetry_path(prov, args, name)
    store = SQLiteStore(path)
    try:
        window = store.window(version.bundle_root, parse_since(args.since, time.time()), None)
    finally:
        store.close()
    res = evaluate(window, reference, cfg.pii_columns)
    extra: dict[str, Any] = {}
    if res.status == "FAILED" or (args.record and res.status == "PASSED"):
        index, sha = record(prov, prov.signer("trainer"), model=name, version=version.number,
                            bundle_root=version.bundle_root, reference=reference, result=res,
                            digest=window_digest(window))
        extra["drift_report"] = f"ledger entry {index} (sha256 {sha})"
    _print(res, name, version, args.json, extra)
    if res.status == "FAILED" and not args.watch:
        if args.json:
            return DriftDetected.exit_code
        raise DriftDetected(f"{name}@{version.number}: {len(res.failed)} threshold(s) breached "
                            f"({', '.join(c['name'] for c in res.failed[:4])}); signed drift report at "
                            f"{extra['drift_report']}; '{name}' version {version.number} is in review")
    return DriftDetected.exit_code if res.status == "FAILED" else 0


def _waive(args: argparse.Namespace, prov: Any) -> int:
    from datetime import UTC, datetime

    from engine.provenance.drift_records import DRIFT_WAIVER, drift_detail, is_drift_report
    from engine.provenance.records import EVENT_TYPE, Event
    from engine.provenance.statement import PAYLOAD_TYPE, rfc3339
    from engine.release.ledger_view import LedgerView
    from engine.release.publish import append_signed

    if not args.reason or not args.reason.strip():
        raise ServeError("--waive needs --reason TEXT (the approver's rationale)")
    view = LedgerView.load(prov)
    hits = [e for e in view.of_type(PAYLOAD_TYPE) if is_drift_report(e.payload) and e.sha256.startswith(args.waive)]
    if len(hits) != 1:
        raise ServeError(f"--waive {args.waive}: {'no' if not hits else 'more than one'} drift report in the ledger "
                         "has that sha256 prefix")
    detail, why = drift_detail(hits[0].payload)
    if detail is None or detail.get("result") != "FAILED":
        raise ServeError(f"--waive {args.waive}: the report {'is unsound: ' + why if detail is None else 'PASSED'}; "
                         "only a FAILED drift report is waived")
    signer = prov.signer("approver")
    if signer.keyid in view.signers(hits[0]):
        raise ServeError("--waive: the approver key signed the report itself; a waiver needs another person's key")
    event = Event(kind=DRIFT_WAIVER, time=rfc3339(datetime.now(UTC).timestamp()),
                  subject=f"{detail['model']}@{detail['version']}",
                  details={"report_sha256": hits[0].sha256, "report_index": hits[0].index,
                           "bundle_root": detail["bundle_root"], "reason": args.reason.strip()}).to_dict()
    (index,) = append_signed(prov, [(EVENT_TYPE, event, "approver")], {"approver": signer})
    print(f"waived drift report at ledger entry {hits[0].index} for {detail['model']} version {detail['version']}: "
          f"ledger entry {index}")
    return 0


def _propose(args: argparse.Namespace, prov: Any) -> int:
    from engine.datasets.register import register_source
    from engine.datasets.registry import Registry
    from engine.serve.monitor import parse_since, window_digest
    from engine.serve.retrain import check_sensitivity, dataset_name, proposal
    from engine.serve.telemetry import SQLiteStore
    from engine.store.fsutil import atomic_write

    name, version, _, reference, cfg = _target(prov, args.ref, args.registry)
    parent = check_sensitivity(Registry.load(prov.ws.root), reference)
    steward = prov.signer("data-steward", args.key)  # before anything is written: fail early without a key
    store = SQLiteStore(_telemetry_path(prov, args, name))
    try:
        window = store.window(version.bundle_root, parse_since(args.since, time.time()), None)
    finally:
        store.close()
    prop = proposal(window.inputs, cfg.features or list(reference["features"]), cfg.pii_columns)
    ds = dataset_name(name)
    rel = f"data/telemetry/{ds}.csv"
    atomic_write(prov.ws.p(rel), prop.csv)
    source = (f"certus monitor --propose-retrain {args.ref}: {prop.rows} input rows served by {name} version "
              f"{version.number} (bundle sha256:{version.bundle_root}), telemetry window sha256 "
              f"{window_digest(window)}; inputs and predictions, no labels, no pii columns")
    done = register_source(prov, rel, name=ds, source=source, sensitivity=parent.sensitivity,
                           retention=parent.expires, license=parent.license, owner=None, steward=steward)
    man = done.manifest
    if not done.new:
        print(f"dataset {man.ref} (v{man.version}) already registers these {prop.rows} input rows")
        return 0
    print(f"proposed retraining data: registered dataset {man.ref} (v{man.version}): {rel}, {prop.rows} rows "
          f"({', '.join(prop.columns)}), sensitivity {man.sensitivity} as {parent.ref}; manifest "
          f"{done.manifest_file} (signed by {steward.name})")
    print(f"awaiting approval: another person runs 'certus dataset approve {man.ref} --key APPROVER'; until then a "
          f"stage with 'datasets: [{ds}]' is refused")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    prov = _prov(args)
    if args.waive:
        return _waive(args, prov)
    if args.propose_retrain:
        return _propose(args, prov)
    if not args.watch:
        return _one_pass(args, prov)
    worst = 0
    try:
        while True:
            try:
                worst = max(worst, _one_pass(args, prov))
            except ServeError as e:
                print(f"certus: monitor: {e}", file=sys.stderr)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return worst


def register(sub: Any, add: Any) -> None:
    s = sub.add_parser("serve", help="serve a verified deployment (Open Inference Protocol, /metrics)",
                       description="serve NAME@ALIAS (or NAME@VERSION) from the registry over the Open Inference "
                                   "Protocol (KServe V2), after verifying its whole chain; guardrails from the "
                                   "bundle's serving.yaml; telemetry to SQLite; hot swap when the alias moves")
    s.add_argument("ref", metavar="NAME@ALIAS")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--registry", metavar="DIR", help="registry directory (default: registry/ in the workspace)")
    s.add_argument("--telemetry", metavar="FILE", help="telemetry SQLite file (default: .certus/telemetry/NAME.sqlite)")
    s.add_argument("--no-telemetry", action="store_true")
    s.add_argument("--no-guardrails", action="store_true", help="benchmarks only: skip input rules and limits")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between checks for an alias move (default 1)")
    s.add_argument("--log-level", default="warning")
    s.set_defaults(func=cmd_serve)
    m = sub.add_parser("monitor", help="drift and health of a deployment against its thresholds",
                       description="compare a deployment's telemetry window with the reference and thresholds its "
                                   "bundle carries; a breach writes a signed drift report to the ledger and exits 3")
    m.add_argument("ref", metavar="NAME@ALIAS")
    m.add_argument("--since", default="1h", help="window: 90s, 30m, 1h, 2d, or since an RFC 3339 time (default 1h)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--watch", action="store_true", help="keep checking every --interval seconds")
    m.add_argument("--interval", type=float, default=60.0)
    m.add_argument("--record", action="store_true", help="also sign a passing pass (a re-evaluation)")
    m.add_argument("--waive", metavar="SHA256", help="approver: waive the FAILED drift report with this digest")
    m.add_argument("--reason", help="the waiver's rationale")
    m.add_argument("--propose-retrain", action="store_true",
                   help="register the window's inputs as a new dataset version (NAME-inputs) awaiting approval")
    m.add_argument("--registry", metavar="DIR")
    m.add_argument("--telemetry", metavar="FILE")
    m.add_argument("--key", help="signing key (trainer for reports, approver for --waive, data steward for "
                                 "--propose-retrain)")
    m.set_defaults(func=cmd_monitor)
