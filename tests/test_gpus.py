"""The GPU pool of a sweep's parallel runs: distinct GPUs for concurrent runs, slots reused once
released (or once their process dies), ``runs_per_gpu`` runs sharing a GPU."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest

from resexp.gpus import GpuPool, Slot, pool_folder


def _hold(pool: GpuPool, barrier: threading.Barrier, got: list[int]) -> None:
    with pool.claim(poll=0.01) as gpu:
        got.append(gpu)
        barrier.wait(timeout=30)  # every claimer holds its slot at once


def test_concurrent_threads_get_distinct_gpus(tmp_path):
    pool, got = GpuPool(tmp_path, gpus=4), []
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=_hold, args=(pool, barrier, got)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == [0, 1, 2, 3]


def _claim_in_process(folder: str, gpus: int, barrier, results) -> None:  # a spawned process
    with GpuPool(Path(folder), gpus).claim(poll=0.01) as gpu:
        results.put(gpu)
        barrier.wait(timeout=60)


def test_concurrent_processes_get_distinct_gpus(tmp_path):
    spawn = multiprocessing.get_context("spawn")  # as joblib's workers: no shared memory
    barrier, results = spawn.Barrier(2), spawn.Queue()
    processes = [
        spawn.Process(target=_claim_in_process, args=(str(tmp_path), 2, barrier, results))
        for _ in range(2)
    ]
    for p in processes:
        p.start()
    got = sorted(results.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == [0, 1]


def test_a_released_slot_is_reused_and_a_full_pool_has_none(tmp_path):
    pool = GpuPool(tmp_path, gpus=2)
    first, second = pool.try_claim(), pool.try_claim()
    assert first and second and {first[0].gpu, second[0].gpu} == {0, 1}
    assert pool.try_claim() is None  # both GPUs busy
    first[1].release()
    third = pool.try_claim()
    assert third and third[0] == first[0]  # the freed GPU takes the next run
    third[1].release()
    second[1].release()


def test_a_waiting_run_takes_the_gpu_that_comes_free(tmp_path):
    pool = GpuPool(tmp_path, gpus=1)
    held = pool.try_claim()
    assert held
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.extend(_claim_once(pool)))
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive() and got == []  # waits while the only slot is taken
    held[1].release()
    waiter.join(timeout=30)
    assert got == [0]


def _claim_once(pool: GpuPool) -> list[int]:
    with pool.claim(poll=0.01) as gpu:
        return [gpu]


def test_runs_per_gpu_lets_runs_share_a_gpu_after_spreading(tmp_path):
    shared = GpuPool(tmp_path / "one", gpus=1, runs_per_gpu=2)
    a, b = shared.try_claim(), shared.try_claim()
    assert a and b and (a[0].gpu, b[0].gpu) == (0, 0) and a[0] != b[0]
    assert shared.try_claim() is None  # a third run waits

    # Every GPU gets a run before any gets a second.
    pool = GpuPool(tmp_path / "two", gpus=2, runs_per_gpu=2)
    held = [pool.try_claim() for _ in range(4)]
    assert [h[0].gpu for h in held if h] == [0, 1, 0, 1]
    assert pool.try_claim() is None


def test_the_preferred_gpu_comes_first_within_a_round():
    pool = GpuPool(Path("unused"), gpus=3, runs_per_gpu=2)
    assert pool.slots(prefer=2)[:3] == [Slot(2, 0), Slot(0, 0), Slot(1, 0)]
    assert pool.slots()[3:] == [Slot(0, 1), Slot(1, 1), Slot(2, 1)]


def _claim_and_stay(folder: str, ready) -> None:  # a spawned process, killed while it holds a slot
    held = GpuPool(Path(folder), 1).try_claim()
    ready.put(held is not None)
    signal.pause()


@pytest.mark.skipif(not hasattr(signal, "pause"), reason="needs POSIX signals")
def test_a_killed_run_frees_its_gpu(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    p = spawn.Process(target=_claim_and_stay, args=(str(tmp_path), ready))
    p.start()
    assert ready.get(timeout=120)
    pool = GpuPool(tmp_path, gpus=1)
    assert pool.try_claim() is None  # held by the other process
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    held = pool.try_claim()
    assert held and held[0].gpu == 0
    held[1].release()


def test_bad_pools_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one GPU"):
        GpuPool(tmp_path, gpus=0)
    with pytest.raises(ValueError, match="runs_per_gpu"):
        GpuPool(tmp_path, gpus=1, runs_per_gpu=0)


def test_each_study_has_its_own_pool(tmp_path):
    assert pool_folder(tmp_path / "a") != pool_folder(tmp_path / "b")
    assert pool_folder(tmp_path / "a") == pool_folder(tmp_path / "x" / ".." / "a")
