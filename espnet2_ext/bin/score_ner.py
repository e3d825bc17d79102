"""Score ASR + NER hypotheses: writes result.json, result.md (paper-style tables), detail.txt.

Both inputs are Kaldi ``text`` files with AISHELL-NER markup. See
``espnet2_ext.scoring.scorer`` for how missing, extra and invalid hypotheses are treated;
missing and extra ids are also counted and listed on stderr. Exit status 2, with one line
saying why, when an input cannot be read, the reference is invalid or empty, or no
hypothesis id is in the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.scoring.report import render_detail, render_result_markdown
from espnet2_ext.scoring.scorer import HYP_MISSING, score_files

SHOWN_IDS = 10


def _warn_ids(ids: Sequence[str], what: str) -> None:
    if ids:
        shown = " ".join(ids[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")
        print(f"score_ner: warning: {len(ids)} {what}: {shown}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="reference Kaldi text, marked")
    parser.add_argument("--hyp", type=Path, required=True, help="hypothesis Kaldi text, marked")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--name", default="hyp", help="system name for the tables' row")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    result = score_files(args.ref, args.hyp)
    summary = result.to_json()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    markdown = render_result_markdown(args.name, summary)
    (args.out / "result.md").write_text(markdown, encoding="utf-8")
    (args.out / "detail.txt").write_text(render_detail(result), encoding="utf-8")
    _warn_ids(result.ids_with_status(HYP_MISSING), f"reference ids without hypothesis (scored as empty) in {args.hyp}")
    _warn_ids(result.extra_hyp_ids, f"hypothesis ids not in {args.ref} (not scored)")
    counts, cer = summary["counts"], summary["cer"]
    print(
        f"{args.name}: CER {'n/a' if cer is None else f'{cer:.2f}'}% over {counts['utterances']} "
        f"utterances, F1 {summary['f1']['ALL']:.3f}, missing {counts['missing_hyp']}, "
        f"extra {counts['extra_hyp']}, invalid markup {counts['invalid_hyp_markup']} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
