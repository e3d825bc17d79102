"""GPU-aware local dispatch (issue 11) on a fake GPU pool: every `--gpu k` job gets k GPUs of
its own through CUDA_VISIBLE_DEVICES, jobs wait for free GPUs, impossible requests fail first."""
from __future__ import annotations

import os
import sys
from itertools import combinations
from pathlib import Path

import pytest

from helpers_dispatch import REPO, body, dispatch, header

sys.path.insert(0, str(REPO / "utils"))
from local_gpus import GpuAllocator, GpuPool, parse_nvidia_smi, visible_gpus  # noqa: E402

# Each job prints the GPUs it sees and when it ran: `IDS START END`.
SPAN_JOB = "'s=$(date +%s.%N); sleep 0.3; echo $CUDA_VISIBLE_DEVICES $s $(date +%s.%N)'"


def _env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in overrides.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return env


def _spans(tmp_path: Path, n: int) -> list[tuple[tuple[str, ...], float, float]]:
    """(GPU ids, start, end) of jobs 1..n, from their logs; checks the header agrees."""
    spans = []
    for i in range(1, n + 1):
        log = tmp_path / f"logs/g.{i}.log"
        (line,) = body(log)
        ids, start, end = line.rsplit(" ", 2)
        assert f"# CUDA_VISIBLE_DEVICES={ids}" in header(log)
        spans.append((tuple(ids.split(",")), float(start), float(end)))
    return spans


def _overlap(a: tuple[tuple[str, ...], float, float], b: tuple[tuple[str, ...], float, float]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def _max_concurrent(spans: list[tuple[tuple[str, ...], float, float]]) -> int:
    return max(sum(s[1] <= t < s[2] for s in spans) for t in (s[1] for s in spans))


def test_one_gpu_each_never_shared(tmp_path):
    r = dispatch("local", f"--gpu 1 --max_jobs_run 8 JOB=1:8 logs/g.JOB.log {SPAN_JOB}", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert r.returncode == 0, r.stderr
    spans = _spans(tmp_path, 8)
    assert all(len(ids) == 1 and ids[0] in {"0", "1", "2", "3"} for ids, _, _ in spans), spans
    assert {ids for ids, _, _ in spans} == {("0",), ("1",), ("2",), ("3",)}
    assert _max_concurrent(spans) <= 4, spans
    clashes = [(a, b) for a, b in combinations(spans, 2) if a[0] == b[0] and _overlap(a, b)]
    assert not clashes, f"two running jobs shared a GPU: {clashes}"


def test_max_jobs_run_still_caps_gpu_jobs(tmp_path):
    r = dispatch("local", f"--gpu 1 --max_jobs_run 2 JOB=1:4 logs/g.JOB.log {SPAN_JOB}", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert r.returncode == 0, r.stderr
    assert _max_concurrent(_spans(tmp_path, 4)) <= 2


def test_two_gpus_each_get_disjoint_pairs(tmp_path):
    r = dispatch("local", f"--gpu 2 --max_jobs_run 8 JOB=1:4 logs/g.JOB.log {SPAN_JOB}", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert r.returncode == 0, r.stderr
    spans = _spans(tmp_path, 4)
    assert all(len(set(ids)) == 2 for ids, _, _ in spans), spans
    clashes = [(a, b) for a, b in combinations(spans, 2) if set(a[0]) & set(b[0]) and _overlap(a, b)]
    assert not clashes, f"two running jobs shared a GPU: {clashes}"


def test_original_ids_are_handed_out(tmp_path):
    r = dispatch("local", "--gpu 2 logs/g.1.log 'echo $CUDA_VISIBLE_DEVICES 0 0'", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES="5,7,GPU-abc"))
    assert r.returncode == 0, r.stderr
    assert _spans(tmp_path, 1)[0][0] == ("5", "7")


def test_cpu_jobs_see_no_gpu_and_ignore_the_pool(tmp_path):
    r = dispatch("local", "JOB=1:3 logs/g.JOB.log 'echo \"[$CUDA_VISIBLE_DEVICES]\" 0 0'", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stderr
    r = dispatch("local", "--gpu 0 logs/g.4.log 'echo \"[${CUDA_VISIBLE_DEVICES-unset}]\" 0 0'", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES="0,1"))
    assert r.returncode == 0, r.stderr
    assert [body(tmp_path / f"logs/g.{i}.log") for i in (1, 2, 3, 4)] == [["[] 0 0"]] * 4


@pytest.mark.parametrize("gpu, visible, message", [
    (5, "0,1,2,3", "run_local.py: --gpu 5 but this machine offers 4 GPUs (CUDA_VISIBLE_DEVICES=0,1,2,3); "
                   "ask for at most 4 per job"),
    (1, "", "run_local.py: --gpu 1 but this machine offers no GPU (CUDA_VISIBLE_DEVICES is empty); "
            "run this step on CPU (--gpu 0)"),
    (1, "-1", "run_local.py: --gpu 1 but this machine offers no GPU (CUDA_VISIBLE_DEVICES=-1)"),
])
def test_impossible_requests_fail_before_anything_runs(tmp_path, gpu, visible, message):
    r = dispatch("local", f"--gpu {gpu} JOB=1:2 logs/g.JOB.log 'touch ran.JOB'", tmp_path,
                 _env(CUDA_VISIBLE_DEVICES=visible))
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert not list(tmp_path.iterdir()), "something started"


def _fake_nvidia_smi(tmp_path: Path, listing: str, code: int = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\ncat <<'EOF'\n{listing}EOF\nexit {code}\n")
    script.chmod(0o755)
    return _env(CUDA_VISIBLE_DEVICES=None, PATH=f"{bin_dir}:{os.environ['PATH']}")


def test_nvidia_smi_is_read_when_cuda_visible_devices_is_unset(tmp_path):
    env = _fake_nvidia_smi(tmp_path, "GPU 0: Fake H200 (UUID: GPU-aaa)\nGPU 1: Fake H200 (UUID: GPU-bbb)\n")
    work = tmp_path / "work"
    work.mkdir()
    r = dispatch("local", f"--gpu 1 --max_jobs_run 4 JOB=1:4 logs/g.JOB.log {SPAN_JOB}", work, env)
    assert r.returncode == 0, r.stderr
    spans = _spans(work, 4)
    assert {ids for ids, _, _ in spans} == {("0",), ("1",)}
    assert not [(a, b) for a, b in combinations(spans, 2) if a[0] == b[0] and _overlap(a, b)]
    r = dispatch("local", "--gpu 3 logs/x.log true", work, env)
    assert r.returncode == 1 and "offers 2 GPUs (nvidia-smi -L lists 0, 1)" in r.stderr


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path):
    env = _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9)
    r = dispatch("local", "--gpu 1 logs/x.log true", tmp_path, env)
    assert r.returncode == 1
    assert "offers no GPU (nvidia-smi -L exited 9: NVIDIA-SMI has failed" in r.stderr


def test_no_cuda_visible_devices_and_no_nvidia_smi_means_no_gpu(tmp_path):
    pool = visible_gpus({"PATH": str(tmp_path)})
    assert pool.ids == () and "no nvidia-smi on PATH" in pool.source


def test_mig_instances_replace_their_gpu():
    listing = ("GPU 0: NVIDIA A100 (UUID: GPU-a)\n"
               "  MIG 3g.40gb     Device  0: (UUID: MIG-a0)\n"
               "  MIG 3g.40gb     Device  1: (UUID: MIG-a1)\n"
               "GPU 1: NVIDIA A100 (UUID: GPU-b)\n")
    assert parse_nvidia_smi(listing) == ("MIG-a0", "MIG-a1", "1")


def test_allocator_hands_out_lowest_free_ids():
    gpus = GpuAllocator(GpuPool(("0", "1", "2", "3"), "test"), 2)
    first, second = gpus.take(), gpus.take()
    assert (first, second, gpus.can_take()) == (("0", "1"), ("2", "3"), False)
    gpus.give_back(second)
    gpus.give_back(first)
    assert gpus.take() == ("0", "1")
