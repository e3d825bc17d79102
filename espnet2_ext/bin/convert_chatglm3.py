"""Convert a ChatGLM3 checkpoint directory to a ``GlmForCausalLM`` directory.

``python -m espnet2_ext.bin.convert_chatglm3 SRC DST [--dtype bfloat16]``: loads
SRC with :func:`load_chatglm3` (strict checks), writes DST with
``save_pretrained`` (safetensors) and copies ``tokenizer.model`` next to it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from espnet2_ext.checkpoint_io import DTYPES
from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.speechllm.chatglm3 import load_chatglm3


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="ChatGLM3 directory (config.json, weights, tokenizer.model)")
    parser.add_argument("dst", type=Path, help="output directory for GlmForCausalLM.save_pretrained")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of the saved weights")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    tokenizer = args.src / "tokenizer.model"
    if not tokenizer.is_file():
        raise SystemExit(f"{args.src}: no tokenizer.model to copy")
    model = load_chatglm3(args.src, dtype=DTYPES[args.dtype])
    model.save_pretrained(args.dst, safe_serialization=True)
    shutil.copyfile(tokenizer, args.dst / "tokenizer.model")
    n_params = sum(p.numel() for p in model.parameters())
    logging.info(f"wrote {args.dst} ({n_params:,} parameters, {args.dtype})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
