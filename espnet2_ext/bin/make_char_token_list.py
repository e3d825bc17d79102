"""Character token list for the Conformer baseline, in ESPnet's layout.

The NER markup symbols are ordinary characters of the marked-up text, so the
baseline predicts entities as tokens, as the AISHELL-NER paper's E2E system does.
Order: <blank>, <unk>, characters by descending frequency (ties by code point), <sos/eos>.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli


def char_token_list(texts: list[str]) -> list[str]:
    counts = Counter(ch for text in texts for ch in text if not ch.isspace())
    chars = sorted(counts, key=lambda c: (-counts[c], c))
    return ["<blank>", "<unk>", *chars, "<sos/eos>"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", type=Path, required=True, help="Kaldi text file (uttid text)")
    parser.add_argument("--out", type=Path, required=True, help="token list to write")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    with open(args.text, encoding="utf-8") as f:
        texts = [line.split(maxsplit=1)[1] if len(line.split(maxsplit=1)) == 2 else "" for line in f]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokens = char_token_list(texts)
    args.out.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    print(f"{args.out}: {len(tokens)} tokens from {len(texts)} utterances")


if __name__ == "__main__":
    sys.exit(run_cli(main))
