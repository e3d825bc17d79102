"""Normalise a Kaldi ``text`` file with AISHELL-NER markup; set every invalid line aside.

Valid lines are written normalised (see ``espnet2_ext.text.ner_markup``) with their markup;
malformed lines, duplicate ids, empty texts and invalid markup go to the ``--rejected``
side file with ``file:line``, utterance id and reason. Counts are printed; the exit status
is 0 unless the files cannot be read/written (2) or ``--strict`` is given and a line was
rejected (1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.text.kaldi_text import (
    KaldiTextError,
    duplicate_id_reason,
    iter_raw_lines,
    split_kaldi_line,
    write_kaldi_text,
)
from espnet2_ext.text.ner_markup import MarkupError, normalize_text, parse_markup

REJECTED_HEADER = (
    "# file:line\tutt_id\treason\ttext (markup columns count normalised-text characters)"
)


def normalize_file(in_path: Path, out_path: Path, rejected_path: Path) -> tuple[int, int]:
    """Normalise ``in_path``; returns (total lines, rejected lines)."""
    kept: list[tuple[str, str]] = []
    rejected = [REJECTED_HEADER]
    first_seen: dict[str, int] = {}
    total = 0
    for line_no, raw in iter_raw_lines(in_path):
        total += 1
        where = f"{in_path}:{line_no}"
        try:
            line = split_kaldi_line(raw, path=in_path, line_no=line_no)
        except KaldiTextError as err:
            rejected.append(f"{where}\t-\t{err.reason}\t{raw.decode('utf-8', 'backslashreplace')}")
            continue
        text = normalize_text(line.text)
        reason = ""
        if line.utt_id in first_seen:
            reason = duplicate_id_reason(line.utt_id, first_seen[line.utt_id])
        elif not text:
            reason = "empty text after normalisation"
        else:
            try:
                parse_markup(text, path=str(in_path), line=line_no, utt_id=line.utt_id)
            except MarkupError as err:
                reason = f"column {err.column}: {err.reason}"
        first_seen.setdefault(line.utt_id, line_no)
        if reason:
            rejected.append(f"{where}\t{line.utt_id}\t{reason}\t{text}")
        else:
            kept.append((line.utt_id, text))
    write_kaldi_text(out_path, kept)
    rejected_path.write_text("\n".join(rejected) + "\n", encoding="utf-8")
    return total, len(rejected) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="in_path", type=Path, required=True, help="Kaldi text file")
    parser.add_argument("--out", type=Path, required=True, help="normalised Kaldi text file")
    parser.add_argument("--rejected", type=Path, required=True, help="side file of rejected lines")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any line was rejected")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    try:
        total, rejected = normalize_file(args.in_path, args.out, args.rejected)
    except OSError as err:
        print(f"normalize_ner: {err}", file=sys.stderr)
        return 2
    print(f"{args.in_path}: total={total} kept={total - rejected} rejected={rejected}")
    if rejected:
        print(f"normalize_ner: rejected lines listed in {args.rejected}", file=sys.stderr)
    return 1 if args.strict and rejected else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
