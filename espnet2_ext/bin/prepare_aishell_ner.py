"""Stage 1: AISHELL-1 wavs + AISHELL-NER transcripts -> Kaldi data directories (see espnet2_ext.data.aishell).

Prints a summary per split (total, kept, rejected by reason); rejected ids are listed with their
reason in OUT/<split>/rejected.txt. Exit status: 0 when every split kept utterances, 1 when a split
kept none, 2 when a corpus file is missing or an option is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.data.aishell import SPLITS, InputError, format_summary, prepare_aishell_ner


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aishell_dir", type=Path, required=True, help="AISHELL-1 root with wav/ and transcript/")
    parser.add_argument("--ner_dir", type=Path, required=True, help="directory of aishell_ner_transcript.*.txt")
    parser.add_argument("--out", type=Path, required=True, help="output root: one data directory per split")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to prepare")
    parser.add_argument("--max_duration", type=float, default=30.0, help="reject longer utterances (seconds)")
    parser.add_argument("--max_history_list", type=int, default=8,
                        help="most same-speaker predecessors listed per utterance in history")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        reports, unassigned = prepare_aishell_ner(
            args.aishell_dir, args.ner_dir, args.out, args.splits, args.max_duration, args.max_history_list
        )
    except (InputError, ValueError) as error:
        print(f"prepare_aishell_ner: {error}", file=sys.stderr)
        return 2
    print(format_summary(reports, unassigned))
    empty = [report.split for report in reports if report.kept == 0]
    if empty:
        print(f"prepare_aishell_ner: no utterance kept for {', '.join(empty)}; "
              f"see {args.out}/<split>/rejected.txt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
