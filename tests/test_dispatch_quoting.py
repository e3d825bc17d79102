"""Command words reach the job unchanged on both backends: a corpus path holding shell syntax
is data, never code (issue 9), while operators standing alone and single-word shell command
lines keep working (Kaldi's conventions)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_dispatch import REPO, body, dispatch
from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

sys.path.insert(0, str(REPO / "utils"))
import job_array  # noqa: E402
import run_slurm  # noqa: E402
from slurm_config import read_slurm_config  # noqa: E402

# Directory names holding what a shell would act on.  The dispatchers used to quote only words
# with whitespace: the second name then broke the command, the third ran `touch PWNED`.
NAMES = ["cor pus (v2) 'a' \"b\" $HOME `id` ;touch PWNED; * & x",
         "x;touch${IFS}PWNED;(v2)'a'\"b\"$HOME`id`*&y",
         "z;touch${IFS}PWNED;echo"]


@pytest.fixture(params=NAMES, ids=["spaced", "unspaced", "touch"])
def corpus(request, tmp_path: Path) -> Path:
    """tmp_path/NAME/in.1 and in.2, each holding one line that names it."""
    root = tmp_path / request.param
    root.mkdir()
    for i in (1, 2):
        (root / f"in.{i}").write_text(f"line {i}\n")
    return root


def _run(line: str, cwd: Path) -> list[str]:
    """The lines bash prints running `line` in `cwd`, checking that nothing was executed."""
    r = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True)
    assert not list(cwd.rglob("PWNED")), f"a word was run as shell code: {line}"
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_every_word_reaches_bash_unchanged_but_operators(tmp_path):
    (tmp_path / "glob-bait").touch()
    words = [*NAMES, "(", ")", ">out", "a|b", "2>&1x", "&&&", "*", "~", "", "-", "#x", "a\\nb", "X=$(id)", "X=~", "X="]
    line = job_array.shell_command(["printf", "[%s]\\n", *words, "2>&1", "|", "cat", ">", "out", "&&",
                                    "cat", "out", ";", "echo", "done", "&", "wait"])
    assert _run(line, tmp_path) == [f"[{w}]" for w in words] + ["done"]
    assert job_array.shell_command(["a | b > c"]) == "a | b > c"  # one word: a shell command line


def test_leading_assignments_still_assign(tmp_path):
    line = job_array.shell_command(["X=a b;c`id`", "Y=1", "sh", "-c", 'echo "$X|$Y"'])
    assert _run(line, tmp_path) == ["a b;c`id`|1"]


@pytest.mark.parametrize("word", ["|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>>", "2>&1", ">&2",
                                  "&>", "&>>", "|&", ">|", "0<&-"])
def test_shell_operators_stand_alone(word):
    assert job_array.shell_command(["a", word, "b"]) == f"a {word} b"


@pytest.mark.parametrize("name", NAMES)
def test_job_is_substituted_inside_quoted_words(name, tmp_path):
    """llm.sh's shape (`env VAR=N prog ... --name feats.JOB`) with a nasty path: JOB replaced in each task."""
    words = ["env", "OMP_NUM_THREADS=2", "sh", "-c", 'printf "%s\\n" "$OMP_NUM_THREADS" "$@"', "sh",
             f"/data/{name}/keys.JOB", "--name", "feats.JOB"]
    job = job_array.parse_args(["JOB=1:2", "l/x.JOB.log", *words])
    assert [_run(t.command, tmp_path) for t in job.tasks()] == [
        ["2", f"/data/{name}/keys.{i}", "--name", f"feats.{i}"] for i in (1, 2)]


def test_a_path_holding_the_variable_name_needs_another_name():
    """Kaldi's known limitation, kept: JOB is replaced wherever it occurs; SPLIT=1:N avoids it."""
    job = job_array.parse_args(["JOB=1:2", "l/x.JOB.log", "cat", "/data/JOBS/in.JOB"])
    assert job.tasks()[1].command == "cat /data/2S/in.2"
    job = job_array.parse_args(["SPLIT=1:2", "l/x.SPLIT.log", "cat", "/data/JOBS/in.SPLIT"])
    assert job.tasks()[1].command == "cat /data/JOBS/in.2"


BACKENDS = ["local", "slurm"]


def _env(backend: str, request: pytest.FixtureRequest) -> dict[str, str] | None:
    return request.getfixturevalue("slurm_cluster").env if backend == "slurm" else None


@pytest.mark.parametrize("backend", BACKENDS)
def test_nasty_paths_are_data_not_code(backend, corpus, tmp_path, request):
    """A multi-word command as recipes write it ("${dir}/in.JOB"), plus Kaldi's `\\|` idiom."""
    r = dispatch(backend, 'JOB=1:2 logs/c.JOB.log cat "${dir}/in.JOB" \\| tr a-z A-Z', tmp_path,
                 _env(backend, request), prelude=f"dir={shlex.quote(str(corpus))}")
    assert not list(tmp_path.rglob("PWNED")), "a path was run as shell code"
    assert r.returncode == 0, r.stderr
    assert [body(tmp_path / f"logs/c.{i}.log") for i in (1, 2)] == [["LINE 1"], ["LINE 2"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nasty_working_and_log_directories(backend, tmp_path, request):
    """Run from, and log into, directories named with shell syntax (Slurm's #SBATCH lines
    cannot carry a double quote, so the name here has none)."""
    cwd = tmp_path / NAMES[0].replace('"', "")
    cwd.mkdir()
    (cwd / "in.1").write_text("line 1\n")
    r = dispatch(backend, f"{shlex.quote(cwd.name + '/log (x).log')} cat in.1", cwd, _env(backend, request))
    assert r.returncode == 0, r.stderr
    assert body(cwd / cwd.name / "log (x).log") == ["line 1"]


def test_slurm_refuses_a_working_directory_it_cannot_name(tmp_path):
    job = job_array.parse_args(["x.log", "true"])
    with pytest.raises(job_array.UsageError, match="double quote, backslash or newline"):
        run_slurm.batch_script(job, read_slurm_config(REPO / "conf/slurm.conf"), tmp_path / "x.sh",
                               tmp_path / "x.%a.out", tmp_path / 'a"b')
