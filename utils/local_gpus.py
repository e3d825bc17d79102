"""The GPUs the local dispatcher may hand out, and who holds which.

The pool is CUDA_VISIBLE_DEVICES when it is set (the empty string, or a leading negative id
such as -1, means no GPU), else what `nvidia-smi -L` lists (a GPU split into MIG instances
contributes its instances' UUIDs), else nothing.  Ids are kept as given (`2`, `GPU-...`) and
handed to jobs through CUDA_VISIBLE_DEVICES, inside which CUDA numbers them from 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

_NVIDIA_SMI_TIMEOUT_S = 60
_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)")


class GpuRequestError(ValueError):
    """A job asks for more GPUs than the pool has."""


@dataclass(frozen=True)
class GpuPool:
    ids: tuple[str, ...]
    source: str  # where the ids came from, for messages: `CUDA_VISIBLE_DEVICES=0,1`, `nvidia-smi -L`...

    def check_request(self, per_job: int, prog: str) -> None:
        """Raise GpuRequestError unless one job asking `per_job` GPUs can ever run."""
        if per_job <= len(self.ids):
            return
        n = len(self.ids)
        have, fix = (f"{n} GPU{'' if n == 1 else 's'}", f"ask for at most {n} per job") if n \
            else ("no GPU", "run this step on CPU (--gpu 0)")
        raise GpuRequestError(f"{prog}: --gpu {per_job} but this machine offers {have} ({self.source}); {fix}, "
                              "set CUDA_VISIBLE_DEVICES to the GPUs to use, or use cmd_backend=slurm")


def _parse_visible(value: str) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: ids up to the first negative one, duplicates once."""
    ids: list[str] = []
    for item in (x.strip() for x in value.split(",")):
        if not item or re.fullmatch(r"-\d+", item):
            break
        ids.append(item)
    return tuple(dict.fromkeys(ids))


def parse_nvidia_smi(listing: str) -> tuple[str, ...]:
    """GPU indices from `nvidia-smi -L`, with a MIG-partitioned GPU replaced by its instances' UUIDs."""
    gpus: list[tuple[str, list[str]]] = []  # (index, its MIG instances)
    for line in listing.splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append((m.group(1), []))
        elif (m := _MIG_LINE.match(line)) and gpus:
            gpus[-1][1].append(m.group(1))
    return tuple(gpu for index, migs in gpus for gpu in (migs or [index]))


def visible_gpus(environ: Mapping[str, str] = os.environ) -> GpuPool:
    """The GPUs this machine lets the dispatcher use (see the module docstring)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        source = f"CUDA_VISIBLE_DEVICES={value}" if value else "CUDA_VISIBLE_DEVICES is empty"
        return GpuPool(_parse_visible(value), source)
    exe = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if exe is None:
        return GpuPool((), "CUDA_VISIBLE_DEVICES unset and no nvidia-smi on PATH")
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return GpuPool((), f"nvidia-smi -L failed: {e}")
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        return GpuPool((), f"nvidia-smi -L exited {r.returncode}: {why[0] if why else 'no output'}")
    ids = parse_nvidia_smi(r.stdout)
    return GpuPool(ids, f"nvidia-smi -L lists {', '.join(ids) or 'none'}")


class GpuAllocator:
    """Hands out disjoint sets of `per_job` GPUs from a pool, lowest ids first."""

    def __init__(self, pool: GpuPool, per_job: int) -> None:
        self._order = {gpu: i for i, gpu in enumerate(pool.ids)}
        self._free = list(pool.ids)
        self.per_job = per_job

    def can_take(self) -> bool:
        return len(self._free) >= self.per_job

    def take(self) -> tuple[str, ...]:
        """The next job's GPUs (none when per_job is 0); call only when can_take()."""
        taken, self._free = tuple(self._free[:self.per_job]), self._free[self.per_job:]
        return taken

    def give_back(self, gpus: tuple[str, ...]) -> None:
        self._free = sorted([*self._free, *gpus], key=self._order.__getitem__)
