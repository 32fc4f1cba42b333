"""engine.store.parallel: forked workers give exactly the serial answer, in order, and never hide a failure."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from engine.store import parallel
from engine.store.parallel import Background, fork_map


def _pids_and_sum(part: Sequence[int]) -> tuple[int, list[int], int]:
    return os.getpid(), list(part), sum(part)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_fork_map_keeps_order_and_covers_every_item_once(n: int, workers: int) -> None:
    items = list(range(n))
    out = fork_map(_pids_and_sum, items, workers=workers, min_per_worker=1)
    assert [x for _, part, _ in out for x in part] == items
    assert sum(s for _, _, s in out) == sum(items)
    assert 1 <= len(out) <= max(1, min(workers, n))
    assert len(out) > 1 or workers == 1 or n < 2
    assert all(part for _, part, _ in out) or n == 0
    assert out[0][0] == os.getpid()  # the first slice runs here
    assert len({pid for pid, _, _ in out}) == len(out)  # every other one in its own child


def test_fork_map_stays_in_process_below_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "cpu_count", lambda: 8)
    out = fork_map(_pids_and_sum, list(range(100)), min_per_worker=60)
    assert [pid for pid, _, _ in out] == [os.getpid()]
    out = fork_map(_pids_and_sum, list(range(100)), min_per_worker=50)
    assert len(out) == 2


def _fails_in_second_slice(part: Sequence[int]) -> int:
    if 7 in part:
        raise ValueError(f"bad item in {list(part)}")
    return len(part)


def test_an_exception_in_a_child_is_raised_in_the_parent() -> None:
    with pytest.raises(ValueError, match=r"bad item in \[5, 6, 7, 8, 9\]"):
        fork_map(_fails_in_second_slice, list(range(10)), workers=2, min_per_worker=1)


def _dies_in_child(part: Sequence[int]) -> int:
    if part[0] != 0:
        os._exit(3)  # a worker killed without a word (OOM killer, segfault)
    return 0


def test_a_child_that_dies_is_an_error_not_a_missing_slice() -> None:
    with pytest.raises(RuntimeError, match="died without a result"):
        fork_map(_dies_in_child, list(range(10)), workers=2, min_per_worker=1)


def test_no_worker_is_left_behind() -> None:
    fork_map(_pids_and_sum, list(range(50)), workers=4, min_per_worker=1)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child was reaped


def test_background_runs_while_the_caller_works(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(parallel, "cpu_count", lambda: 2)  # even on a one-core machine
    flag = tmp_path / "go"

    def wait_for_flag() -> str:
        import time

        for _ in range(500):
            if flag.exists():
                return f"{os.getpid()} saw it"
            time.sleep(0.01)
        return "timed out"

    job = parallel.background(wait_for_flag)
    flag.write_text("")  # only this process can make the child finish: so it runs concurrently
    result = job.result()
    assert result.endswith("saw it") and not result.startswith(str(os.getpid()))


def test_background_without_cores_runs_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "cpu_count", lambda: 1)
    assert parallel.background(os.getpid).result() == os.getpid()
    assert Background(os.getpid, fork=False).result() == os.getpid()


def test_background_cancel_reaps_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(parallel, "cpu_count", lambda: 2)
    job = Background(lambda: time.sleep(30))
    job.cancel()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


class _Unpicklable(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def _raises_unpicklable(part: Sequence[int]) -> int:
    if part[0] != 0:
        raise _Unpicklable("left", "right")  # unpickling calls __init__ with one argument: fails
    return 0


def test_an_exception_that_does_not_round_trip_still_says_what_it_was() -> None:
    with pytest.raises((RuntimeError, _Unpicklable), match="left/right"):
        fork_map(_raises_unpicklable, list(range(4)), workers=2, min_per_worker=1)
