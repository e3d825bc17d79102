"""A private single-node Slurm (+ munge) on localhost for tests, as a module-scoped fixture.

Everything lives in a fresh directory under /tmp (world-traversable, as munged requires of
its socket directory): key, socket, state, spool, logs, and a slurm.conf on free ports.
Clients find it through SLURM_CONF in `SlurmCluster.env`.  Needs root and Debian's
slurm-wlm + munge; if the daemons cannot start, the fixture fails with their logs.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


class SlurmStartError(RuntimeError):
    """The daemons did not come up; the message carries their logs."""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as slurmd itself detects them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    cpus, mem = re.search(r"\bCPUs=(\d+)", out), re.search(r"\bRealMemory=(\d+)", out)
    if not (cpus and mem):
        raise SlurmStartError(f"cannot read CPUs/RealMemory from `slurmd -C`:\n{out}")
    return int(cpus.group(1)), int(mem.group(1))


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]

    @classmethod
    def start(cls) -> "SlurmCluster":
        root = Path(tempfile.mkdtemp(prefix="slurm-test-", dir="/tmp"))
        root.chmod(0o755)
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        cpus, mem = _node_resources()
        ctld_port, slurmd_port = _free_ports(2)
        conf = root / "slurm.conf"
        conf.write_text(
            f"""ClusterName=test{ctld_port}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(mem // (4 * cpus), 1)}
SchedulerParameters=bf_interval=1
MinJobAge=5
ReturnToService=2
MpiDefault=none
NodeName=localhost CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        cluster = cls(root, conf, {**os.environ, "SLURM_CONF": str(conf)})
        try:
            cluster._run("munged", f"--key-file={key}", f"--socket={root}/munge/socket",
                         f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                         f"--seed-file={root}/munge/seed", "--force")
            cluster._run("slurmctld", "-f", str(conf))
            cluster._run("slurmd", "-f", str(conf), "-N", "localhost")
            cluster._wait_idle()
        except (SlurmStartError, subprocess.SubprocessError, OSError) as e:
            logs = cluster.logs()
            cluster.stop()
            raise SlurmStartError(f"{e}\n{logs}") from e
        return cluster

    def _run(self, *cmd: str) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=30)
        if r.returncode != 0:
            raise SlurmStartError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout}{r.stderr}")

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "--noheader", "--nodes=localhost", "--format=%t"],
                               capture_output=True, text=True, env=self.env)
            state = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise SlurmStartError(f"node not idle after {_READY_TIMEOUT_S:.0f} s (sinfo: {state!r})")

    def squeue(self) -> str:
        """`JOBID STATE` of every job squeue lists (pending, running, completing); empty when none."""
        r = subprocess.run(["squeue", "--noheader", "--format=%i %T"], capture_output=True, text=True,
                           env=self.env, check=True)
        return r.stdout.strip()

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel leftover jobs, stop slurmd, slurmctld and munged (by pid file), remove the directory."""
        subprocess.run(["scancel", "--quiet", f"--user={os.getuid()}"], env=self.env,
                       capture_output=True, check=False, timeout=30)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            if not path.exists():
                continue
            pid = int(path.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running private Slurm; fails (never skips) when it cannot start."""
    try:
        cluster = SlurmCluster.start()
    except (SlurmStartError, subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.fail(f"cannot start a private Slurm: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
