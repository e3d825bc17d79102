"""Convert a CTranslate2 (faster-whisper) Whisper model to a Hugging Face Whisper directory.

``python -m espnet2_ext.bin.convert_ctranslate2_whisper SRC DST [--dtype float32] [--sha256 HEX]``:
SRC is a faster-whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``)
or its ``model.bin``; DST receives ``WhisperForConditionalGeneration.save_pretrained``
output plus ``preprocessor_config.json`` and ``tokenizer.json``, which is what
``--whisper DIR`` expects. With ``--sha256`` the ``model.bin`` is checked first.
A bad input file ends the command with one line naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import torch

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.speechllm.ctranslate2_whisper import convert_ctranslate2_whisper

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="faster-whisper directory, or its model.bin")
    parser.add_argument("dst", type=Path, help="output Hugging Face Whisper directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--sha256", help="expected sha256 of model.bin; refuse to convert on a mismatch")
    add_verbose_argument(parser)
    return parser


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    model_bin = args.src / "model.bin" if args.src.is_dir() else args.src
    if args.sha256 is not None:
        if not model_bin.is_file():
            raise SystemExit(f"{model_bin}: no such file")
        got = file_sha256(model_bin)
        if got != args.sha256.lower():
            raise SystemExit(f"{model_bin}: sha256 {got}, expected {args.sha256}; re-download it")
        logging.info(f"{model_bin}: sha256 verified")
    try:
        convert_ctranslate2_whisper(args.src, args.dst, DTYPES[args.dtype])
    except (ValueError, FileNotFoundError) as err:  # a bad input file: one line, no traceback
        raise SystemExit(f"convert_ctranslate2_whisper: error: {err}") from err
    logging.info(f"wrote {args.dst} ({args.dtype})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
