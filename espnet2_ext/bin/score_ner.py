"""Score ASR + NER hypotheses: writes result.json, result.md (paper-style tables), detail.txt.

Both inputs are Kaldi ``text`` files with AISHELL-NER markup. See
``espnet2_ext.scoring.scorer`` for how missing, extra and invalid hypotheses are treated.
Exit status 1 when an input cannot be read or the reference is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from espnet2_ext.scoring.report import render_detail, render_result_markdown
from espnet2_ext.scoring.scorer import score_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="reference Kaldi text, marked")
    parser.add_argument("--hyp", type=Path, required=True, help="hypothesis Kaldi text, marked")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--name", default="hyp", help="system name for the tables' row")
    args = parser.parse_args(argv)
    try:
        result = score_files(args.ref, args.hyp)
    except (OSError, ValueError) as err:  # ValueError covers KaldiTextError and MarkupError
        print(f"score_ner: {err}", file=sys.stderr)
        return 1
    summary = result.to_json()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    markdown = render_result_markdown(args.name, summary)
    (args.out / "result.md").write_text(markdown, encoding="utf-8")
    (args.out / "detail.txt").write_text(render_detail(result), encoding="utf-8")
    counts, cer = summary["counts"], summary["cer"]
    print(
        f"{args.name}: CER {'n/a' if cer is None else f'{cer:.2f}'}% over {counts['utterances']} "
        f"utterances, F1 {summary['f1']['ALL']:.3f}, missing {counts['missing_hyp']}, "
        f"extra {counts['extra_hyp']}, invalid markup {counts['invalid_hyp_markup']} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
