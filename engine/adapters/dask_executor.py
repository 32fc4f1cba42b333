"""Stage commands on a Dask ``distributed`` cluster, behind the :class:`~engine.run.executor.Executor` seam.

The coordinator stays the one writer of cache, lock and ledger: a worker runs the command
(:mod:`engine.adapters.dask_runner`) and reports. Dask is imported only when this executor is
chosen (``repro --executor dask`` or ``certus.executor``), and the client connects on the
first stage that really runs, so a no-op repro never touches the cluster.

Dask semantics that matter here:

* every task has an explicit key, ``certus-<run>-<stage>-<stage key>`` (Dask's ``pure=True``
  default would merge identical calls into one);
* no automatic retries: a failed or lost stage is re-submitted (under a new key) only when the
  stage declares ``retries: N``; a task the scheduler re-schedules after its worker died is
  refused by the runner;
* a stage's ``resources:`` become Dask worker resources, checked against the cluster first (a
  task no worker can take would wait forever);
* cancellation marks the run cancelled (no runner starts a command after it) and sets the run's
  :class:`distributed.Event`; runners kill their process groups;
* one scheduler round trip per stage, the submit and its "finished": a runner checks its
  once-only start and the cancel mark, and leaves its result, in the run's mark directory on the
  file system both sides reach (see dask_runner); Dask's result fetch is only the fallback. Where
  the coordinator can watch that directory (inotify, :mod:`engine.adapters.dir_watch`), the result
  file arriving settles the stage without waiting for Dask's "finished" to come round through the
  scheduler; whichever comes first is used, once.

``staged`` mode (:mod:`engine.adapters.dask_staging`) moves bytes through a content-addressed
store and verifies every digest a worker claims before anything enters the workspace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TextIO

from engine.errors import ExecutorError
from engine.run.executor import ExecutorSettings, JobResult, StageJob

__all__ = ["DaskExecutor", "task_key"]

_CLOSE_WITHIN = 15.0  # seconds the goodbye to the scheduler may take before the run leaves it
_RESULT_WITHIN = 120.0  # seconds to fetch a finished task's (small) result from its worker


def task_key(run_id: str, job: StageJob, attempt: int = 0) -> str:
    """An explicit, unique task key: run, stage, stage key (and the retry)."""
    return f"certus-{run_id}-{job.name}-{job.key.removeprefix('sha256:')[:16]}" + (f"-r{attempt}" if attempt else "")


class DaskExecutor:
    """Submits stage jobs to a Dask cluster; futures resolve to :class:`JobResult` as locally."""

    def __init__(self, settings: ExecutorSettings, *, jobs: int, workspace: str, echo: TextIO,
                 warn: Callable[[str], None], sandbox: str, run_id: str, all_outs: Iterable[str] = ()) -> None:
        self.settings = settings
        self.jobs = jobs
        self.workspace = workspace
        self.echo = echo
        self.warn = warn
        self.sandbox = sandbox
        self.run_id = run_id
        self.client: Any = None
        self.cluster: Any = None
        self._cancel: Any = None
        self._others: Any = None
        self._staging: Any = None
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}  # task key -> Dask future, until its result is handled
        self._finished: list[Any] = []  # handled futures, released with the next submit (see _start)
        self._marks = ""  # the run's directory of task start marks, which workers reach (see dask_runner)
        self._watch: Any = None  # result files arriving in _marks (engine.adapters.dir_watch), where it can
        self._waiting: dict[str, list[Any]] = {}  # result file name -> [future, job, out, attempt], unsettled
        self._post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="certus-dask-ingest")
        self._stopping = False
        self._notes: set[str] = set()
        self._fits: dict[tuple[tuple[str, float], ...], str] = {}
        self._all_outs = frozenset(all_outs)  # every output of the pipeline (absolute paths)

    # -- connecting ------------------------------------------------------------------------

    def _connect(self) -> None:
        import dask
        import distributed

        s = self.settings
        try:
            if s.scheduler:
                self.client = distributed.Client(s.scheduler, timeout=s.connect_timeout, set_as_default=False)
            else:
                cores = os.cpu_count() or 1
                n = s.workers or max(1, min(self.jobs, cores))
                with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                    self.cluster = distributed.LocalCluster(
                        n_workers=n, threads_per_worker=max(1, math.ceil(self.jobs / n)), processes=True,
                        host="127.0.0.1", dashboard_address=":0",
                        resources={"cpus": max(1, cores // n)})
                self.client = distributed.Client(self.cluster, set_as_default=False)
        except (OSError, TimeoutError) as e:
            where = s.scheduler or "a LocalCluster"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.close()
            raise ExecutorError(f"cannot reach the Dask scheduler at {where} (within {s.connect_timeout:g} s): "
                                f"{reason}; start it, or fix --scheduler / certus.executor.scheduler") from None
        # The client batches what it sends the scheduler, 10 ms apart (hard-wired in distributed): a
        # submit that follows any message within 10 ms waits for the rest of it. Stages are few and
        # their messages small, so this run's client sends at once (every ms at most).
        with contextlib.suppress(AttributeError):
            self.client.scheduler_comm.interval = 0.001
        self._cancel = distributed.Event(f"certus-cancel-{self.run_id}", client=self.client)
        if s.mode == "shared":
            [self._others] = self.client.scatter([self._all_outs], broadcast=True, hash=False)
            self._marks = os.path.join(self.workspace, ".certus", "tmp", "dask", self.run_id)
        if s.mode == "staged":
            from engine.adapters.dask_staging import Staging

            self._staging = Staging(s.store, self.workspace, self.run_id)
            self._marks = os.path.join(self._staging.incoming, f"{self.run_id}.started")
        try:
            os.makedirs(self._marks, exist_ok=True)
        except OSError as e:
            self.close()
            raise ExecutorError(f"cannot create {self._marks} (where Dask workers mark the stages they start): "
                                f"{e.strerror}") from None
        from engine.adapters.dir_watch import watch

        self._watch = watch(self._marks, self._on_file)

    def _fit(self, resources: tuple[tuple[str, float], ...]) -> str:
        """'' when some worker offers ``resources``; else why not (checked once per distinct set)."""
        if not resources:
            return ""
        if resources not in self._fits:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
            offers = [w.get("resources") or {} for w in workers]
            ok = any(all(o.get(k, 0) >= v for k, v in resources) for o in offers)
            want = ", ".join(f"{k}={v:g}" for k, v in resources)
            self._fits[resources] = "" if ok else (
                f"needs resources {want}, which no worker of the cluster offers ({len(offers)} worker(s)); start "
                f"workers with --resources \"{want.replace(', ', ' ')}\" or lower the stage's 'resources:'")
        return self._fits[resources]

    # -- submitting ------------------------------------------------------------------------

    def submit(self, job: StageJob) -> Future[JobResult]:
        if self.client is None:
            self._connect()
        out: Future[JobResult] = Future()
        out.set_running_or_notify_cancel()
        self._start(job, out, 0)
        return out

    def _start(self, job: StageJob, out: Future[JobResult], attempt: int) -> None:
        from engine.adapters.dask_runner import run_stage

        started = time.time()
        why = self._fit(job.resources)
        if why or self._stopping:
            out.set_result(JobResult(job.name, -1 if why else -signal.SIGTERM, started, time.time(), job.log_path,
                                     error=why))
            return
        key = task_key(self.run_id, job, attempt)
        # a small payload: the worker keeps its own environment under the variables Certus set, and only
        # staged mode fetches deps
        slim = replace(job, env={k: job.env[k] for k in job.set_vars if k in job.env},
                       deps=job.deps if self._staging is not None else ())
        payload: dict[str, Any] = {"job": slim, "task": key, "run_id": self.run_id, "mode": self.settings.mode,
                                   "sandbox": self.sandbox, "cancel": self._cancel.name, "marks": self._marks}
        try:
            if self._staging is not None:
                payload.update(self._staging.prepare(job, key))
                payload["scratch"] = self.settings.scratch
                args: tuple[Any, ...] = ()
            else:  # the pipeline's outputs, sent once per worker: concurrent stages' writes are not violations
                args = (self._others,)
        except Exception as e:  # the store is unreachable or full; a dep changed while exported
            out.set_result(JobResult(job.name, -1, started, time.time(), job.log_path,
                                     error=f"could not stage its deps: {e}"))
            return
        from engine.adapters.dask_runner import mark_name

        fut = self.client.submit(run_stage, payload, *args, key=key, pure=False, retries=0,
                                 resources=dict(job.resources) or None)
        with self._lock:
            # a result file that arrives before this is left to Dask's "finished" (the callback below)
            self._waiting[mark_name(key) + ".json"] = [fut, job, out, attempt]
            self._pending[key] = fut
            # Releasing a handled future is a message to the scheduler; sent just after this submit, it
            # cannot hold the next stage's submit back in the client's batch (see _connect).
            self._finished.clear()
        fut.add_done_callback(lambda f: self._hand_over(f, job, out, attempt))

    def _settle(self, name: str) -> list[Any] | None:
        """The stage waiting for result file ``name``, taken once: by the file or by Dask, whichever is first."""
        with self._lock:
            return self._waiting.pop(name, None)

    def _on_file(self, name: str) -> None:
        """From the watch thread: a runner's result file arrived (see _left_result)."""
        waiting = self._settle(name)
        if waiting is not None:
            self._post_or_stop(waiting[2], waiting[1], self._from_file, name, *waiting)

    def _hand_over(self, fut: Any, job: StageJob, out: Future[JobResult], attempt: int) -> None:
        """From Dask's callback thread to ours (results are handled one at a time, in order)."""
        from engine.adapters.dask_runner import mark_name

        if self._settle(mark_name(fut.key) + ".json") is None:  # settled from its result file already
            return
        self._post_or_stop(out, job, self._done, fut, job, out, attempt)

    def _post_or_stop(self, out: Future[JobResult], job: StageJob, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._post.submit(fn, *args)
        except RuntimeError:  # shut down after an interrupt: nothing is ingested any more
            if not out.done():
                now = time.time()
                out.set_result(JobResult(job.name, -signal.SIGTERM, now, now, job.log_path))

    def _from_file(self, name: str, fut: Any, job: StageJob, out: Future[JobResult], attempt: int) -> None:
        left = self._read_left(os.path.join(self._marks, name))
        self._done(fut, job, out, attempt, left)  # unreadable (None): Dask's result, as without the watch

    # -- results ---------------------------------------------------------------------------

    def _done(self, fut: Any, job: StageJob, out: Future[JobResult], attempt: int,
              left: dict[str, Any] | None = None) -> None:
        try:
            res = self._result(fut, job, left)
        except BaseException as e:  # never leave the coordinator waiting on a future nobody resolves
            res = JobResult(job.name, -1, time.time(), time.time(), job.log_path, error=f"executor: {e}")
        with self._lock:
            self._pending.pop(fut.key, None)
            self._finished.append(fut)
        if (res.returncode != 0 or res.error) and attempt < job.retries and not self._stopping:
            self.warn(f"[certus] stage '{job.name}' failed on Dask ({res.error}); retry {attempt + 1} of "
                      f"{job.retries} (its 'retries:')")
            self._clear_outs(job)
            self._start(job, out, attempt + 1)
            return
        out.set_result(res)

    def _result(self, fut: Any, job: StageJob, left: dict[str, Any] | None = None) -> JobResult:
        from distributed.scheduler import KilledWorker

        now = time.time()
        try:
            # the task is done when this runs; fetching its small result must not hang the run (or, after a
            # Ctrl-C, the interpreter's exit, which joins this thread)
            r = left if left is not None else self._left_result(fut)
            if r is None:
                r = fut.result(timeout=5 if self._stopping else _RESULT_WITHIN)
        except KilledWorker as e:
            return JobResult(job.name, -1, now, now, job.log_path,
                             error=f"{_lost()} ({str(e).splitlines()[0][:200]}); run 'certus repro' again")
        except CancelledError as e:  # not cancelled by this run: the scheduler dropped it with its worker
            if not self._stopping:
                return JobResult(job.name, -1, now, now, job.log_path,
                                 error=f"{_lost()} ({str(e).splitlines()[0][:200]}); run 'certus repro' again")
            return JobResult(job.name, -signal.SIGTERM, now, now, job.log_path, error="")
        except Exception as e:  # cancelled, or the runner itself raised
            if self._stopping:
                return JobResult(job.name, -signal.SIGTERM, now, now, job.log_path, error="")
            first = (str(e).splitlines() or [""])[0][:300]
            return JobResult(job.name, -1, now, now, job.log_path, error=f"the Dask task failed: "
                                                                          f"{type(e).__name__}: {first}")
        if self._stopping:  # interrupted: nothing a worker sends is placed in the workspace any more
            return JobResult(job.name, -signal.SIGTERM, r.get("started", now), r.get("finished", now), job.log_path)
        error = r.get("error", "")
        if r.get("lost"):
            error += "; run 'certus repro' again"
        for note in r.get("notes", ()):
            if note not in self._notes:  # e.g. "no Landlock": once per run, not once per stage
                self._notes.add(note)
                self.warn(f"[certus] worker {r.get('claim', {}).get('worker', '?')}: {note}")
        if self._staging is not None:
            if "log" in r:
                os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
                with open(job.log_path, "wb") as f:
                    f.write(r["log"])
            if r.get("returncode") == 0 and not error:
                error = self._staging.ingest(job, fut.key, r.get("outs", {}), r.get("claim", {}))
            try:  # the task's upload area goes once this result is out (the same thread, next)
                self._post.submit(self._staging.discard, fut.key)
            except RuntimeError:  # shut down after an interrupt
                self._staging.discard(fut.key)
        self._show_log(job)
        sandbox = dict(r.get("sandbox") or {})
        # the worker's word, recorded as such; the attested digests are the ones the coordinator hashed
        sandbox["executor"] = {"kind": "dask", "mode": self.settings.mode, "task": fut.key,
                               "workerClaim": r.get("claim", {})}
        rc = r.get("returncode", -1)
        return JobResult(job.name, rc if rc is not None else -1, r.get("started", now), r.get("finished", now),
                         job.log_path, error=error, sandbox=sandbox)

    def _left_result(self, fut: Any) -> dict[str, Any] | None:
        """The result the runner left in the mark directory, if it is there and whole.

        Saves the round trip that fetches it through the scheduler (~5 ms a stage here). The
        runner renames it into place after the command ended and everything was reported, so it
        is the stage's whole result whether it arrives before Dask's "finished" (the watch) or
        after; a task that leaves none (a lost worker, a runner that raised) is Dask's to report.
        """
        if not self._marks or fut.status != "finished":
            return None
        from engine.adapters.dask_runner import mark_name

        return self._read_left(os.path.join(self._marks, mark_name(fut.key) + ".json"))

    @staticmethod
    def _read_left(path: str) -> dict[str, Any] | None:
        try:
            with open(path) as f:
                r = json.load(f)
            os.unlink(path)
            if isinstance(r, dict) and "log" in r:  # staged mode: the log's bytes
                r["log"] = base64.b64decode(r["log"], validate=True)
        except (OSError, ValueError, TypeError):
            return None
        return r if isinstance(r, dict) else None

    def _show_log(self, job: StageJob) -> None:
        """Echo the stage's output with a ``stage |`` prefix, as the local executor does live."""
        try:
            with open(job.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return
        with self._lock, contextlib.suppress(ValueError, OSError):
            for line in lines:
                self.echo.write(f"{job.name} | {line}\n")
            self.echo.flush()

    def _clear_outs(self, job: StageJob) -> None:
        """Before a retry: what a failed attempt left in the declared outputs goes (shared mode)."""
        from engine.store.cache import remove_path

        if self._staging is None:
            for p, _ in job.outs:
                with contextlib.suppress(OSError):
                    remove_path(p)

    # -- stopping --------------------------------------------------------------------------

    def terminate_all(self, grace: float = 3.0) -> None:
        """Stop every stage: runners see the cancel event and kill their process groups; wait for them."""
        self._stopping = True
        if self.client is None:
            return
        if self._marks:  # no task of this run starts a command any more (runners look before they start)
            with contextlib.suppress(OSError), open(os.path.join(self._marks, "cancel"), "w"):
                pass
        with contextlib.suppress(Exception):
            self._cancel.set()  # running ones see it and kill their process groups
        with self._lock:
            futs = list(self._pending.values())
        if futs:
            import distributed

            with contextlib.suppress(Exception):
                distributed.wait(futs, timeout=grace + 10)
            with contextlib.suppress(Exception):
                self.client.cancel(futs)

    def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._post.shutdown(wait=not self._stopping, cancel_futures=self._stopping)
        # Talking to the scheduler can stall (a loaded or dying cluster, a Ctrl-C mid-call): the run's
        # results are already settled here, so the goodbye is bounded and a stalled one is left behind.
        done = threading.Thread(target=self._release, name="certus-dask-close", daemon=True)
        done.start()
        done.join(_CLOSE_WITHIN)
        if done.is_alive():
            sys.stderr.write(f"[certus] the Dask client did not close within {_CLOSE_WITHIN:.0f} s; leaving it\n")
        if self._marks:  # gone: a task of this run that the scheduler still starts refuses to run
            shutil.rmtree(self._marks, ignore_errors=True)
        if self._staging is not None:
            self._staging.close()

    def _release(self) -> None:
        self._finished.clear()
        self.close()

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close(timeout=_CLOSE_WITHIN / 2)
        self.client = self.cluster = None


def _lost() -> str:
    from engine.adapters.dask_runner import LOST

    return LOST
