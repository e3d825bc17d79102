"""Check Kaldi data directories (see espnet2_ext.data.validate); exit 1 listing the problems if any."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.data.validate import validate_data_dir

MAX_PRINTED = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dirs", type=Path, nargs="+", help="Kaldi data directories")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    status = 0
    for data_dir in args.data_dirs:
        problems = validate_data_dir(data_dir)
        if not problems:
            print(f"{data_dir}: OK")
            continue
        status = 1
        print(f"validate_data_dir: {data_dir}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems[:MAX_PRINTED]:
            print(f"  {problem}", file=sys.stderr)
        if len(problems) > MAX_PRINTED:
            print(f"  ... and {len(problems) - MAX_PRINTED} more", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(run_cli(main))
