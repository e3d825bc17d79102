"""Time the NER scorer on a test-set-sized input: 7,176 real references, corrupted hypotheses.

References are the first 7,176 lines of the AISHELL-NER dev annotations (the test set's
size); hypotheses are corrupted with ``espnet2_ext.scoring.synthetic`` (fixed seed). Reports
the best of three runs of ``score_files`` and of the whole CLI (scoring plus writing
result.json, result.md and detail.txt), with the CPU, Python and package versions, to
``bench/results/score_ner.json``.

    python bench/bench_score.py [--shared DIR] [--out bench/results/score_ner.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from espnet2_ext.bin import score_ner
from espnet2_ext.scoring import score_files
from espnet2_ext.scoring.synthetic import corrupt_corpus
from espnet2_ext.text.kaldi_text import read_kaldi_text, write_kaldi_text

REPO = Path(__file__).resolve().parents[1]
TEST_SET_UTTERANCES = 7176
SEED = 0
REPEATS = 3


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Shortest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO / "tests" / "data" / "aishell_ner",
                        help="directory with the AISHELL-NER dev annotations (the copy the tests use)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "score_ner.json")
    args = parser.parse_args()

    dev = read_kaldi_text(args.shared / "aishell_ner_transcript.dev.txt")
    refs = dict(list(dev.items())[:TEST_SET_UTTERANCES])
    hyps = corrupt_corpus(refs, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, hyp_path, out_dir = Path(tmp, "ref"), Path(tmp, "hyp"), Path(tmp, "out")
        write_kaldi_text(ref_path, refs.items())
        write_kaldi_text(hyp_path, hyps.items())
        result = score_files(ref_path, hyp_path).to_json()
        score_s = best_of(REPEATS, lambda: score_files(ref_path, hyp_path))
        cli_args = ["--ref", str(ref_path), "--hyp", str(hyp_path), "--out", str(out_dir)]
        with contextlib.redirect_stdout(io.StringIO()):
            cli_s = best_of(REPEATS, lambda: score_ner.main(cli_args))

    counts = result["counts"]
    report = {
        "benchmark": "score_ner on 7,176 AISHELL-NER dev references vs corrupted hypotheses",
        "utterances": counts["utterances"],
        "ref_chars": counts["ref_chars"],
        "gold_entities": counts["entities"]["ALL"]["gold"],
        "seed": SEED,
        "repeats": REPEATS,
        "score_files_best_s": round(score_s, 4),
        "cli_best_s": round(cli_s, 4),
        "result": {
            "cer": result["cer"],
            "f1_all": result["f1"]["ALL"],
            "taxonomy": result["taxonomy"],
        },
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {"espnet2_ext": metadata.version("espnet2_ext")},
        "note": "the scorer uses only the Python standard library; single process, one core",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
