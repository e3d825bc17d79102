"""Kaldi data-directory files, read in one place: ``text``-like tables and the audio ``wav.scp`` names.

Tables (``text``, ``wav.scp``, key lists, ``history``) are ``key<whitespace>value`` lines, UTF-8,
order kept; the value may be empty (an empty hypothesis) and may contain spaces. Every table
reader goes through :func:`iter_raw_lines`, which accepts what editors and other platforms add:
a UTF-8 byte-order mark before the first line is dropped, CRLF line ends are read as LF, and
blank lines at the end of the file are ignored. Anything else odd is an error naming the file
and line (nothing is skipped silently): a blank line between lines, a line starting with
whitespace, invalid UTF-8, a byte-order mark on a later line (concatenated files), a
duplicate key.

Audio: :func:`read_audio` reads the file a ``wav.scp`` value names (pipes are refused) and
refuses a truncated RIFF/WAVE file (its ``data`` chunk claims more bytes than the file holds),
which soundfile would read short without a word; :func:`read_wave` also checks the sample rate.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

UTF8_BOM = b"\xef\xbb\xbf"
_UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed WAV's data size


class KaldiTextError(ValueError):
    """A malformed line in a Kaldi table; the message starts with ``file:line``."""

    def __init__(self, path: str | Path, line_no: int, reason: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{path}:{line_no}: {reason}")


class BadAudio(ValueError):
    """Audio that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class KaldiTextLine:
    """One parsed line: its 1-based line number, utterance id and (possibly empty) text."""

    line_no: int
    utt_id: str
    text: str


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line_no, raw bytes without the line ending)`` per line: BOM dropped, CRLF read as LF,
    blank lines at the end of the file left out (blank lines before a non-blank one are kept)."""
    blanks: list[tuple[int, bytes]] = []
    with open(path, "rb") as stream:
        for line_no, raw in enumerate(stream, start=1):
            if line_no == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                blanks.append((line_no, raw))
                continue
            yield from blanks
            blanks.clear()
            yield line_no, raw


def decode_line(raw: bytes, *, path: str | Path, line_no: int) -> str:
    """One line as text, or KaldiTextError for invalid UTF-8 or a byte-order mark after line 1."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KaldiTextError(path, line_no, f"invalid UTF-8 ({err.reason} at byte {err.start})") from None
    if line.startswith("\ufeff"):
        raise KaldiTextError(path, line_no, "byte-order mark inside the file (concatenated files?); remove it")
    return line


def split_kaldi_line(raw: bytes, *, path: str | Path, line_no: int) -> KaldiTextLine:
    """Decode one line and split it into utterance id and text, or raise KaldiTextError."""
    line = decode_line(raw, path=path, line_no=line_no)
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


def read_wav_scp(path: str | Path) -> dict[str, str]:
    """``uttid path`` lines -> ``{uttid: path}``; a line without a path is an error."""
    table: dict[str, str] = {}
    for line in read_kaldi_text_lines(path):
        if not line.text:
            raise KaldiTextError(path, line.line_no, f"expected 'uttid path', got only {line.utt_id!r}")
        table[line.utt_id] = line.text
    return table


def read_keys(path: str | Path, known: Container[str], known_from: str | Path) -> list[str]:
    """The first field of every line, in order; each must be in ``known`` (read from ``known_from``)."""
    keys = []
    for line in read_kaldi_text_lines(path):
        if line.utt_id not in known:
            raise KaldiTextError(path, line.line_no, f"utterance {line.utt_id} is not in {known_from}")
        keys.append(line.utt_id)
    return keys


def read_history_file(path: str | Path) -> dict[str, list[str]]:
    """``uttid prev_1 … prev_n`` per line (most recent last) -> ``{uttid: [prev_1, …]}``."""
    return {line.utt_id: line.text.split() for line in read_kaldi_text_lines(path)}


def wav_truncation(path: str | Path) -> str | None:
    """Why a RIFF/WAVE file is truncated (its ``data`` chunk claims more bytes than are there), else None.

    Other formats (and streamed WAVs of unknown length) are left to soundfile.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        offset = 12
        while True:
            stream.seek(offset)
            chunk = stream.read(8)
            if len(chunk) < 8:
                return f"truncated: no data chunk in its {size} bytes"
            chunk_size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = size - offset - 8
                if chunk_size != _UNKNOWN_SIZE and chunk_size > present:
                    return f"truncated: the header promises {chunk_size} data bytes, the file holds {present}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)


def read_audio(value: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a ``wav.scp`` value, or BadAudio."""
    if str(value).endswith("|"):
        raise BadAudio(f"pipe commands are not supported ({value!r}); give a file path")
    path = Path(value)
    if not path.is_file():
        raise BadAudio(f"file not found: {path}")
    try:
        truncated = wav_truncation(path)
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadAudio(f"unreadable audio {path}: {err}") from err
    if truncated:
        raise BadAudio(f"{path}: {truncated}; re-copy or re-encode the file")
    if samples.shape[1] != 1:
        raise BadAudio(f"{path}: {samples.shape[1]} channels, expected mono")
    return samples[:, 0], rate


def read_wave(value: str | Path, sample_rate: int, min_samples: int = 1) -> np.ndarray:
    """Mono samples of a ``wav.scp`` value at ``sample_rate``, at least ``min_samples`` of them, or BadAudio."""
    samples, rate = read_audio(value)
    if rate != sample_rate:
        raise BadAudio(f"{value}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if samples.shape[0] < min_samples:
        raise BadAudio(f"{value}: {samples.shape[0]} samples, fewer than {min_samples}")
    return samples
