#!/usr/bin/env python3
"""Start a distributed training command with torchrun, on one node or on each node of a Slurm job.

    ddp_launch.py --nproc_per_node N [-m module | script] ARGS...

On one machine it runs ``torchrun --standalone --nproc_per_node N``. Run once per node by
``srun`` (``run_slurm.py --num_nodes M`` does that), it reads the Slurm task's place: node rank
``SLURM_PROCID`` of ``SLURM_NTASKS`` (one task per node), the rendezvous host is the first node
of ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``) and the port is derived from the job id,
so every node starts ``torchrun --nnodes M --node_rank R --master_addr HOST --master_port PORT
--nproc_per_node N`` and all ``M × N`` processes join one process group (ESPnet then reads
RANK/LOCAL_RANK/WORLD_SIZE with ``--multiprocessing_distributed false``). torchrun's exit status
is this command's: a failing rank fails it, and its traceback is in the log.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

PROG = "ddp_launch.py"
PORT_BASE, PORT_RANGE = 20000, 20000


def first_host(nodelist: str) -> str:
    """The first host name of a Slurm node list (``node[01-04]`` style, expanded by scontrol)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def torchrun_args(nproc_per_node: int, env: dict[str, str]) -> list[str]:
    """torchrun's placement options for this process's environment (standalone or one Slurm task per node)."""
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        port = PORT_BASE + int(env["SLURM_JOB_ID"]) % PORT_RANGE
        return [
            f"--nnodes={env['SLURM_NTASKS']}", f"--node_rank={env['SLURM_PROCID']}",
            f"--master_addr={first_host(env['SLURM_JOB_NODELIST'])}", f"--master_port={port}",
            f"--nproc_per_node={nproc_per_node}",
        ]
    return ["--standalone", f"--nproc_per_node={nproc_per_node}"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, usage=f"{PROG} --nproc_per_node N (-m MODULE | SCRIPT) ARGS...",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc_per_node", type=int, required=True, help="processes (GPUs) per node")
    split = 1 if argv[:1] and "=" in argv[0] else 2  # our one option, then the command
    args, command = parser.parse_args(argv[:split]), argv[split:]
    if not command or command == ["-m"]:
        parser.error("no command to launch")
    launch = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(args.nproc_per_node, dict(os.environ))]
    launch += ["--module", *command[1:]] if command[0] == "-m" else command
    print(f"{PROG}: {' '.join(launch)}", file=sys.stderr, flush=True)
    return subprocess.run(launch, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
