#!/usr/bin/env python3
"""A stand-in for cmd.sh's dispatcher in the stage-engine tests (tests/test_stage_engine.py).

Training (speechllm_train, asr_train), decoding (speechllm_inference, asr_inference) and the Fig. 2
analysis (analyze_speechllm) are faked in milliseconds: training writes the files ESPnet's Trainer leaves
(config.yaml, checkpoint.pth, 1epoch.pth, valid.acc.ave.pth), decoding writes output.JOB/text for the
job's keys, the analysis an empty --out directory. Each faked call
is appended to $FAKE_CALLS as one JSON line. FAKE_INTERRUPT=1 makes training stop after its first
checkpoint, as a killed run does. Every other command runs through utils/run_local.py.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_RANGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)$")
TRAINERS = ("espnet2_ext.bin.speechllm_train", "espnet2_ext.bin.asr_train")
DECODERS = ("espnet2_ext.bin.speechllm_inference", "espnet2_ext.bin.asr_inference")
ANALYSER = "espnet2_ext.bin.analyze_speechllm"


def option(words: list[str], name: str) -> str | None:
    """The value after the last `name` in words."""
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    return values[-1] if values else None


def split_dispatch_args(argv: list[str]) -> tuple[tuple[str, int, int] | None, str, list[str]]:
    """(JOB range or None, log path, command words) from `[--opt V]... [JOB=a:b] LOG WORDS...`."""
    i = 0
    while argv[i].startswith("--"):
        i += 1 if "=" in argv[i] else 2
    job = None
    match = _RANGE.match(argv[i])
    if match:
        job = (match[1], int(match[2]), int(match[3]))
        i += 1
    return job, argv[i], argv[i + 1:]


def record(kind: str, words: list[str]) -> None:
    with open(os.environ["FAKE_CALLS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "words": words}) + "\n")


def fake_training(words: list[str]) -> int:
    out = Path(option(words, "--output_dir"))
    out.mkdir(parents=True, exist_ok=True)
    record("train", words)
    stamp = f"{time.time_ns()} {option(words, '--config')} {option(words, '--init_param')}\n"
    (out / "config.yaml").write_text(Path(option(words, "--config")).read_text(encoding="utf-8"), encoding="utf-8")
    (out / "checkpoint.pth").write_text(stamp)
    (out / "1epoch.pth").write_text(stamp)
    if os.environ.get("FAKE_INTERRUPT") == "1":
        return 1
    (out / "valid.acc.ave.pth").write_text(stamp)
    return 0


def fake_decoding(job: tuple[str, int, int], words: list[str]) -> int:
    record("decode", words)
    var, first, last = job
    for i in range(first, last + 1):
        out = Path(option(words, "--output_dir").replace(var, str(i)))
        keys = Path(option(words, "--key_file").replace(var, str(i))).read_text(encoding="utf-8").split("\n")
        text = "".join(f"{line.split()[0]} 你好\n" for line in keys if line.strip())
        target = out / "1best_recog" / "text" if "espnet2_ext.bin.asr_inference" in words else out / "text"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return 0


def main(argv: list[str]) -> int:
    job, _, words = split_dispatch_args(argv)
    if any(w in TRAINERS for w in words):
        return fake_training(words)
    if job and any(w in DECODERS for w in words):
        return fake_decoding(job, words)
    if ANALYSER in words:
        record("analysis", words)
        Path(option(words, "--out")).mkdir(parents=True, exist_ok=True)
        return 0
    os.execv(sys.executable, [sys.executable, str(REPO / "utils" / "run_local.py"), *argv])
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
