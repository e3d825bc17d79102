"""Report the versions of everything the recipes need; exit non-zero if any piece is missing or broken.

Run through `make -C tools check`. System tools are checked too, because a stage
that dies half-way through a corpus on a missing `sox` wastes far more time than
this check does.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

PYTHON_MODULES = (
    "torch", "torchaudio", "espnet", "espnet2.train.trainer", "espnet2.tasks.asr", "espnet2.bin.asr_inference",
    "transformers", "peft", "kaldiio", "sentencepiece", "soundfile", "yaml", "numpy",
    "matplotlib", "pytest", "espnet2_ext",
)
SYSTEM_TOOLS = {
    "sox": ["sox", "--version"],
    "flac": ["flac", "--version"],
    "espeak-ng": ["espeak-ng", "--version"],
    "sbatch": ["sbatch", "--version"],
    "munged": ["munged", "--version"],
}


def _module_version(name: str) -> str:
    module = importlib.import_module(name)
    return str(getattr(module, "__version__", "ok"))


def _tool_version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and "error" not in l]
    return lines[0].strip() if lines else f"exit {out.returncode}"


def main() -> int:
    failures = 0
    print(f"python       {sys.version.split()[0]}  ({sys.executable})")
    for name in PYTHON_MODULES:
        try:
            print(f"{name:<24} {_module_version(name)}")
        except Exception as exc:  # report every broken import, then fail
            failures += 1
            print(f"{name:<24} MISSING ({type(exc).__name__}: {exc})")
    for name, argv in SYSTEM_TOOLS.items():
        if shutil.which(argv[0]) is None:
            failures += 1
            print(f"{name:<24} MISSING (run: make -C tools system)")
        else:
            print(f"{name:<24} {_tool_version(argv)}")
    if failures:
        print(f"{failures} component(s) missing or broken", file=sys.stderr)
        return 1
    print("all components present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
