"""``certus serve`` (issue 13): a real uvicorn server in a subprocess on a loopback port, serving the reference
lifecycle's verified deployment over the Open Inference Protocol — good requests, every guardrail refusal with
its status, rate limiting, oversized payloads, metrics, telemetry (pii absent), a bundle that does not verify
refused at start, and a hot swap when the alias moves under load.

The lifecycle is built once per module (tests/lifecycle_fixture.py) and copied per test.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import lifecycle_fixture as lf
import pytest

pytestmark = pytest.mark.integration

GOOD = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0, "body_mass_g": 3750.0}
GENTOO = {"bill_length_mm": 47.5, "bill_depth_mm": 15.0, "flipper_length_mm": 217.0, "body_mass_g": 5200.0}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lf.build(tmp_path_factory.mktemp("serve"), rate_limit="30/minute", second=True)


@pytest.fixture
def base(template: Path, tmp_path: Path) -> Path:
    return lf.copy(template, tmp_path / "c")


@pytest.fixture
def server(base: Path):
    s = lf.Server(base, lf.NAME + "@production", "--telemetry", str(base / "telemetry.sqlite"))
    yield s
    s.stop()


def _refused(s: lf.Server, status: int, kind: str, field: str, rows: list[dict[str, object]] | None = None,
             raw: bytes | None = None, client: str = "r") -> dict[str, object]:
    if raw is not None:
        code, headers, body = s.request("POST", f"/v2/models/{lf.NAME}/infer", raw, {"x-client-id": client})
        out = json.loads(body)
    else:
        code, headers, out = s.infer(rows or [GOOD], client=client)
    assert code == status, out
    assert out["kind"] == kind and out["field"] == field and out["rule"], out
    assert headers["x-certus-model-version"] == "1"  # refusals name the served version too
    return out


def test_serves_oip_with_guardrails_metrics_and_telemetry(server: lf.Server, base: Path) -> None:
    s = server
    assert s.get("/v2/health/live")[0] == 200
    code, headers, body = s.get(f"/v2/models/{lf.NAME}")
    meta = json.loads(body)
    assert code == 200 and meta["versions"] == ["1"] and {i["name"] for i in meta["inputs"]} >= set(GOOD)
    root = meta["parameters"]["bundle_digest"]
    show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
    assert root == "sha256:" + show["bundle_root"]
    # good requests: one row, a batch with the optional pii column, the versioned route
    code, headers, out = s.infer([GOOD, GENTOO, GOOD])
    assert code == 200 and headers["x-certus-bundle-digest"] == root and out["model_version"] == "1"
    outputs = {o["name"]: o["data"] for o in out["outputs"]}
    assert outputs["label"] == ["Adelie", "Gentoo", "Adelie"] and all(c > 0.6 for c in outputs["confidence"])
    code, _, out = s.infer([{**GOOD, "individual_id": "N1A1"}, {**GENTOO, "individual_id": "N9A2"}],
                           path=f"/v2/models/{lf.NAME}/versions/1/infer")
    assert code == 200 and out["parameters"]["bundle_digest"] == root
    # each guardrail refusal: 4xx naming the field and the rule, never a 500
    msg = _refused(s, 422, "schema", "body_mass_g", [{**GOOD, "body_mass_g": 99999}])
    assert "max 7500" in str(msg["error"])
    _refused(s, 422, "schema", "flipper_length_mm", [{**GOOD, "flipper_length_mm": "long"}])
    _refused(s, 422, "schema", "bill_depth_mm", [{k: v for k, v in GOOD.items() if k != "bill_depth_mm"}])
    _refused(s, 422, "schema", "bill_depth_mm", [{**GOOD, "bill_depth_mm": None}])
    _refused(s, 422, "schema", "beak_colour", [{**GOOD, "beak_colour": 3.0}])
    _refused(s, 400, "bad_request", "body", raw=b"{not json")
    _refused(s, 400, "bad_request", "inputs", raw=b'{"instances": [[1, 2, 3, 4]]}')
    code, _, out = s.infer([GOOD], path=f"/v2/models/{lf.NAME}/versions/7/infer")
    assert code == 404 and out["kind"] == "not_found" and "version 1" in out["error"]
    big = json.dumps({"inputs": [{"name": "bill_length_mm", "shape": [20000], "datatype": "FP64",
                                  "data": [40.0] * 20000}]}).encode()
    out = _refused(s, 413, "payload_too_large", "body", raw=big)
    assert "65536" in str(out["error"])
    _refused(s, 413, "payload_too_large", "bill_length_mm", [GOOD] * 300)  # max_batch 256
    # output rule: a point between species is below the 0.6 confidence floor -> abstention, counted
    code, _, out = s.infer([{"bill_length_mm": 40.0, "bill_depth_mm": 15.5, "flipper_length_mm": 205.0,
                             "body_mass_g": 4200.0}])
    outputs = {o["name"]: o["data"] for o in out["outputs"]}
    assert code == 200 and outputs["abstained"] == [True] and outputs["class"] == [-1], outputs
    # metrics: Prometheus text, refusals by kind
    code, headers, body = s.get("/metrics")
    text = body.decode()
    assert code == 200 and headers["content-type"].startswith("text/plain")
    assert 'certus_refusals_total{kind="schema"} 5.0' in text
    assert 'certus_refusals_total{kind="payload_too_large"} 2.0' in text
    assert 'certus_requests_total{status="200"} 3.0' in text and "certus_abstentions_total 1.0" in text
    assert "certus_request_latency_seconds_bucket" in text
    # telemetry: every request recorded (off the request path: wait for the writer), pii never stored
    db = base / "telemetry.sqlite"
    from engine.serve.telemetry import SQLiteStore

    store = SQLiteStore(str(db))
    try:
        end = time.time() + 10
        while time.time() < end and store.count() < 13:
            time.sleep(0.1)
        w = store.window(None, None, None)
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
    from collections import Counter

    kinds = Counter(w.requests["refusal"].tolist())
    assert kinds == {"": 3, "schema": 5, "bad_request": 2, "not_found": 1, "payload_too_large": 2}, kinds
    assert sorted(w.requests["status"].tolist()) == [200.0] * 3 + [400.0] * 2 + [404.0] + [413.0] * 2 + [422.0] * 5
    assert "body_mass_g" in w.inputs and "individual_id" not in w.inputs, sorted(w.inputs)
    rows = list(zip(w.inputs["pred"].tolist(), w.inputs["body_mass_g"].tolist()))
    assert len(rows) == 6 and ("Gentoo", 5200.0) in rows
    raw = b"".join(p.read_bytes() for p in base.glob("telemetry.sqlite*"))  # the file and its WAL: no pii anywhere
    assert b"N1A1" not in raw and b"N9A2" not in raw and b"individual_id" not in raw


def test_rate_limit_per_client_with_retry_after(server: lf.Server) -> None:
    codes = [server.infer([GOOD], client="greedy")[0] for _ in range(33)]
    assert codes[:30] == [200] * 30 and codes[30:] == [429] * 3
    code, headers, out = server.infer([GOOD], client="greedy")
    assert code == 429 and out["kind"] == "rate_limit" and 1 <= int(headers["retry-after"]) <= 60
    assert server.infer([GOOD], client="polite")[0] == 200  # per client
    assert 'certus_refusals_total{kind="rate_limit"} 4.0' in server.get("/metrics")[2].decode()


def test_a_bundle_that_does_not_verify_is_refused_at_start(base: Path) -> None:
    pkl = base / "ws/registry" / lf.NAME / "1/model/model.pkl"
    pkl.chmod(0o644)
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    s = lf.Server(base, lf.NAME + "@production", wait=False)
    try:
        rc = s.proc.wait(60)
    finally:
        s.stop()
    out = s.output()
    assert rc != 0 and "Traceback" not in out
    assert "version 1 does not verify; not served" in out and "model/model.pkl" in out, out
    # an alias that names nothing, likewise one line
    p = lf.certus(base, "serve", f"{lf.NAME}@canary", "--port", str(lf.free_port()), check=False)
    assert p.returncode != 0 and "no alias 'canary'" in p.stderr and "Traceback" not in p.stderr


def test_hot_swap_when_the_alias_moves_drops_no_request(server: lf.Server, base: Path) -> None:
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            code, headers, _ = server.infer([GOOD], client=f"load{len(seen)}")
            seen.append((code, headers.get("x-certus-model-version", "")))

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.5)
        lf.certus(base, "deploy", f"dist/{lf.NAME}-1.1.0", "--alias", "production", "--key", "dep")
        end = time.time() + 30
        while time.time() < end and (not seen or seen[-1][1] != "2"):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    versions = [v for _, v in seen]
    assert all(code == 200 for code, _ in seen), seen
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert versions == sorted(versions)  # once swapped, never back
    meta = json.loads(server.get(f"/v2/models/{lf.NAME}")[2])
    assert meta["versions"] == ["2"] and meta["parameters"]["bundle_version"] == "1.1.0"
    assert "certus_swaps_total 1.0" in server.get("/metrics")[2].decode()
    assert "swapped penguin-classifier@production: version 1 -> 2" in server.output()


def test_a_full_telemetry_buffer_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    """A stalled disk (another connection holds the SQLite file's write lock): the writer thread waits, the
    request path does not; beyond ``max_queue`` records are dropped and counted, the rest written later."""
    from engine.serve.telemetry import Record, SQLiteStore, TelemetryWriter

    db = tmp_path / "t.sqlite"
    w = TelemetryWriter(SQLiteStore(str(db)), max_queue=50, flush_s=0.01, exclude=("secret",))
    drops: list[int] = []
    w.on_drop = lambda: drops.append(1)
    stall = sqlite3.connect(db, isolation_level=None)
    stall.execute("BEGIN EXCLUSIVE")
    try:
        w.submit(Record(time.time(), 200, 1.0, "", "v", 1, 0, {"x": [1.0], "secret": ["s0"]}, ["A"], [0.9], [False]))
        time.sleep(0.3)  # the writer took it and now waits on the lock
        t0 = time.perf_counter()
        for i in range(500):
            w.submit(Record(time.time(), 200, 1.0, "", "v", 1, 0, {"x": [float(i)], "secret": [f"s{i}"]}, ["A"],
                            [0.9], [False]))
        assert time.perf_counter() - t0 < 0.5  # never blocked on the disk
        assert w.dropped == 450 and len(drops) == 450 and w.written == 0
    finally:
        stall.execute("COMMIT")
        stall.close()
    w.close()
    assert w.written == 51 and w.errors == 0
    store = SQLiteStore(str(db))
    win = store.window(None, None, None)
    store.close()
    assert len(win.requests["ts"]) == 51 and sorted(win.inputs) == ["abstained", "conf", "pred", "ts", "x"]
    assert win.inputs["x"].tolist() == [1.0, *map(float, range(50))]  # the excluded column never stored


def test_rate_limit_holds_across_two_workers(base: Path) -> None:
    """One client, 30/minute, two worker processes: one keep-alive connection (one worker) gets the whole limit,
    and requests spread over many connections (both workers) get it once, not once per worker."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    s = lf.Server(base, lf.NAME + "@production", "--workers", "2", "--no-telemetry")
    try:
        body = json.dumps({"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                                      for k, v in GOOD.items()]}).encode()
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        codes = []
        for _ in range(34):
            c.request("POST", f"/v2/models/{lf.NAME}/infer", body, {"x-client-id": "one-connection"})
            r = c.getresponse()
            r.read()
            codes.append(r.status)
        c.close()
        assert codes == [200] * 30 + [429] * 4, codes

        def fresh(i: int) -> int:
            return s.request("POST", f"/v2/models/{lf.NAME}/infer", body, {"x-client-id": "spread"})[0]

        with ThreadPoolExecutor(8) as pool:
            spread = list(pool.map(fresh, range(80)))
        assert spread.count(200) == 30 and spread.count(429) == 50, spread
        assert s.infer([GOOD], client="other")[0] == 200  # per client
    finally:
        s.stop()


def test_shared_rate_limiter_is_one_moving_window_over_every_mapping(tmp_path: Path) -> None:
    """Two limiters on one file (as two workers map it): one budget per client, a moving window (a hit frees up
    exactly one period after it), other clients apart; a limit above the ring size keeps its rate."""
    from engine.serve.guardrails import Refusal
    from engine.serve.ratelimit import MAX_RING, SharedRateLimiter

    path = str(tmp_path / "rl")
    a, b = SharedRateLimiter("4/second", path), SharedRateLimiter("4/second", path)

    def ok(lim: SharedRateLimiter, client: str) -> bool:
        try:
            lim.check(client)
            return True
        except Refusal as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1" and "4/second" in str(r)
            return False

    t0 = time.monotonic()
    assert [ok(x, "c") for x in (a, b, a, b, a, b)] == [True] * 4 + [False] * 2
    assert ok(b, "d") and ok(a, "d")  # per client
    time.sleep(max(0.0, t0 + 1.05 - time.monotonic()))
    assert [ok(x, "c") for x in (b, a, b, a, b)] == [True] * 4 + [False]
    big = SharedRateLimiter("100000/second", None)
    assert big.amount == MAX_RING and abs(big.amount / big.period - 100000) < 1e-6
