"""Report the versions of everything the recipes need; exit non-zero if any piece is missing or broken.

Run through `make -C tools check`. System tools are checked too, because a stage
that dies half-way through a corpus on a missing `sox` wastes far more time than
this check does. With ``--whisper-base DIR`` the installed Whisper directory is
checked as well: every file against its ``SHA256SUMS``, and the CTranslate2
``model.bin`` it was converted from against the pinned checksum.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_whisper_dir(directory: Path, source_sha256: str) -> str:
    """One line describing a verified model directory; raises ValueError saying what is wrong."""
    sums = directory / "SHA256SUMS"
    if not sums.is_file():
        raise ValueError(f"{directory} not installed (run: make -C tools)")
    source = (directory / "SOURCE").read_text().strip() if (directory / "SOURCE").is_file() else ""
    if source_sha256 not in source.split():
        raise ValueError(f"{directory}/SOURCE does not name model.bin sha256 {source_sha256} (run: make -C tools)")
    listed = [line.split(maxsplit=1) for line in sums.read_text().splitlines() if line.strip()]
    bad = [name for want, name in listed if not (directory / name).is_file() or _sha256(directory / name) != want]
    if bad or not any(name == "model.safetensors" for _, name in listed):
        wrong = bad or ["model.safetensors"]
        raise ValueError(f"{directory}: {wrong} missing or corrupt (run: rm -r {directory}; make -C tools)")
    return f"{directory} ({len(listed)} files verified; from model.bin sha256 {source_sha256[:12]}...)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper-base", type=Path, help="installed Whisper directory to verify")
    parser.add_argument("--whisper-base-sha256", help="sha256 of the model.bin it was converted from")
    args = parser.parse_args(argv)
    if args.whisper_base is not None and not args.whisper_base_sha256:
        parser.error("--whisper-base needs --whisper-base-sha256")
    failures = 0
    print(f"python       {sys.version.split()[0]}  ({sys.executable})")
    for name in PYTHON_MODULES:
        try:
            print(f"{name:<24} {_module_version(name)}")
        except Exception as exc:  # report every broken import, then fail
            failures += 1
            print(f"{name:<24} MISSING ({type(exc).__name__}: {exc})")
    for name, command in SYSTEM_TOOLS.items():
        if shutil.which(command[0]) is None:
            failures += 1
            print(f"{name:<24} MISSING (run: make -C tools system)")
        else:
            print(f"{name:<24} {_tool_version(command)}")
    if args.whisper_base is not None:
        try:
            print(f"{'whisper-base':<24} {check_whisper_dir(args.whisper_base, args.whisper_base_sha256)}")
        except ValueError as exc:
            failures += 1
            print(f"{'whisper-base':<24} MISSING ({exc})")
    if failures:
        print(f"{failures} component(s) missing or broken", file=sys.stderr)
        return 1
    print("all components present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
