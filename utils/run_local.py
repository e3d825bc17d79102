#!/usr/bin/env python3
"""Local backend of Kaldi's job dispatch: `run_local.py [opts] JOB=1:N LOG COMMAND...`.

Runs the tasks on this machine, at most --max_jobs_run at a time (default: the number of
CPUs), each in its own process group so that SIGINT/SIGTERM can stop everything still
running.  A task asking `--gpu k` gets k GPUs of its own from the machine's pool (see
local_gpus.py) through CUDA_VISIBLE_DEVICES and waits while they are all taken; a `--gpu 0`
task gets CUDA_VISIBLE_DEVICES="" so that it never lands on a GPU by accident.  --mem and
--time are accepted (recipes pass them to any backend) and ignored; --num_nodes must be 1.
Exits 0 when every task succeeded, 1 naming every failing log (or when the pool can never
hold one task's GPUs: then nothing starts), 2 on bad usage.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_array import COMMON_OPTIONS, TASK_WRAPPER, USAGE, JobArray, Task, UsageError, failure_message, parse_args  # noqa: E402
from local_gpus import GpuAllocator, GpuPool, GpuRequestError, visible_gpus  # noqa: E402
from stop_signals import Interrupted, StopSignals  # noqa: E402

PROG = "run_local.py"
_GRACE_S = 5.0  # between SIGTERM and SIGKILL when cancelling


def _start(task: Task, threads: int, gpus: tuple[str, ...]) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", TASK_WRAPPER, "run_task", task.log, task.command, str(threads)],
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)},
        start_new_session=True,
    )


def _cancel(running: dict[subprocess.Popen, tuple[Task, tuple[str, ...]]]) -> None:
    """SIGTERM every running task's process group, SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in running:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + _GRACE_S
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)


def run(job: JobArray, stop: StopSignals, pool: GpuPool) -> list[tuple[str, str]]:
    """Run every task of `job`, each on `job.gpu` GPUs of `pool` that no other running task holds;
    return (log, reason) for each one that failed."""
    pending = deque(job.tasks())
    cap = job.max_jobs_run or os.cpu_count() or 1
    gpus = GpuAllocator(pool, job.gpu)
    running: dict[subprocess.Popen, tuple[Task, tuple[str, ...]]] = {}
    failures: list[tuple[str, str]] = []
    try:
        while pending or running:
            stop.check()
            while pending and len(running) < cap and gpus.can_take():
                task, held = pending.popleft(), gpus.take()
                running[_start(task, job.num_threads, held)] = (task, held)
            with stop.interruptible():
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # until a task ends; poll() reaps it
            for proc in [p for p in running if p.poll() is not None]:
                task, held = running.pop(proc)
                gpus.give_back(held)
                if proc.returncode != 0:
                    failures.append((task.log, f"code {proc.returncode}"))
    except Interrupted:
        stop.ignore()
        _cancel(running)
        raise
    return failures


def main(argv: list[str]) -> int:
    try:
        job = parse_args(argv)
        job.check_options(set(COMMON_OPTIONS), "the local backend knows " + " ".join(COMMON_OPTIONS))
        if job.num_nodes > 1:
            raise UsageError(f"--num_nodes {job.num_nodes}: the local backend runs on this machine only; "
                             "use cmd_backend=slurm for several nodes, or --num_nodes 1")
    except UsageError as e:
        print(f"{PROG}: {e}\n{USAGE.format(prog=PROG, extra='')}", file=sys.stderr)
        return 2
    pool = GpuPool((), "no GPU asked for")
    if job.gpu:
        try:
            pool = visible_gpus()
            pool.check_request(job.gpu, PROG)
        except GpuRequestError as e:
            print(e, file=sys.stderr)
            return 1
    try:
        failures = run(job, StopSignals(), pool)
    except Interrupted as e:
        print(f"{PROG}: stopped by {e}; killed the running jobs of {job.log}", file=sys.stderr)
        return 128 + e.signum
    if failures:
        print(failure_message(PROG, failures, len(job.tasks())), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
