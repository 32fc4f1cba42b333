"""The ASGI app ``certus serve`` runs (Starlette on uvicorn): the Open Inference Protocol (KServe V2).

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata) and ``.../ready``, ``POST /v2/models/{name}[/versions/{v}]/infer``, ``GET /metrics``
(Prometheus text; multi-process when ``PROMETHEUS_MULTIPROC_DIR`` is set, as ``certus serve`` does).

Each worker verifies the deployment at start (:func:`engine.serve.deployment.load_verified`) and
polls the ledger's checkpoint; when it changed and the alias now names another version, the new one
is verified and loaded off the event loop, then swapped in with one assignment: a request holds the
deployment it started with, so none is dropped. Every response names the served version (headers
``x-certus-model-version`` and ``x-certus-bundle-digest``; ``parameters`` in an infer answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.datasets.schema import ColumnRule
from engine.serve.deployment import AliasWatch, Deployment, load_verified, resolve
from engine.serve.guardrails import Refusal, parse_request
from engine.serve.ratelimit import SharedRateLimiter
from engine.serve.telemetry import Record, SQLiteStore, TelemetryWriter

__all__ = ["create_app", "ServeOptions", "ENV"]

ENV = "CERTUS_SERVE_OPTIONS"
NO_RATE_LIMIT = "CERTUS_SERVE_NO_RATE_LIMIT"  # benchmarks only: the rate limit's cost, measured A/B


@dataclass(frozen=True)
class ServeOptions:
    ws_root: str
    name: str
    at: str | None
    registry: str | None = None
    telemetry: str | None = None  # SQLite file; None: telemetry off
    guardrails: bool = True  # off only for the benchmark's comparison
    poll_s: float = 1.0
    workers: int = 1
    max_queue: int = 10000
    state_dir: str | None = None  # where the workers' shared rate-limit state lives; None: in this process

    def to_env(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_env(cls) -> ServeOptions:
        return cls(**json.loads(os.environ[ENV]))


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("certus_requests", "Infer requests by HTTP status", ["status"])
        self.latency = Histogram("certus_request_latency_seconds", "Infer latency (handler)",
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.refusals = Counter("certus_refusals", "Requests refused by a guardrail, by kind", ["kind"])
        self.abstentions = Counter("certus_abstentions", "Rows answered with an abstention (confidence floor)")
        self.dropped = Counter("certus_telemetry_dropped", "Telemetry records dropped (queue full)")
        self.swaps = Counter("certus_swaps", "Hot swaps to the version an alias moved to")
        self.swap_failures = Counter("certus_swap_failures", "Alias moves whose version did not verify")
        self.version = Gauge("certus_served_version", "The registry version served", multiprocess_mode="liveall")


class _State:
    def __init__(self, opts: ServeOptions) -> None:
        from engine.provenance.recorder import Provenance
        from engine.store.workspace import Workspace

        self.opts = opts
        self.prov = Provenance(Workspace.discover(opts.ws_root))
        self.dep: Deployment | None = None
        self.cfg: Any = None
        self.limiter: SharedRateLimiter | None = None
        self.writer: TelemetryWriter | None = None
        self.metrics = _Metrics()
        self.watch = AliasWatch(self.prov.ws.root)
        self.headers: dict[str, str] = {}
        self.batcher = _Batcher()

    def install(self, dep: Deployment) -> None:
        cfg = dep.cfg
        if not self.opts.guardrails:
            cfg = replace(cfg, columns=tuple(ColumnRule(f, type="float", nullable=False) for f in cfg.features),
                          reject_unknown_features=False, min_confidence=0.0, rate_limit=None,
                          max_input_bytes=1 << 30, max_batch=1 << 30)
        rate = None if os.environ.get(NO_RATE_LIMIT) else cfg.rate_limit
        limiter = self.limiter if self.limiter is not None and self.limiter.rate == rate else None
        if rate and limiter is None:  # one state for the whole server: every worker maps the same file
            path = None
            if self.opts.state_dir:
                import hashlib

                name = f"ratelimit-{hashlib.sha256(rate.encode()).hexdigest()[:16]}"
                path = os.path.join(self.opts.state_dir, name)
            limiter = SharedRateLimiter(rate, path)
        if self.writer is not None:  # every served version's pii columns stay out of the store
            self.writer.exclude = self.writer.exclude | frozenset(dep.cfg.pii_columns)
        self.cfg, self.limiter, self.dep = cfg, limiter, dep  # the request path reads these; dep last
        self.headers = {"x-certus-model-version": str(dep.version), "x-certus-bundle-digest":
                        f"sha256:{dep.bundle_root}"}
        self.metrics.version.set(dep.version)


class _Batcher:
    """Adaptive micro-batching: requests that are ready in the same event-loop turn share one predict call
    (per-call overhead dominates a small model's cost; MLServer batches the same way)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any, asyncio.Future[Any]]] = []

    def submit(self, dep: Deployment, X: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.pending:
            loop.call_soon(self.flush)
        self.pending.append((dep, X, fut))
        return fut

    def flush(self) -> None:
        import numpy as np

        items, self.pending = self.pending, []
        groups: dict[int, list[tuple[Any, Any, asyncio.Future[Any]]]] = {}
        for item in items:
            groups.setdefault(id(item[0]), []).append(item)  # a hot swap mid-turn: each version apart
        for group in groups.values():
            try:
                X = group[0][1] if len(group) == 1 else np.vstack([x for _, x, _ in group])
                classes, conf = group[0][0].model.predict(X)
            except Exception as e:  # noqa: BLE001 - each waiting request answers with it
                for *_, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for _, x, fut in group:
                n = len(x)
                if not fut.done():
                    fut.set_result((classes[start:start + n], conf[start:start + n]))
                start += n


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")).encode(), status, headers, "application/json")


def create_app(opts: ServeOptions | None = None) -> Starlette:
    opts = opts or ServeOptions.from_env()
    st = _State(opts)

    def refuse(r: Refusal, t0: float, version: str) -> Response:
        st.metrics.refusals.labels(r.kind).inc()
        st.metrics.requests.labels(str(r.status)).inc()
        if st.writer is not None:
            st.writer.submit(Record(time.time(), r.status, (time.perf_counter() - t0) * 1000, r.kind, version))
        return _json(r.body(), r.status, {**st.headers, **r.headers})

    async def infer(request: Request) -> Response:
        t0 = time.perf_counter()
        dep, cfg = st.dep, st.cfg
        if dep is None:
            return refuse(Refusal(503, "not_ready", "no verified deployment loaded yet"), t0, "")
        try:
            name, ver = request.path_params["name"], request.path_params.get("version")
            if name != dep.name or (ver is not None and ver != str(dep.version)):
                raise Refusal(404, "not_found", f"model {name}{'/' + ver if ver else ''}: not served here; this "
                              f"server serves {dep.name} version {dep.version}", "model", "served version")
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > cfg.max_input_bytes:
                raise Refusal(413, "payload_too_large", f"request body: {size} bytes; at most "
                              f"{cfg.max_input_bytes} (guardrails.max_input_bytes)", "body",
                              f"max_input_bytes {cfg.max_input_bytes}")
            if st.limiter is not None:
                client = (request.headers.get(cfg.client_header) if cfg.client_header else None) or \
                    (request.client.host if request.client else "?")
                st.limiter.check(client)
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > cfg.max_input_bytes:
                    raise Refusal(413, "payload_too_large", f"request body: over {cfg.max_input_bytes} bytes "
                                  "(guardrails.max_input_bytes)", "body", f"max_input_bytes {cfg.max_input_bytes}")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise Refusal(400, "bad_request", f"request body: not JSON ({e})", "body", "json") from None
            rows, cols = parse_request(body, cfg)
        except Refusal as r:
            return refuse(r, t0, dep.bundle_root)
        import numpy as np

        X = np.array([cols[f] for f in cfg.features], dtype=float).T
        classes, conf = await st.batcher.submit(dep, X)
        floor = cfg.min_confidence
        abstain = [c < floor for c in conf]
        labels = [("" if a else dep.model.label(k)) for k, a in zip(classes, abstain)]
        n_abstain = sum(abstain)
        if n_abstain:
            st.metrics.abstentions.inc(n_abstain)
        out = {"model_name": dep.name, "model_version": str(dep.version), "id": body.get("id", ""),
               "parameters": {"bundle_digest": f"sha256:{dep.bundle_root}", "bundle_version": dep.bundle_version},
               "outputs": [
                   {"name": "label", "datatype": "BYTES", "shape": [rows], "data": labels},
                   {"name": "class", "datatype": "INT64", "shape": [rows],
                    "data": [-1 if a else k for k, a in zip(classes, abstain)]},
                   {"name": "confidence", "datatype": "FP64", "shape": [rows], "data": conf},
                   {"name": "abstained", "datatype": "BOOL", "shape": [rows], "data": abstain}]}
        resp = _json(out, 200, st.headers)
        elapsed = time.perf_counter() - t0
        st.metrics.latency.observe(elapsed)
        st.metrics.requests.labels("200").inc()
        if st.writer is not None:  # a tuple into a deque; the writer thread drops pii columns and writes
            st.writer.submit(Record(time.time(), 200, elapsed * 1000, "", dep.bundle_root, rows, n_abstain,
                                    cols if cfg.log_inputs else None, [dep.model.label(k) for k in classes], conf,
                                    abstain))
        return resp

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        ok = st.dep is not None
        return _json({"ready": ok}, 200 if ok else 503, st.headers)

    async def server_meta(request: Request) -> Response:
        from engine import __version__

        return _json({"name": "certus", "version": __version__, "extensions": []})

    async def model_meta(request: Request) -> Response:
        dep = st.dep
        name, ver = request.path_params["name"], request.path_params.get("version")
        if dep is None or name != dep.name or (ver is not None and ver != str(dep.version)):
            return _json({"error": f"model {name}: not served here"}, 404, st.headers)
        if request.url.path.endswith("/ready"):
            return _json({"name": name, "ready": True}, 200, st.headers)
        types = {"float": "FP64", "int": "INT64", "bool": "BOOL", "str": "BYTES"}
        return _json({"name": dep.name, "versions": [str(dep.version)], "platform": "sklearn",
                      "inputs": [{"name": c.name, "datatype": types[c.type], "shape": [-1]} for c in dep.cfg.columns],
                      "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "class", "datatype": "INT64", "shape": [-1]},
                                  {"name": "confidence", "datatype": "FP64", "shape": [-1]},
                                  {"name": "abstained", "datatype": "BOOL", "shape": [-1]}],
                      "parameters": {"bundle_digest": f"sha256:{dep.bundle_root}",
                                     "bundle_version": dep.bundle_version, "alias": dep.alias}}, 200, st.headers)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), 200, {"content-type": CONTENT_TYPE_LATEST})

    async def watch_alias() -> None:
        while True:
            await asyncio.sleep(opts.poll_s)
            if not st.watch.changed() or st.dep is None:
                continue
            try:
                version, _ = await asyncio.to_thread(resolve, st.prov, opts.name, opts.at, opts.registry)
                if version.bundle_root == st.dep.bundle_root and version.number == st.dep.version:
                    continue
                dep = await asyncio.to_thread(load_verified, st.prov, opts.name, opts.at, opts.registry)
            except Exception as e:  # noqa: BLE001 - keep serving the verified version; say why
                st.metrics.swap_failures.inc()
                print(f"[certus serve] alias {opts.name}@{opts.at} moved but is not served: {e}", file=sys.stderr)
                continue
            old = st.dep.version
            st.install(dep)
            st.metrics.swaps.inc()
            print(f"[certus serve] swapped {opts.name}@{opts.at}: version {old} -> {dep.version} "
                  f"(bundle sha256:{dep.bundle_root[:16]}…)", file=sys.stderr)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        st.install(await asyncio.to_thread(load_verified, st.prov, opts.name, opts.at, opts.registry))
        if opts.telemetry:
            st.writer = TelemetryWriter(SQLiteStore(opts.telemetry), max_queue=opts.max_queue,
                                        exclude=st.cfg.pii_columns)
            st.writer.on_drop = st.metrics.dropped.inc
        import gc

        gc.collect()
        gc.freeze()  # the loaded model and libraries: no full collection walks them again (telemetry keeps
        # requests' records alive for a flush interval, which otherwise makes those collections frequent)
        task = asyncio.create_task(watch_alias())
        try:
            yield
        finally:
            task.cancel()
            if st.writer is not None:
                await asyncio.to_thread(st.writer.close)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    routes = [
        Route("/v2", server_meta), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}", model_meta), Route("/v2/models/{name}/ready", model_meta),
        Route("/v2/models/{name}/versions/{version}", model_meta),
        Route("/v2/models/{name}/versions/{version}/ready", model_meta),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
