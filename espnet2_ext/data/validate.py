"""Consistency checks of a Kaldi data directory, in the spirit of Kaldi's utils/validate_data_dir.sh.

Checked: the required files exist; every ``key value`` file is readable, sorted (byte order, as
``LC_ALL=C sort``) and free of duplicate keys; the per-utterance files present hold the same ids;
sorting by utterance id also sorts by speaker; ``spk2utt`` is the exact inverse of ``utt2spk``;
durations are positive numbers; wav files named in ``wav.scp`` exist and are not truncated; every
id of a ``history`` list exists, has the same speaker and comes before the utterance it precedes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from espnet2_ext.text.kaldi_text import KaldiTextError, iter_raw_lines, split_kaldi_line, wav_truncation

REQUIRED_FILES = ("wav.scp", "text", "utt2spk", "spk2utt")
PER_UTTERANCE_FILES = ("wav.scp", "text", "text.aishell", "utt2dur", "history")
OPTIONAL_VALUE_FILES = ("history",)  # files whose value may be empty
MAX_LISTED = 5
ARK_OFFSET = re.compile(r":\d+$")


@dataclass
class Table:
    """A ``key value`` file: values of the keys in file order, and what is wrong with it."""

    path: Path
    rows: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_table(path: Path, *, value_required: bool = True) -> Table:
    """Read a Kaldi table leniently, recording malformed lines, duplicates and unsorted keys."""
    table = Table(path)
    previous: str | None = None
    unsorted_reported = False
    for line_no, raw in iter_raw_lines(path):
        try:
            line = split_kaldi_line(raw, path=path, line_no=line_no)
        except KaldiTextError as error:
            table.problems.append(str(error))
            continue
        key = line.utt_id
        if key in table.rows:
            table.problems.append(f"{path}:{line_no}: duplicate key {key}")
            continue
        if previous is not None and key < previous and not unsorted_reported:
            table.problems.append(f"{path}:{line_no}: {key} comes after {previous}: not sorted (LC_ALL=C sort)")
            unsorted_reported = True
        if value_required and not line.text:
            table.problems.append(f"{path}:{line_no}: {key} has no value")
        table.rows[key] = line.text
        previous = key
    return table


def listed(ids: set[str]) -> str:
    """A count and the first few ids, for messages about sets of ids."""
    shown = sorted(ids)[:MAX_LISTED]
    return f"{len(ids)} ({', '.join(shown)}{', ...' if len(ids) > MAX_LISTED else ''})"


def check_speakers(utt2spk: Table, spk2utt: Table) -> list[str]:
    """utt2spk has one speaker per id, sorts like its speakers, and spk2utt is its inverse."""
    problems = []
    expected: dict[str, list[str]] = {}
    previous_speaker = ""
    for uttid, speaker in utt2spk.rows.items():
        if len(speaker.split()) != 1:
            problems.append(f"{utt2spk.path}: {uttid} has speaker {speaker!r}, expected one token")
            continue
        if speaker < previous_speaker:
            problems.append(f"{utt2spk.path}: sorting by utterance id does not sort by speaker at {uttid} "
                            f"({speaker} after {previous_speaker}); make speaker ids prefixes of utterance ids")
        previous_speaker = max(previous_speaker, speaker)
        expected.setdefault(speaker, []).append(uttid)
    missing, extra = set(expected) - set(spk2utt.rows), set(spk2utt.rows) - set(expected)
    if missing:
        problems.append(f"{spk2utt.path}: speakers of utt2spk missing: {listed(missing)}")
    if extra:
        problems.append(f"{spk2utt.path}: speakers not in utt2spk: {listed(extra)}")
    for speaker in sorted(set(expected) & set(spk2utt.rows)):
        if spk2utt.rows[speaker].split() != sorted(expected[speaker]):
            problems.append(f"{spk2utt.path}: {speaker} does not list exactly its utt2spk utterances in order")
    return problems


def check_values(name: str, table: Table, utt2spk: Table) -> list[str]:
    """File-specific checks of the values of wav.scp, utt2dur and history."""
    problems = []
    for uttid, value in table.rows.items():
        if name == "utt2dur":
            try:
                positive = float(value) > 0
            except ValueError:
                positive = False
            if not positive:
                problems.append(f"{table.path}: {uttid} has duration {value!r}, expected a positive number")
        elif name == "wav.scp":
            plain_path = len(value.split()) == 1 and not value.endswith("|") and not ARK_OFFSET.search(value)
            if plain_path and not Path(value).is_file():
                problems.append(f"{table.path}: {uttid}: wav file {value} does not exist")
            elif plain_path and (truncated := wav_truncation(value)):
                problems.append(f"{table.path}: {uttid}: wav file {value} is {truncated}")
        elif name == "history":
            speaker = utt2spk.rows.get(uttid)
            for previous in value.split():
                if previous not in utt2spk.rows:
                    problems.append(f"{table.path}: {uttid}: history id {previous} is not in utt2spk")
                elif utt2spk.rows[previous] != speaker or not previous < uttid:
                    problems.append(f"{table.path}: {uttid}: history id {previous} is not an earlier "
                                    f"utterance of speaker {speaker}")
    return problems


def validate_data_dir(data_dir: Path) -> list[str]:
    """Every problem found in a data directory, one message each; empty when it is valid."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [f"{data_dir}: not a directory"]
    missing = [name for name in REQUIRED_FILES if not (data_dir / name).is_file()]
    if missing:
        return [f"{data_dir}: missing {', '.join(missing)}"]
    utt2spk = read_table(data_dir / "utt2spk")
    spk2utt = read_table(data_dir / "spk2utt")
    problems = utt2spk.problems + spk2utt.problems + check_speakers(utt2spk, spk2utt)
    if not utt2spk.rows:
        problems.append(f"{utt2spk.path}: no utterances")
    ids = set(utt2spk.rows)
    for name in PER_UTTERANCE_FILES:
        if not (data_dir / name).is_file():
            continue
        table = read_table(data_dir / name, value_required=name not in OPTIONAL_VALUE_FILES)
        problems += table.problems
        absent, extra = ids - set(table.rows), set(table.rows) - ids
        if absent:
            problems.append(f"{table.path}: ids of utt2spk missing: {listed(absent)}")
        if extra:
            problems.append(f"{table.path}: ids not in utt2spk: {listed(extra)}")
        problems += check_values(name, table, utt2spk)
    return problems
