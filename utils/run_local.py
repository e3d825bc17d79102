#!/usr/bin/env python3
"""Local backend of Kaldi's job dispatch: `run_local.py [opts] JOB=1:N LOG COMMAND...`.

Runs the tasks on this machine, at most --max_jobs_run at a time (default: the number of
CPUs), each in its own process group so that SIGINT/SIGTERM can stop everything still
running.  --gpu, --mem and --time are accepted (recipes pass them to any backend) and ignored.
Exits 0 when every task succeeded, 1 naming every failing log otherwise, 2 on bad usage.
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
from stop_signals import Interrupted, StopSignals  # noqa: E402

PROG = "run_local.py"
_GRACE_S = 5.0  # between SIGTERM and SIGKILL when cancelling


def _start(task: Task, threads: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", TASK_WRAPPER, "run_task", task.log, task.command, str(threads)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _cancel(running: dict[subprocess.Popen, Task]) -> None:
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


def run(job: JobArray, stop: StopSignals) -> list[tuple[str, str]]:
    """Run every task of `job`; return (log, reason) for each one that failed."""
    pending = deque(job.tasks())
    cap = job.max_jobs_run or os.cpu_count() or 1
    running: dict[subprocess.Popen, Task] = {}
    failures: list[tuple[str, str]] = []
    try:
        while pending or running:
            stop.check()
            while pending and len(running) < cap:
                task = pending.popleft()
                running[_start(task, job.num_threads)] = task
            with stop.interruptible():
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # until a task ends; poll() reaps it
            for proc in [p for p in running if p.poll() is not None]:
                task = running.pop(proc)
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
    except UsageError as e:
        print(f"{PROG}: {e}\n{USAGE.format(prog=PROG, extra='')}", file=sys.stderr)
        return 2
    try:
        failures = run(job, StopSignals())
    except Interrupted as e:
        print(f"{PROG}: stopped by {e}; killed the running jobs of {job.log}", file=sys.stderr)
        return 128 + e.signum
    if failures:
        print(failure_message(PROG, failures, len(job.tasks())), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
