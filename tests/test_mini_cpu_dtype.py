"""The mini recipe's dtype options (local/cpu_dtype.sh): auto follows the CPU, a bad value stops the run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

MINI = Path(__file__).resolve().parents[1] / "egs" / "mini_aishell_ner" / "llm1"


def _resolve(value: str) -> subprocess.CompletedProcess:
    script = 'set -e; . local/cpu_dtype.sh; dtype=$(cpu_dtype "$1"); echo "resolved ${dtype}"'
    return subprocess.run(["bash", "-c", script, "run.sh", value], cwd=MINI, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("value", ["float32", "bfloat16"])
def test_explicit_dtype_is_kept(value):
    assert _resolve(value).stdout.strip() == f"resolved {value}"


def test_auto_follows_native_bf16():
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert _resolve("auto").stdout.strip() == f"resolved {'bfloat16' if native else 'float32'}"


def test_bad_dtype_stops_with_one_line():
    result = _resolve("fp16")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["run.sh: a dtype is auto, bfloat16 or float32, got 'fp16'"]
