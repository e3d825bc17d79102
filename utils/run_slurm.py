#!/usr/bin/env python3
"""Slurm backend of Kaldi's job dispatch: `run_slurm.py [opts] JOB=1:N LOG COMMAND...`.

Writes one batch script (LOGDIR/q/NAME.sh) holding every task, submits it as one job array
(`--array=a-b%max_jobs_run`) with the config's `command` plus `--parsable --wait`, and waits.
Options map to sbatch flags through --config (default: conf/slurm.conf next to utils/).
Each task writes its own exit status into its log's footer, so failures are read from the
logs, not from accounting (a cluster need not run slurmdbd).  SIGINT/SIGTERM scancel the array.
Tasks asking no GPU run with CUDA_VISIBLE_DEVICES="" (as with run_local.py); the others see
the GPUs Slurm gives them (--gres through the config). With --num_nodes M (the config maps it,
e.g. to --nodes=M --ntasks-per-node=1) each task's command runs once per Slurm task of its
allocation through `srun --kill-on-bad-exit=1`, all writing to the task's one log: the form
multi-node training takes (utils/ddp_launch.py then starts torchrun on each node); a failing
node stops the others, and the task fails.
Exits 0 when every task succeeded, 1 naming every failing log otherwise, 2 on bad usage.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_array import (  # noqa: E402
    TASK_WRAPPER, USAGE, JobArray, UsageError, exit_code_in_log, failure_message, parse_args,
)
from slurm_config import SlurmConfig, SlurmConfigError, read_slurm_config  # noqa: E402
from stop_signals import Interrupted, StopSignals  # noqa: E402

PROG = "run_slurm.py"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "slurm.conf"
_FOOTER_RETRIES = 5  # seconds to wait for footers to show up on a lagging shared file system
_SCANCEL_WAIT_S = 60.0


def submit_command(config: SlurmConfig, script: Path) -> list[str]:
    return [*config.command, "--parsable", "--wait", str(script)]


def _sbatch_path(path: Path, what: str) -> str:
    """`path` double-quoted for an #SBATCH line, whose parser knows no escapes: paths holding
    `"`, a backslash (which also turns off Slurm's %-patterns) or a newline cannot be written."""
    text = str(path)
    if any(c in text for c in '"\\\n'):
        raise UsageError(f"{what} {text!r} holds a double quote, backslash or newline, which #SBATCH "
                         "lines cannot carry; use a directory without them")
    return f'"{text}"'


def batch_script(job: JobArray, config: SlurmConfig, script: Path, out_pattern: Path, cwd: Path) -> str:
    """The job-array batch script: #SBATCH flags, the task wrapper, one case branch per task.
    `out_pattern` is Slurm's per-task output file, with %a for the task id."""
    options = {k: v for k, v in job.options.items() if k not in ("config", "max_jobs_run")}
    array = f"{job.first}-{job.last}" + (f"%{job.max_jobs_run}" if job.max_jobs_run else "")
    head, a, tail = str(out_pattern).rpartition("%a")
    literal_out = Path(head.replace("%", "%%") + a + tail.replace("%", "%%"))  # %a stays Slurm's pattern
    name = re.sub(r"[^\w.+-]", "_", job.name)
    lines = [
        "#!/bin/bash",
        f"# Written by {PROG}; submitted with: {shlex.join(submit_command(config, script))}",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --chdir={_sbatch_path(cwd, 'the working directory')}",
        f"#SBATCH --output={_sbatch_path(literal_out, 'the Slurm output file')}",
        *(f"#SBATCH {shlex.join(flags)}" for flags in config.flags(options)),
        *(["export CUDA_VISIBLE_DEVICES=  # --gpu 0: no GPU, whatever the submitting shell had"]
          if {**config.defaults, **options}.get("gpu", "0") == "0" else []),
        "run_task() {",
        TASK_WRAPPER.rstrip("\n"),
        "}",
        'case "${SLURM_ARRAY_TASK_ID:?not running as a Slurm array task}" in',
        *(f"{t.index}) run_task {shlex.quote(t.log)} {shlex.quote(on_every_node(t.command, job.num_nodes))} "
          f"{job.num_threads} ;;" for t in job.tasks()),
        f'*) echo "{PROG}: no task $SLURM_ARRAY_TASK_ID in $0" >&2; exit 1 ;;',
        "esac",
    ]
    return "\n".join(lines) + "\n"


def on_every_node(command: str, num_nodes: int) -> str:
    """The command as run by each of the allocation's tasks (one per node) when it spans several nodes."""
    if num_nodes == 1:
        return command
    return f"srun --kill-on-bad-exit=1 --export=ALL bash -c {shlex.quote(command)}"


def _job_id(sbatch_stdout: str) -> str | None:
    """`--parsable` prints `ID` or `ID;CLUSTER`."""
    first = sbatch_stdout.strip().split("\n")[0]
    return first.split(";")[0] or None


def _scancel_and_wait(job_id: str) -> None:
    """Cancel the array and wait until squeue no longer lists it (so nothing runs after we exit)."""
    deadline = time.monotonic() + _SCANCEL_WAIT_S
    try:
        subprocess.run(["scancel", job_id], check=False, timeout=_SCANCEL_WAIT_S)
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%i"], capture_output=True,
                               text=True, check=False, timeout=max(deadline - time.monotonic(), 1))
            if (q.returncode == 0 and not q.stdout.strip()) or "Invalid job id" in q.stderr:  # gone or purged
                return
            time.sleep(0.5)
    except subprocess.TimeoutExpired:
        pass
    print(f"{PROG}: cannot confirm that job {job_id} left squeue {_SCANCEL_WAIT_S:.0f} s after scancel",
          file=sys.stderr)


def submit_and_wait(command: list[str], stop: StopSignals) -> tuple[str | None, int]:
    """Run `sbatch --parsable --wait`; return (job id, sbatch's exit status).
    On a stop signal: scancel the array (once its id is known) and re-raise Interrupted."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    job_id = None
    try:
        with stop.interruptible():
            job_id = _job_id(proc.stdout.readline())
            proc.communicate()
    except Interrupted:
        stop.ignore()
        proc.kill()  # sbatch --wait holds nothing to clean up; it may sit out SIGTERM
        rest = proc.communicate()[0]
        job_id = job_id or _job_id(rest)
        if job_id:
            _scancel_and_wait(job_id)
            print(f"{PROG}: cancelled Slurm job {job_id}", file=sys.stderr)
        raise
    return job_id, proc.returncode


def task_output(out_pattern: Path, index: int) -> Path:
    """Slurm's own output file of one array task (its messages about kills and time limits)."""
    return Path(str(out_pattern).replace("%a", str(index)))


def collect_failures(job: JobArray, out_pattern: Path) -> list[tuple[str, str]]:
    """(log, reason) for every task whose log does not end with `# Ended (code 0)`."""
    for attempt in range(_FOOTER_RETRIES + 1):
        codes = {t.log: exit_code_in_log(t.log) for t in job.tasks()}
        if None not in codes.values() or attempt == _FOOTER_RETRIES:
            break
        time.sleep(1)
    failures = []
    for t in job.tasks():
        code = codes[t.log]
        if code is None:
            failures.append((t.log, "no exit status: killed, timed out or never started? "
                                    f"see {task_output(out_pattern, t.index)}"))
        elif code != 0:
            failures.append((t.log, f"code {code}"))
    return failures


def main(argv: list[str]) -> int:
    try:
        job = parse_args(argv)
        config = read_slurm_config(job.options.get("config", DEFAULT_CONFIG))
        qdir = job.log_dir / "q"
        script, out_pattern = qdir / f"{job.name}.sh", (qdir / f"{job.name}.%a.out").absolute()
        text = batch_script(job, config, script, out_pattern, Path.cwd())
    except (UsageError, SlurmConfigError) as e:
        extra = f"\n  --config FILE (default {DEFAULT_CONFIG}); other options as the config maps them"
        print(f"{PROG}: {e}\n{USAGE.format(prog=PROG, extra=extra)}", file=sys.stderr)
        return 2
    qdir.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    for t in job.tasks():  # a stale footer must not pass for this run's status
        Path(t.log).unlink(missing_ok=True)
        task_output(out_pattern, t.index).unlink(missing_ok=True)
    stop = StopSignals()
    try:
        job_id, status = submit_and_wait(submit_command(config, script), stop)
    except Interrupted as e:
        print(f"{PROG}: stopped by {e} ({job.log})", file=sys.stderr)
        return 128 + e.signum
    except FileNotFoundError as e:
        print(f"{PROG}: cannot run {config.command[0]!r} (from {config.path}): {e}", file=sys.stderr)
        return 1
    if job_id is None:
        print(f"{PROG}: submission of {script} failed (exit {status})", file=sys.stderr)
        return 1
    failures = collect_failures(job, out_pattern)
    if failures:
        print(failure_message(PROG, failures, len(job.tasks())), file=sys.stderr)
        return 1
    if status != 0:
        print(f"{PROG}: every log of job {job_id} reports success but sbatch exited {status}; "
              f"see {qdir}/{job.name}.*.out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
