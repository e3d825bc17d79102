"""Kaldi's job-array command line, shared by the local and the Slurm dispatcher.

`[--opt value ...] [JOB=1:N] LOG COMMAND...` is parsed here once, and every task runs
through the same bash wrapper (TASK_WRAPPER), so both backends substitute JOB the same way
and write logs in the format of Kaldi's run.pl: a `# command` / `# Started at` header and a
`# Accounting: time=... threads=...` / `# Ended (code N) at ...` footer.

Command words reach the job unchanged: given as several words, each one is quoted for bash
unless it is a shell operator standing alone (`|`, `&&`, `;`, `>`, `2>&1`...: Kaldi's `\\|`
idiom), so a path holding spaces, `(`, `;` or `$` is data, never code.  A single word is an
explicit shell command line.  JOB (the array variable) is replaced wherever its text occurs,
inside quoted words too, as in Kaldi: a path that itself holds the text JOB is changed as well,
so pick another variable name (`SPLIT=1:N`) for commands on such paths.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# Options every backend accepts; a backend may accept more (Slurm: whatever its config maps).
COMMON_OPTIONS = ("gpu", "mem", "num_threads", "time", "max_jobs_run", "num_nodes")
_COUNT_OPTIONS = {"gpu": 0, "num_threads": 1, "max_jobs_run": 1, "num_nodes": 1}  # option -> smallest value
_RANGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)(?::(\d+))?$")
_FOOTER = re.compile(r"^# Ended \(code (\d+)\) at ")
# A word that bash would read as a control or redirection operator, were it left unquoted.
_OPERATOR = re.compile(r"\|\||&&|;|&|\||\|&|\d*(>|>>|>\||<)|&>>?|\d*[<>]&(\d+|-)")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*=)")

USAGE = """\
usage: {prog} [options] [JOB=1:N] LOG COMMAND [ARGS...]
  Runs COMMAND (once, or once per JOB=a..b with JOB replaced by the job number in LOG and
  COMMAND), writing each job's output to LOG.  A single COMMAND argument is a shell command
  line (pipes and redirections work); several arguments are each passed unchanged, except
  operators standing alone as words (| || && ; & > >> < 2> 2>&1 &> |& ...).
options (as --name value, --name=value, '-' or '_' alike):
  --gpu N  --mem 16G  --num_threads N  --time 4:00:00  --max_jobs_run N
  --num_nodes M (Slurm only: each job runs COMMAND once on each of M nodes, --gpu N GPUs each){extra}"""

# Runs one task: bash TASK_WRAPPER LOG COMMAND THREADS.  Exits with the command's status.
# The header records the GPUs the task may see (CUDA_VISIBLE_DEVICES) whenever that is set.
TASK_WRAPPER = r"""log=$1 command=$2 threads=$3
mkdir -p -- "$(dirname -- "$log")" || exit 1
{ printf '# %s\n# Started at %s\n' "$command" "$(date)"
  [ -n "${CUDA_VISIBLE_DEVICES+set}" ] && printf '# CUDA_VISIBLE_DEVICES=%s\n' "$CUDA_VISIBLE_DEVICES"
  echo '#'; } > "$log" || exit 1
SECONDS=0
bash -c "$command" >> "$log" 2>&1 < /dev/null
code=$?
printf '# Accounting: time=%d threads=%s\n# Ended (code %d) at %s\n' \
    "$SECONDS" "$threads" "$code" "$(date)" >> "$log"
exit "$code"
"""


class UsageError(ValueError):
    """A malformed dispatcher command line."""


@dataclass(frozen=True)
class Task:
    """One member of the array, with the job variable already substituted."""

    index: int
    log: str
    command: str


@dataclass(frozen=True)
class JobArray:
    """A parsed dispatcher command line."""

    options: dict[str, str]
    variable: str | None  # e.g. "JOB"; None for the non-array form `LOG COMMAND`
    first: int
    last: int
    log: str
    words: tuple[str, ...]  # the command as given: one shell command line, or several words

    @property
    def command(self) -> str:
        """The command line bash runs (JOB not substituted)."""
        return shell_command(self.words)

    @property
    def gpu(self) -> int:
        """GPUs each task asks for (--gpu, default 0)."""
        return int(self.options.get("gpu", 0))

    @property
    def num_nodes(self) -> int:
        """Nodes each task spans (--num_nodes, default 1): the command runs once on each."""
        return int(self.options.get("num_nodes", 1))

    @property
    def num_threads(self) -> int:
        return int(self.options.get("num_threads", 1))

    @property
    def max_jobs_run(self) -> int | None:
        value = self.options.get("max_jobs_run")
        return None if value is None else int(value)

    @property
    def name(self) -> str:
        """The log's base name without the job variable and `.log`: `exp/log/x.JOB.log` -> `x`."""
        base = Path(self.log).name
        if self.variable:
            base = re.sub(rf"[._-]?{re.escape(self.variable)}", "", base)
        return base.removesuffix(".log") or "job"

    @property
    def log_dir(self) -> Path:
        """The directory holding every task's log (the part of LOG before the job variable)."""
        head = self.log.split(self.variable)[0] if self.variable else self.log
        return Path(head) if head.endswith("/") else Path(head).parent

    def tasks(self) -> list[Task]:
        if self.variable is None:
            return [Task(self.first, self.log, self.command)]
        var = self.variable
        return [
            Task(i, self.log.replace(var, str(i)), shell_command([w.replace(var, str(i)) for w in self.words]))
            for i in range(self.first, self.last + 1)
        ]

    def check_options(self, allowed: set[str], where: str) -> None:
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join('--' + u for u in unknown)} ({where})")


def _quote(word: str) -> str:
    """`word` quoted for bash; in NAME=VALUE only VALUE, so that a leading `VAR=x prog` still
    assigns (as an argument, `NAME='v'` and `'NAME=v'` are the same word)."""
    if _OPERATOR.fullmatch(word):
        return word
    if m := _ASSIGNMENT.match(word):
        return m.group(1) + shlex.quote(word[m.end():])
    return shlex.quote(word)


def shell_command(words: list[str] | tuple[str, ...]) -> str:
    """The command line as bash will run it: one word is taken verbatim (a shell command line);
    several are joined with every word quoted except operators standing alone (`|`, `2>&1`...)."""
    if len(words) == 1:
        return words[0]
    return " ".join(_quote(w) for w in words)


def parse_args(argv: list[str]) -> JobArray:
    """Parse `[--opt value ...] [VAR=a:b] LOG COMMAND...`; raise UsageError naming what is wrong."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        name, eq, value = argv[i][2:].partition("=")
        name = name.replace("-", "_")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"bad option {argv[i]!r}")
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"option --{name} needs a value")
            value = argv[i + 1]
            i += 1
        if name in _COUNT_OPTIONS and not (value.isdigit() and int(value) >= _COUNT_OPTIONS[name]):
            raise UsageError(f"--{name} needs an integer >= {_COUNT_OPTIONS[name]}, got {value!r}")
        options[name] = value
        i += 1
    rest = argv[i:]
    variable, first, last = None, 1, 1
    if rest and (m := _RANGE.match(rest[0])):
        variable, first = m.group(1), int(m.group(2))
        last = int(m.group(3)) if m.group(3) is not None else first
        if last < first:
            raise UsageError(f"empty job range {rest[0]!r}")
        rest = rest[1:]
    if len(rest) < 2:
        raise UsageError("expected a log file and a command")
    log, words = rest[0], rest[1:]
    if variable and last > first and variable not in log:
        raise UsageError(f"{last - first + 1} jobs would share one log {log!r}: put {variable} in its name")
    return JobArray(options, variable, first, last, log, tuple(words))


def exit_code_in_log(log: str | Path) -> int | None:
    """The `# Ended (code N)` status the task wrote into its log, or None (no log / no footer)."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()[-3:]
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if m := _FOOTER.match(line):
            return int(m.group(1))
    return None


def failure_message(prog: str, failures: list[tuple[str, str]], total: int) -> str:
    """`prog: 2 / 10 jobs failed:` followed by one `  LOG (reason)` line per failure."""
    lines = [f"{prog}: {len(failures)} / {total} job{'s' if total > 1 else ''} failed:"]
    lines += [f"  {log} ({why})" for log, why in failures]
    return "\n".join(lines)
