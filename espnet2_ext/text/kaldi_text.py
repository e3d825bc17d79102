"""Kaldi ``text`` files: one ``utt_id<whitespace>text`` per line, UTF-8, order kept.

The text part may be empty (an empty hypothesis) and may contain spaces. Blank lines,
lines starting with whitespace, invalid UTF-8 and duplicate utterance ids are errors that
name the file and line: nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class KaldiTextError(ValueError):
    """A malformed line in a Kaldi ``text`` file; the message starts with ``file:line``."""

    def __init__(self, path: str | Path, line_no: int, reason: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{path}:{line_no}: {reason}")


@dataclass(frozen=True)
class KaldiTextLine:
    """One parsed line: its 1-based line number, utterance id and (possibly empty) text."""

    line_no: int
    utt_id: str
    text: str


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_no, raw bytes without the line ending)`` for every line of a file."""
    with open(path, "rb") as stream:
        for line_no, raw in enumerate(stream, start=1):
            yield line_no, raw.rstrip(b"\r\n")


def split_kaldi_line(raw: bytes, *, path: str | Path, line_no: int) -> KaldiTextLine:
    """Decode one line and split it into utterance id and text, or raise KaldiTextError."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KaldiTextError(
            path, line_no, f"invalid UTF-8 ({err.reason} at byte {err.start})"
        ) from None
    if not line.strip():
        raise KaldiTextError(path, line_no, "blank line (expected 'utt_id text')")
    if line[0].isspace():
        raise KaldiTextError(path, line_no, "line starts with whitespace, no utterance id")
    parts = line.split(maxsplit=1)
    text = parts[1].rstrip() if len(parts) == 2 else ""
    return KaldiTextLine(line_no, parts[0], text)


def duplicate_id_reason(utt_id: str, first_line_no: int) -> str:
    """The one wording of a duplicate-id error (shared with the normaliser's side file)."""
    return f"duplicate utterance id {utt_id} (first at line {first_line_no})"


def read_kaldi_text_lines(path: str | Path) -> list[KaldiTextLine]:
    """Read every line strictly; raise KaldiTextError on a malformed line or duplicate id."""
    first_seen: dict[str, int] = {}
    lines: list[KaldiTextLine] = []
    for line_no, raw in iter_raw_lines(path):
        parsed = split_kaldi_line(raw, path=path, line_no=line_no)
        if parsed.utt_id in first_seen:
            reason = duplicate_id_reason(parsed.utt_id, first_seen[parsed.utt_id])
            raise KaldiTextError(path, line_no, reason)
        first_seen[parsed.utt_id] = line_no
        lines.append(parsed)
    return lines


def read_kaldi_text(path: str | Path) -> dict[str, str]:
    """Read a Kaldi ``text`` file into ``{utt_id: text}`` in file order."""
    return {line.utt_id: line.text for line in read_kaldi_text_lines(path)}


def write_kaldi_text(path: str | Path, items: Iterable[tuple[str, str]]) -> None:
    """Write ``(utt_id, text)`` pairs as a Kaldi ``text`` file (no space after an empty text)."""
    with open(path, "w", encoding="utf-8", newline="\n") as stream:
        for utt_id, text in items:
            if not utt_id or any(ch.isspace() for ch in utt_id):
                raise ValueError(f"invalid utterance id {utt_id!r} for {path}")
            if "\n" in text or "\r" in text:
                raise ValueError(f"text of utterance {utt_id} contains a line break")
            stream.write(f"{utt_id} {text}\n" if text else f"{utt_id}\n")
