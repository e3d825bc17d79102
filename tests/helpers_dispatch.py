"""Running the dispatchers from tests: through cmd.sh as recipes do, and reading their logs."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def dispatch(backend: str, args: str, cwd: Path, env: dict[str, str] | None = None,
             prelude: str = "") -> subprocess.CompletedProcess:
    """`source cmd.sh && $train_cmd ARGS` with cmd_backend=BACKEND, in bash, from `cwd`
    (`prelude`: bash run before, e.g. to set the variables ARGS uses)."""
    env = {**(env or os.environ), "cmd_backend": backend}
    return subprocess.run(["bash", "-c", f'set -eu; . "{REPO}/cmd.sh"; {prelude}\n$train_cmd {args}'],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def header(log: Path) -> list[str]:
    """A log's `#` header lines, up to the lone `#` that ends it."""
    lines = log.read_text().splitlines()
    return lines[:lines.index("#")]


def body(log: Path) -> list[str]:
    """A log's lines without the dispatcher's `#` header and footer."""
    return [line for line in log.read_text().splitlines() if not line.startswith("#")]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
