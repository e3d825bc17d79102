"""Check that the LLM's tokenizer covers the training text before hours of training start.

Encodes every transcript (with markup) and the task markers, and reports unknown
pieces, texts that do not survive an encode/decode round trip, and tokens per
character. Fails when a markup character or task marker is unknown to the
tokenizer: the model could then never write an entity or switch tasks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer
from espnet2_ext.text.kaldi_text import read_kaldi_text
from espnet2_ext.text.ner_markup import MARKUP_CHARS


def check(tokenizer: ChatGLM3Tokenizer, texts: dict[str, str]) -> dict:
    unk = tokenizer.sp.unk_id()
    required = {s: tokenizer.encode(s) for s in (*TASK_TOKENS, *MARKUP_CHARS)}
    report = {
        "utterances": len(texts),
        "characters": sum(len(t) for t in texts.values()),
        "tokens": 0,
        "unknown_required": sorted(s for s, ids in required.items() if unk in ids or not ids),
        "utterances_with_unk": [],
        "round_trip_failures": [],
    }
    for utt, text in texts.items():
        ids = tokenizer.encode(text)
        report["tokens"] += len(ids)
        if unk in ids:
            report["utterances_with_unk"].append(utt)
        elif tokenizer.decode(ids) != text:
            report["round_trip_failures"].append(utt)
    report["tokens_per_char"] = round(report["tokens"] / max(report["characters"], 1), 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", type=Path, required=True, help="sentencepiece tokenizer.model")
    parser.add_argument("--text", type=Path, required=True, help="Kaldi text file with NER markup")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    report = check(ChatGLM3Tokenizer(args.tokenizer), read_kaldi_text(args.text))
    shown = {k: (v[:10] if isinstance(v, list) else v) for k, v in report.items()}
    print(json.dumps(shown, ensure_ascii=False))
    print(
        f"{args.text}: {report['utterances']} utterances, {report['tokens_per_char']} tokens/char, "
        f"{len(report['utterances_with_unk'])} with unknown pieces, "
        f"{len(report['round_trip_failures'])} not surviving encode/decode"
    )
    if report["unknown_required"]:
        print(f"error: the tokenizer cannot write {report['unknown_required']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
