"""The mini run.sh's schedule, with a fake llm.sh that records its calls: what runs in the background and when,
and that a failure anywhere stops the systems still running."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

MINI = Path(__file__).resolve().parents[1] / "egs" / "mini_aishell_ner" / "llm1"

# Records "<start|end> <tag> <stage> <stop_stage> <pid>"; sleeps FAKE_SLEEP_<tag> seconds; fails for FAKE_FAIL="<tag>:<stage>".
FAKE_LLM_SH = r"""#!/usr/bin/env bash
set -eu
tag=shared stage=1 stop=10
while [ $# -gt 0 ]; do
    case "$1" in --tag) tag=$2;; --stage) stage=$2;; --stop_stage) stop=$2;; esac
    shift
done
echo "start ${tag} ${stage} ${stop} $$" >> "${FAKE_TRACE}"
sleep_var=FAKE_SLEEP_${tag}
sleep "${!sleep_var:-0}"
[ "${FAKE_FAIL:-}" != "${tag}:${stage}" ] || { echo "fake failure of ${tag}"; exit 3; }
echo "end ${tag} ${stage} ${stop} $$" >> "${FAKE_TRACE}"
"""


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    """A copy of the mini recipe whose llm.sh is the fake (run.sh, local/, conf/ and the links as they are)."""
    rec = tmp_path / "llm1"
    shutil.copytree(MINI, rec, symlinks=True, ignore=shutil.ignore_patterns("exp", "corpus", "RESULTS.md"))
    (rec / "llm.sh").unlink()
    (rec / "llm.sh").write_text(FAKE_LLM_SH)
    (rec / "llm.sh").chmod(0o755)
    for link in ("path.sh", "cmd.sh", "utils"):
        (rec / link).unlink()
        (rec / link).symlink_to(MINI / link)
    return rec


def _run(rec: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    trace = rec / "trace"
    proc = subprocess.run(["./run.sh", "--expdir", "exp", *args], cwd=rec, capture_output=True, text=True,
                          env={**os.environ, "FAKE_TRACE": str(trace), **env}, timeout=120, check=False)
    lines = [line.split() for line in trace.read_text().splitlines()] if trace.exists() else []
    return proc, lines


def _index(trace: list[list[str]], event: str, tag: str, stage: str) -> int:
    return next(i for i, t in enumerate(trace) if t[:3] == [event, tag, stage])


def test_conformer_trains_while_stage_3_dumps_and_scoring_comes_last(recipe):
    proc, trace = _run(recipe, "--stage", "1", FAKE_SLEEP_conformer="2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [t[1:4] for t in trace if t[0] == "start"]
    assert sorted(calls) == sorted([
        ["decoder_only", "1", "2"], ["conformer", "3", "8"],
        ["decoder_only", "3", "4"], ["encoder_decoder", "3", "4"],
        ["decoder_only", "5", "8"], ["decoder_only", "10", "10"],
        ["encoder_decoder", "5", "8"], ["encoder_decoder", "10", "10"], ["shared", "9", "9"]])
    # the Conformer starts after the data dirs and is still running while the speech-LLM systems dump
    assert _index(trace, "end", "decoder_only", "1") < _index(trace, "start", "conformer", "3")
    assert _index(trace, "end", "encoder_decoder", "3") < _index(trace, "end", "conformer", "3")
    # each system packs after its own decoding; scoring waits for every system
    for arch in ("decoder_only", "encoder_decoder"):
        assert _index(trace, "end", arch, "5") < _index(trace, "start", arch, "10")
    assert _index(trace, "start", "shared", "9") > max(i for i, t in enumerate(trace) if t[0] == "end" and t[2] != "9")


def test_stage_range_reaches_every_system(recipe):
    proc, trace = _run(recipe, "--stage", "3", "--stop_stage", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(t[1:4] for t in trace if t[0] == "start") == sorted([
        ["conformer", "3", "7"], ["decoder_only", "3", "4"], ["encoder_decoder", "3", "4"],
        ["decoder_only", "5", "7"], ["encoder_decoder", "5", "7"]])


def test_a_foreground_failure_stops_the_background_conformer(recipe):
    proc, trace = _run(recipe, "--stage", "1", FAKE_SLEEP_conformer="60", FAKE_FAIL="decoder_only:3")
    assert proc.returncode != 0 and "fake failure of decoder_only" in proc.stdout + proc.stderr
    conformer = [t for t in trace if t[1] == "conformer"]
    assert [t[0] for t in conformer] == ["start"], "run.sh waited for the background Conformer instead of stopping it"
    alive = Path(f"/proc/{conformer[0][4]}")
    for _ in range(50):  # SIGTERM was sent before run.sh exited; give the process time to be reaped
        if not alive.exists():
            break
        time.sleep(0.2)
    assert not alive.exists(), "the background Conformer is still running"


def test_a_background_failure_is_named_and_stops_the_run(recipe):
    proc, trace = _run(recipe, "--stage", "1", FAKE_FAIL="encoder_decoder:5")
    assert proc.returncode == 1
    assert "failed in the background: encoder_decoder (see exp/log/)" in proc.stdout
    assert "fake failure of encoder_decoder" in proc.stdout, "the failed system's log tail is shown"
    assert not any(t[1] == "shared" and t[2] == "9" for t in trace), "no scoring after a failure"
    assert not any(t[1] == "encoder_decoder" and t[2] == "10" for t in trace), "no packing of a failed system"
