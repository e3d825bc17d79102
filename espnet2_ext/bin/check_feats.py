"""Check a merged feature dump before anything trains on it: one dtype across its archives, as recorded.

    python -m espnet2_ext.bin.check_feats dump/enc/train/feats.scp

Run by the recipe's stage 3 after the per-job ``feats.JOB.scp`` are merged. Reads the first
matrix of every archive (:func:`espnet2_ext.feats_io.check_dump_dtype`) and refuses a dump that
mixes float16 and float32 archives, or whose archives contradict ``feats_conf.json``; prints
one line: utterances, dtype, archives, bytes on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.feats_io import check_dump_dtype, first_entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scp", type=Path, help="the merged feats.scp of one dump directory")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    dtype = check_dump_dtype(args.scp)
    arks = list(first_entries(args.scp))
    size = sum(Path(ark).stat().st_size for ark in arks if Path(ark).is_file())
    with args.scp.open(encoding="utf-8") as stream:
        utts = sum(1 for line in stream if line.strip())
    print(f"{args.scp}: {utts} utterances, {dtype}, {len(arks)} archives, {size / 2**30:.3f} GiB")


if __name__ == "__main__":
    sys.exit(run_cli(main))
