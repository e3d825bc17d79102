"""Write OUT.1 ... OUT.N key files, each holding whole speakers (for long-form decoding jobs)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.data.splits import read_utt2spk, split_by_speaker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--utt2spk", type=Path, required=True, help="Kaldi utt2spk file")
    parser.add_argument("--nj", type=int, required=True, help="number of jobs")
    parser.add_argument("--out", required=True, help="output prefix; writes OUT.1 ... OUT.N")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    for i, keys in enumerate(split_by_speaker(read_utt2spk(args.utt2spk), args.nj), 1):
        Path(f"{args.out}.{i}").write_text("".join(k + "\n" for k in keys), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_cli(main))
