"""Collect every scored decoding under an experiment directory into one RESULTS.md.

Rows come from ``EXPDIR/<system>/decode_<phase>_<task>_his<N>/<test_set>/score/result.json``
(the layout the stage engine writes); each row lists the exact training and decoding
commands behind it, read from the first line of the dispatcher's logs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.scoring.report import DEFINITIONS, render_results_tables

_DECODE_DIR = re.compile(r"^decode_(?P<phase>[^_]+)_(?P<task>[^_]+)_his(?P<history>\d+)$")


def _first_command(log: Path) -> str | None:
    """The command line a dispatcher log starts with (``# cmd ...``), if the log exists."""
    if not log.is_file():
        return None
    with open(log, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    return first.lstrip("# ").strip() or None


def collect_rows(expdir: Path, test_set: str) -> list[tuple[str, dict, Path, str]]:
    """(row name, result.json, decode dir, task) for every scored decoding of one test set."""
    rows = []
    for result_file in sorted(expdir.glob(f"*/decode_*/{test_set}/score/result.json")):
        decode_dir = result_file.parents[1]
        match = _DECODE_DIR.match(decode_dir.parent.name)
        if match is None:
            continue
        system = decode_dir.parents[1].name
        name = f"{system} {match['phase']} {match['task']} his={match['history']}"
        rows.append((name, json.loads(result_file.read_text(encoding="utf-8")), decode_dir, match["task"]))
    return rows


def render(expdir: Path, test_sets: list[str], command: str) -> str:
    header = [
        "# RESULTS",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
    ]
    if command:
        header.append(f"- command: `{command}`")
    parts = ["\n".join(header)]
    for test_set in test_sets:
        rows = collect_rows(expdir, test_set)
        parts.append(f"## {test_set}")
        if not rows:
            parts.append("No scored decodings yet.")
            continue
        entity_rows = [name for name, _, _, task in rows if task == "ner"]
        parts.append(render_results_tables([(name, result) for name, result, _, _ in rows], entity_rows))
        parts.append("### Commands")
        for name, _, decode_dir, _ in rows:
            phase = decode_dir.parent.name.split("_")[1]
            train = _first_command(decode_dir.parents[1] / phase / "train.log")
            decode = _first_command(decode_dir / "log" / "decode.1.log")
            parts.append(f"- **{name}**\n  - train: `{train or 'n/a'}`\n  - decode: `{decode or 'n/a'}`")
    parts.append("## Definitions\n" + DEFINITIONS)
    return "\n\n".join(p for p in parts if p) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--expdir", type=Path, required=True, help="experiment directory of the recipe")
    parser.add_argument("--test_sets", required=True, help="space-separated test sets")
    parser.add_argument("--command", default="", help="the recipe command line, recorded in the header")
    parser.add_argument("--out", type=Path, required=True, help="RESULTS.md to write")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    text = render(args.expdir, args.test_sets.split(), args.command)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
