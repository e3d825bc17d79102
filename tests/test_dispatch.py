"""Job dispatch with Kaldi's interface: utils/run_local.py, utils/run_slurm.py (on a private
Slurm), cmd.sh and utils/parse_options.sh."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_dispatch import REPO, body, dispatch, header, wait_for
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (pytest fixture)

sys.path.insert(0, str(REPO / "utils"))
import job_array  # noqa: E402
import run_slurm  # noqa: E402
from slurm_config import SlurmConfigError, read_slurm_config  # noqa: E402


# ---------------------------------------------------------------- command-line parsing

def test_parse_array_options_and_substitution():
    job = job_array.parse_args(["--gpu", "1", "--num-threads=4", "--max_jobs_run", "2",
                                "JOB=3:5", "exp/log/x.JOB.log", "prog", "in.JOB", "a b", ""])
    assert job.options == {"gpu": "1", "num_threads": "4", "max_jobs_run": "2"}
    assert (job.variable, job.first, job.last, job.num_threads, job.max_jobs_run) == ("JOB", 3, 5, 4, 2)
    assert job.command == "prog in.JOB 'a b' ''"
    assert [(t.index, t.log, t.command) for t in job.tasks()] == [
        (i, f"exp/log/x.{i}.log", f"prog in.{i} 'a b' ''") for i in (3, 4, 5)]
    assert (job.name, job.log_dir) == ("x", Path("exp/log"))


def test_parse_single_job_and_shell_command_line():
    job = job_array.parse_args(["exp/log/prep.log", "echo JOB | tr a b > out"])
    assert job.variable is None
    assert [(t.log, t.command) for t in job.tasks()] == [("exp/log/prep.log", "echo JOB | tr a b > out")]
    other = job_array.parse_args(["SPLIT=2", "exp/SPLIT/y.log", "run", "SPLIT"])
    assert [(t.log, t.command) for t in other.tasks()] == [("exp/2/y.log", "run 2")]
    assert (other.name, other.log_dir) == ("y", Path("exp"))


@pytest.mark.parametrize("argv, message", [
    (["JOB=1:3", "exp/log/x.log", "true"], "share one log"),
    (["JOB=4:2", "x.JOB.log", "true"], "empty job range"),
    (["JOB=1:2", "x.JOB.log"], "a log file and a command"),
    (["--max_jobs_run", "0", "x.log", "true"], "integer >= 1"),
    (["--gpu", "x.log", "true"], "integer >= 0"),
    (["--mem"], "needs a value"),
])
def test_parse_errors(argv, message):
    with pytest.raises(job_array.UsageError, match=message):
        job_array.parse_args(argv)


def test_exit_code_in_log(tmp_path):
    log = tmp_path / "x.log"
    assert job_array.exit_code_in_log(log) is None
    log.write_text("# cmd\n# Started at now\n#\nout\n")
    assert job_array.exit_code_in_log(log) is None
    log.write_text(log.read_text() + "# Accounting: time=1 threads=1\n# Ended (code 3) at now\n")
    assert job_array.exit_code_in_log(log) == 3


# ---------------------------------------------------------------- local backend

def test_local_cmd_sh_writes_one_log_per_job(tmp_path):
    r = dispatch("local", "JOB=1:3 logs/log.JOB.log echo JOB", tmp_path)
    assert r.returncode == 0, r.stderr
    for i in (1, 2, 3):
        log = tmp_path / f"logs/log.{i}.log"
        head = header(log)
        assert head[0] == f"# echo {i}" and head[1].startswith("# Started at ")
        assert head[2:] == ["# CUDA_VISIBLE_DEVICES="]  # a --gpu 0 job sees no GPU
        assert body(log) == [str(i)]
        lines = log.read_text().splitlines()
        assert re.fullmatch(r"# Accounting: time=\d+ threads=1", lines[-2])
        assert lines[-1].startswith("# Ended (code 0) at ")


def test_local_pipes_and_redirections(tmp_path):
    r = dispatch("local", "--num_threads 3 JOB=1:2 logs/p.JOB.log 'echo xJOB | tr x y > out.JOB'", tmp_path)
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / f"out.{i}").read_text() for i in (1, 2)] == ["y1\n", "y2\n"]
    assert (tmp_path / "logs/p.1.log").read_text().splitlines()[-2].endswith("threads=3")


def _intervals(tmp_path: Path, n: int) -> list[tuple[float, float]]:
    return [tuple(map(float, (tmp_path / f"t.{i}").read_text().split())) for i in range(1, n + 1)]


def test_local_jobs_run_in_parallel_up_to_the_cap(tmp_path):
    job = "'s=$(date +%s.%N); sleep {}; echo $s $(date +%s.%N) > t.JOB'"
    assert dispatch("local", f"--max_jobs_run 3 JOB=1:3 l/a.JOB.log {job.format(1)}", tmp_path).returncode == 0
    spans = _intervals(tmp_path, 3)
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"jobs did not overlap: {spans}"
    assert dispatch("local", f"--max-jobs-run 1 JOB=1:3 l/b.JOB.log {job.format(0.2)}", tmp_path).returncode == 0
    spans = sorted(_intervals(tmp_path, 3))
    assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:])), f"cap 1 overlapped: {spans}"


def test_local_failure_names_every_failing_log(tmp_path):
    r = dispatch("local", "JOB=1:4 logs/f.JOB.log '[ JOB -ne 2 ] && [ JOB -ne 4 ]'", tmp_path)
    assert r.returncode == 1
    assert "2 / 4 jobs failed" in r.stderr
    assert "logs/f.2.log (code 1)" in r.stderr and "logs/f.4.log (code 1)" in r.stderr
    assert "f.1.log" not in r.stderr and "f.3.log" not in r.stderr
    assert (tmp_path / "logs/f.3.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")


def test_local_usage_errors(tmp_path):
    r = dispatch("local", "--bogus 1 x.log true", tmp_path)
    assert r.returncode == 2 and "--bogus" in r.stderr and "usage:" in r.stderr


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_local_sigterm_kills_running_jobs(tmp_path):
    cmd = [str(REPO / "utils/run_local.py"), "--max_jobs_run", "2", "JOB=1:3", "logs/c.JOB.log",
           "sleep 30 & echo $! > pid.JOB; wait"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    pid_files = [tmp_path / "pid.1", tmp_path / "pid.2"]
    wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), "two running jobs")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert [_state(int(p.read_text())) in ("gone", "Z") for p in pid_files] == [True, True]
    assert "stopped by SIGTERM" in proc.communicate(timeout=5)[1]
    assert not (tmp_path / "logs/c.3.log").exists(), "a pending job was started after the signal"


# ---------------------------------------------------------------- Slurm: config and batch script

def test_slurm_options_map_to_sbatch_flags(tmp_path):
    job = job_array.parse_args(["--gpu", "2", "--mem", "16G", "--num_threads", "4", "--time", "4:00:00",
                                "--max_jobs_run", "3", "JOB=1:5", "exp/log/train.JOB.log", "train.py", "JOB"])
    config = read_slurm_config(REPO / "conf/slurm.conf")
    script = run_slurm.batch_script(job, config, tmp_path / "q/train.sh", tmp_path / "q/train.%a.out", tmp_path)
    lines = script.splitlines()
    for flag in ("--gres=gpu:2", "--mem=16G", "--cpus-per-task=4", "--time=4:00:00", "--array=1-5%3",
                 "--job-name=train", f'--output="{tmp_path}/q/train.%a.out"', f'--chdir="{tmp_path}"'):
        assert f"#SBATCH {flag}" in lines, flag
    assert "3) run_task exp/log/train.3.log 'train.py 3' 4 ;;" in lines
    assert "sbatch --export=ALL --parsable --wait" in lines[1]
    bare = run_slurm.batch_script(job_array.parse_args(["x.log", "true"]), config, tmp_path / "x.sh",
                                  tmp_path / "x.%a.out", tmp_path)
    assert "gres" not in bare and "--mem" not in bare and "--cpus-per-task" not in bare  # gpu=0 default
    cpu_only = "export CUDA_VISIBLE_DEVICES=  # --gpu 0: no GPU, whatever the submitting shell had"
    assert cpu_only in bare.splitlines() and cpu_only not in lines


def test_slurm_config_rules_and_errors(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("command sbatch --export=PATH  # submit\noption gpu=0 -p cpu\n"
                    "option gpu=* -p gpu --gres=gpu:$0\ndefault gpu=0\noption mem=* --mem=$0\n")
    config = read_slurm_config(conf)
    assert config.command == ["sbatch", "--export=PATH"]
    assert config.flags({}) == [["-p", "cpu"]]
    assert config.flags({"gpu": "2", "mem": "1G"}) == [["-p", "gpu", "--gres=gpu:2"], ["--mem=1G"]]
    with pytest.raises(SlurmConfigError, match="no `option time=...` rule"):
        config.flags({"time": "1:00"})
    conf.write_text("command sbatch\noption gpu 2\n")
    with pytest.raises(SlurmConfigError, match=rf"{conf}:2: expected NAME=VALUE"):
        read_slurm_config(conf)
    conf.write_text("option gpu=* --gres=gpu:$0\n")
    with pytest.raises(SlurmConfigError, match="no `command` line"):
        read_slurm_config(conf)


# ---------------------------------------------------------------- Slurm: a real cluster

def test_slurm_cmd_sh_writes_one_log_per_job(slurm_cluster: SlurmCluster, tmp_path):
    env = {**slurm_cluster.env, "DISPATCH_TEST_VAR": "exported",  # as path.sh's settings must be
           "CUDA_VISIBLE_DEVICES": "0,1"}  # but a --gpu 0 job must not see the submitter's GPUs
    r = dispatch("slurm", "--mem 100M JOB=1:3 logs/log.JOB.log 'echo JOB $DISPATCH_TEST_VAR'", tmp_path, env)
    assert r.returncode == 0, r.stderr + slurm_cluster.logs()
    assert [body(tmp_path / f"logs/log.{i}.log") for i in (1, 2, 3)] == [[f"{i} exported"] for i in (1, 2, 3)]
    assert (tmp_path / "logs/log.2.log").read_text().splitlines()[-1].startswith("# Ended (code 0) at ")
    assert "# CUDA_VISIBLE_DEVICES=" in header(tmp_path / "logs/log.2.log")
    assert "#SBATCH --mem=100M" in (tmp_path / "logs/q/log.sh").read_text().splitlines()


def test_slurm_failure_names_the_failing_log(slurm_cluster: SlurmCluster, tmp_path):
    r = dispatch("slurm", "JOB=1:3 logs/f.JOB.log 'echo JOB; [ JOB -ne 2 ]'", tmp_path, slurm_cluster.env)
    assert r.returncode == 1
    assert "1 / 3 jobs failed" in r.stderr and "logs/f.2.log (code 1)" in r.stderr
    assert "f.1.log" not in r.stderr and "f.3.log" not in r.stderr


def test_slurm_rejected_submission_is_an_error(slurm_cluster: SlurmCluster, tmp_path):
    r = dispatch("slurm", "--mem 100000T logs/big.log true", tmp_path, slurm_cluster.env)
    assert r.returncode == 1 and "submission of logs/q/big.sh failed" in r.stderr


def test_slurm_sigterm_scancels_the_array(slurm_cluster: SlurmCluster, tmp_path):
    cmd = [str(REPO / "utils/run_slurm.py"), "JOB=1:2", "logs/c.JOB.log", "sleep 30"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=slurm_cluster.env, stderr=subprocess.PIPE, text=True)
    logs = [tmp_path / f"logs/c.{i}.log" for i in (1, 2)]
    wait_for(lambda: all(log.exists() for log in logs), "both array tasks to start")
    assert "RUNNING" in slurm_cluster.squeue()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert "cancelled Slurm job" in proc.communicate(timeout=5)[1]
    assert slurm_cluster.squeue() == ""


# ---------------------------------------------------------------- parse_options.sh

PARSE_OPTIONS_SCRIPT = """set -euo pipefail
nj=4
use_gpu=false
data_dir=
help_message="Usage: demo.sh [--nj N] [--use-gpu true|false] [--data-dir DIR] ARGS"
. {utils}/parse_options.sh
echo "nj=$nj use_gpu=$use_gpu data_dir=$data_dir args=$*"
"""


@pytest.fixture
def demo(tmp_path):
    script = tmp_path / "demo.sh"
    script.write_text(PARSE_OPTIONS_SCRIPT.format(utils=REPO / "utils"))
    (tmp_path / "opts.sh").write_text("nj=7\ndata_dir=from_config\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True)
    return run


@pytest.mark.parametrize("args, stdout", [
    ((), "nj=4 use_gpu=false data_dir= args="),
    (("--nj", "8", "--use-gpu", "true", "a", "--nj"), "nj=8 use_gpu=true data_dir= args=a --nj"),
    (("--data_dir=x y", "--", "--nj"), "nj=4 use_gpu=false data_dir=x y args=--nj"),
    (("--data-dir", "$(echo hi)"), "nj=4 use_gpu=false data_dir=$(echo hi) args="),
    (("--config", "opts.sh"), "nj=7 use_gpu=false data_dir=from_config args="),
    (("--nj", "9", "--config", "opts.sh", "z"), "nj=9 use_gpu=false data_dir=from_config args=z"),
])
def test_parse_options_sets_declared_variables(demo, args, stdout):
    r = demo(*args)
    assert (r.returncode, r.stdout.strip()) == (0, stdout), r.stderr


@pytest.mark.parametrize("args, message", [
    (("--jobs", "3"), "invalid option --jobs"),
    (("--use-gpu", "yes"), "expects true or false, got 'yes'"),
    (("--nj",), "option --nj needs a value"),
    (("--config", "missing.sh"), "cannot read config file 'missing.sh'"),
])
def test_parse_options_rejects_bad_options(demo, args, message):
    r = demo(*args)
    assert r.returncode == 1 and message in r.stderr and r.stdout == ""


def test_parse_options_help(demo):
    r = demo("--nj", "2", "--help")
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr.strip() == "Usage: demo.sh [--nj N] [--use-gpu true|false] [--data-dir DIR] ARGS"
