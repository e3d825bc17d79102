"""Run the recipe's training entry point exactly as ``python -m espnet2_ext.bin.speechllm_train ARGS`` does, and
record at exit what only the training process can see: CUDA's peak allocated and reserved memory, and its wall time.

    python bench/gpu_recipe_train.py PEAK_JSON ARGS...

ESPnet logs ``gpu_max_cached_mem_GB`` (``max_memory_reserved``) per epoch; the allocated peak, which
``plan_memory`` predicts before its reserve, is not logged, hence this wrapper. With one GPU (or
none) ESPnet trains in this very process, so the numbers are the training's own.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import time
from pathlib import Path

import torch

GIB = 2**30


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} PEAK_JSON TRAINING_ARGS...")
    peak_file = Path(sys.argv[1])
    started = time.perf_counter()

    def record() -> None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        peak_file.write_text(json.dumps({
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else None,
            "max_memory_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3) if cuda else None,
            "process_wall_s": round(time.perf_counter() - started, 2),
        }, indent=2) + "\n")  # fmt: skip

    atexit.register(record)
    sys.argv = ["espnet2_ext.bin.speechllm_train", *sys.argv[2:]]
    runpy.run_module("espnet2_ext.bin.speechllm_train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
