"""Stage 1: AISHELL-1 audio and transcript plus AISHELL-NER transcripts -> Kaldi data directories.

Inputs, in the layouts the corpora are released in::

    AISHELL_DIR/wav/{train,dev,test}/S0002/BAC009S0002W0122.wav   the split is given by the directory
    AISHELL_DIR/transcript/aishell_transcript_v0.8.txt            all splits, space-separated words
    NER_DIR/aishell_ner_transcript.{split}.txt                    one file per split, or the single
    NER_DIR/aishell_ner_transcript.txt                            file the AISHELL-NER README describes

Outputs, in ``OUT/<split>/``, every file sorted by utterance id:

* ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2dur`` (from the wav header);
* ``text``: the AISHELL-NER text exactly as released (stage 2 normalises it);
* ``text.aishell``: the AISHELL-1 transcript of the same ids, spaces removed (for cross-checks);
* ``history``: ``uttid prev_1 ... prev_k``, the kept predecessors of the same speaker in id
  order, most recent last, at most ``max_history`` of them (just ``uttid`` for a speaker's first);
* ``rejected.txt``: ``uttid reason detail`` for every id that was not kept;
* ``text_mismatch.txt``: ``uttid ner_plain aishell_plain`` where AISHELL-NER's text without
  markup differs from AISHELL-1's after :func:`~espnet2_ext.text.ner_markup.normalize_text`
  (kept: the NER text is the reference; the list is for inspection).

The speaker is the ``S0002`` part of the id. Ids are kept as released: all start with ``BAC009``
and the speaker, so sorting by id also sorts by speaker, as Kaldi requires of speaker-prefixed ids.

Every id met anywhere (wav tree, AISHELL-1 transcript, AISHELL-NER file) is either kept or
rejected for exactly one reason (the first of :data:`REASONS` that applies). Transcript lines
whose speaker has no directory under any ``wav/<split>`` are listed in ``OUT/unassigned.txt``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from espnet2_ext.data.validate import validate_data_dir
from espnet2_ext.text.kaldi_text import (
    KaldiTextError,
    iter_raw_lines,
    split_kaldi_line,
    wav_truncation,
    write_kaldi_text,
)
from espnet2_ext.text.ner_markup import MarkupError, normalize_text, parse_markup

SPLITS = ("train", "dev", "test")
SAMPLE_RATE = 16000
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
NER_SPLIT_FILE = "aishell_ner_transcript.{split}.txt"
NER_COMBINED_FILE = "aishell_ner_transcript.txt"
AISHELL_ID = re.compile(r"^[A-Z0-9]{6}(S\d{4})W\d{4}$")

# Rejection reasons, in the order they are checked.
REASONS: dict[str, str] = {
    "malformed_line": "transcript line without a readable utterance id",
    "duplicate_id": "utterance id occurs more than once",
    "bad_wav_name": "wav file not named like an AISHELL-1 id inside a speaker directory",
    "speaker_mismatch": "wav file lies in another speaker's directory",
    "no_audio": "transcript line without a wav file",
    "no_aishell_transcript": "no AISHELL-1 transcript line",
    "no_ner_transcript": "no AISHELL-NER transcript line",
    "empty_text": "empty transcript",
    "bad_markup": "invalid AISHELL-NER markup",
    "bad_wav": "unreadable or empty wav file",
    "truncated_wav": "wav header promises more samples than the file holds",
    "bad_sample_rate": f"sample rate is not {SAMPLE_RATE} Hz",
    "not_mono": "more than one channel",
    "too_long": "longer than the maximum duration",
}


class InputError(FileNotFoundError):
    """A corpus file or directory is missing: nothing can be prepared."""


@dataclass(frozen=True)
class Rejection:
    """An id that was not kept, why (a key of REASONS), and the specifics."""

    uttid: str
    reason: str
    detail: str

    def line(self) -> str:
        return f"{self.uttid} {self.reason} {' '.join(self.detail.split())}"


@dataclass(frozen=True)
class Utterance:
    """A kept utterance with everything the data directory records about it."""

    uttid: str
    speaker: str
    wav: Path
    text: str
    aishell_text: str
    duration: float


@dataclass
class SplitReport:
    """What happened to one split: kept count, rejections, transcripts that disagree."""

    split: str
    kept: int
    rejections: list[Rejection]
    mismatches: int

    @property
    def total(self) -> int:
        return self.kept + len(self.rejections)

    def reason_counts(self) -> Counter[str]:
        return Counter(rejection.reason for rejection in self.rejections)


@dataclass
class Transcript:
    """A transcript file read leniently: first text and all line numbers per id, unreadable lines."""

    path: Path
    texts: dict[str, str] = field(default_factory=dict)
    line_numbers: dict[str, list[int]] = field(default_factory=dict)
    malformed: list[Rejection] = field(default_factory=list)

    def duplicate_detail(self, uttid: str) -> str | None:
        lines = self.line_numbers.get(uttid, [])
        return f"{self.path} lines {', '.join(map(str, lines))}" if len(lines) > 1 else None


@dataclass
class WavTree:
    """The wav files of one split: usable ones by id, and ids whose files are misplaced or repeated."""

    directory: Path
    wavs: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, Rejection] = field(default_factory=dict)

    @property
    def ids(self) -> set[str]:
        return set(self.wavs) | set(self.problems)


def speaker_of(uttid: str) -> str | None:
    """The AISHELL-1 speaker (``S0002``) of an id like ``BAC009S0002W0122``; None for other ids."""
    match = AISHELL_ID.match(uttid)
    return match.group(1) if match else None


def read_transcript(path: Path) -> Transcript:
    """Read ``uttid text`` lines, keeping duplicates and unreadable lines for the report."""
    transcript = Transcript(path)
    for line_no, raw in iter_raw_lines(path):
        try:
            line = split_kaldi_line(raw, path=path, line_no=line_no)
        except KaldiTextError as error:
            transcript.malformed.append(Rejection(f"{path.name}:{line_no}", "malformed_line", str(error)))
            continue
        transcript.line_numbers.setdefault(line.utt_id, []).append(line_no)
        transcript.texts.setdefault(line.utt_id, line.text)
    return transcript


def scan_wav_tree(directory: Path) -> WavTree:
    """Find ``directory/SPEAKER/ID.wav`` files; misplaced, misnamed or repeated ones become problems."""
    tree = WavTree(directory)
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.rglob("*.wav")):
        found.setdefault(path.stem, []).append(path)
    for uttid, paths in found.items():
        path = paths[0]
        speaker = speaker_of(uttid)
        if len(paths) > 1:
            tree.problems[uttid] = Rejection(uttid, "duplicate_id", "wav files " + ", ".join(map(str, paths)))
        elif speaker is None or path.parent.parent != directory:
            tree.problems[uttid] = Rejection(
                uttid, "bad_wav_name", f"{path} (expected {directory}/SPEAKER/BAC009SxxxxWxxxx.wav)"
            )
        elif speaker != path.parent.name:
            tree.problems[uttid] = Rejection(uttid, "speaker_mismatch", f"{path} belongs in {speaker}/")
        else:
            tree.wavs[uttid] = path
    return tree


def find_ner_transcript(ner_dir: Path, split: str) -> Path:
    """The split's own AISHELL-NER file, else the combined one; InputError if neither exists."""
    candidates = [ner_dir / NER_SPLIT_FILE.format(split=split), ner_dir / NER_COMBINED_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"no AISHELL-NER transcript for split {split}: looked for {', '.join(map(str, candidates))}")


def check_audio(uttid: str, path: Path, max_duration: float) -> Rejection | float:
    """The duration of a usable wav file, or why it is not usable (from the header and the file size)."""
    try:
        info = soundfile.info(str(path))
        truncated = wav_truncation(path)
    except (RuntimeError, OSError) as error:
        return Rejection(uttid, "bad_wav", f"{path}: {error}")
    if truncated:
        return Rejection(uttid, "truncated_wav", f"{path}: {truncated}")
    if info.frames <= 0:
        return Rejection(uttid, "bad_wav", f"{path}: no samples")
    if info.samplerate != SAMPLE_RATE:
        return Rejection(uttid, "bad_sample_rate", f"{path}: {info.samplerate} Hz")
    if info.channels != 1:
        return Rejection(uttid, "not_mono", f"{path}: {info.channels} channels")
    duration = info.frames / info.samplerate
    if duration > max_duration:
        return Rejection(uttid, "too_long", f"{path}: {duration:.2f} s > {max_duration:g} s")
    return duration


class SplitPreparer:
    """Decides, id by id, what one split keeps, and writes its data directory."""

    def __init__(self, split: str, tree: WavTree, aishell: Transcript, ner: Transcript,
                 ner_ids: set[str], max_duration: float) -> None:
        self.split = split
        self.tree = tree
        self.aishell = aishell
        self.ner = ner
        self.ner_ids = ner_ids
        self.max_duration = max_duration
        self.mismatches: list[str] = []

    def judge(self, uttid: str) -> Rejection | Utterance:
        """Keep the id, or reject it for the first reason that applies."""
        duplicate = self.aishell.duplicate_detail(uttid) or self.ner.duplicate_detail(uttid)
        if duplicate:
            return Rejection(uttid, "duplicate_id", duplicate)
        if uttid in self.tree.problems:
            return self.tree.problems[uttid]
        if uttid not in self.tree.wavs:
            return Rejection(uttid, "no_audio", f"no {self.tree.directory}/{speaker_of(uttid) or '*'}/{uttid}.wav")
        if uttid not in self.aishell.texts:
            return Rejection(uttid, "no_aishell_transcript", f"not in {self.aishell.path}")
        if uttid not in self.ner_ids:
            return Rejection(uttid, "no_ner_transcript", f"not in {self.ner.path}")
        text, aishell_text = self.ner.texts[uttid], self.aishell.texts[uttid]
        ner_normalized, aishell_plain = normalize_text(text), normalize_text(aishell_text)
        for normalized, source in ((ner_normalized, self.ner.path), (aishell_plain, self.aishell.path)):
            if not normalized:
                return Rejection(uttid, "empty_text", f"empty in {source}")
        line = self.ner.line_numbers[uttid][0]
        try:
            plain = parse_markup(ner_normalized, path=str(self.ner.path), line=line, utt_id=uttid).plain
        except MarkupError as error:
            return Rejection(uttid, "bad_markup", str(error))
        audio = check_audio(uttid, self.tree.wavs[uttid], self.max_duration)
        if isinstance(audio, Rejection):
            return audio
        if plain != aishell_plain:
            self.mismatches.append(f"{uttid} {plain} {aishell_plain}")
        wav = self.tree.wavs[uttid]  # in its speaker's directory (scan_wav_tree checked)
        return Utterance(uttid, wav.parent.name, wav, text, "".join(aishell_text.split()), audio)

    def prepare(self, ids: Iterable[str], malformed: Sequence[Rejection], out: Path,
                max_history: int) -> SplitReport:
        """Judge every id, write the data directory and its side files, then validate it."""
        kept: list[Utterance] = []
        rejections = list(malformed)
        for uttid in sorted(set(ids)):
            verdict = self.judge(uttid)
            (rejections if isinstance(verdict, Rejection) else kept).append(verdict)
        write_data_dir(out, kept, max_history)
        (out / "rejected.txt").write_text("".join(f"{r.line()}\n" for r in rejections), encoding="utf-8")
        (out / "text_mismatch.txt").write_text("".join(f"{m}\n" for m in self.mismatches), encoding="utf-8")
        if kept:
            problems = validate_data_dir(out)
            if problems:
                raise RuntimeError(f"{out}: the prepared data directory is invalid:\n" + "\n".join(problems))
        return SplitReport(self.split, len(kept), rejections, len(self.mismatches))


def history_lists(utterances: Sequence[Utterance], max_history: int) -> list[tuple[str, str]]:
    """``(uttid, "prev_1 ... prev_k")``: same-speaker predecessors in id order, most recent last."""
    previous: dict[str, list[str]] = {}
    lists = []
    for utt in sorted(utterances, key=lambda u: u.uttid):
        seen = previous.setdefault(utt.speaker, [])
        lists.append((utt.uttid, " ".join(seen[-max_history:] if max_history else [])))
        seen.append(utt.uttid)
    return lists


def write_data_dir(out: Path, utterances: Sequence[Utterance], max_history: int) -> None:
    """Write the Kaldi files of one split (sorted by id; spk2utt sorted by speaker)."""
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(utterances, key=lambda u: u.uttid)
    write_kaldi_text(out / "wav.scp", ((u.uttid, str(u.wav.resolve())) for u in ordered))
    write_kaldi_text(out / "text", ((u.uttid, u.text) for u in ordered))
    write_kaldi_text(out / "text.aishell", ((u.uttid, u.aishell_text) for u in ordered))
    write_kaldi_text(out / "utt2spk", ((u.uttid, u.speaker) for u in ordered))
    write_kaldi_text(out / "utt2dur", ((u.uttid, f"{u.duration:.4f}") for u in ordered))
    write_kaldi_text(out / "history", history_lists(ordered, max_history))
    spk2utt: dict[str, list[str]] = {}
    for utt in ordered:
        spk2utt.setdefault(utt.speaker, []).append(utt.uttid)
    write_kaldi_text(out / "spk2utt", ((spk, " ".join(utts)) for spk, utts in sorted(spk2utt.items())))


def speaker_splits(wav_root: Path) -> dict[str, str]:
    """Speaker directory name -> split, over every split directory on disk."""
    return {
        speaker.name: split
        for split in SPLITS if (wav_root / split).is_dir()
        for speaker in (wav_root / split).iterdir() if speaker.is_dir()
    }


def prepare_aishell_ner(aishell_dir: Path, ner_dir: Path, out: Path, splits: Sequence[str] = SPLITS,
                        max_duration: float = 30.0, max_history: int = 8) -> tuple[list[SplitReport], list[str]]:
    """Prepare every split; returns the reports and the unassigned transcript lines (also written out).

    Raises InputError before writing anything when a corpus file or directory is missing.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be among {SPLITS}, got {list(splits)}")
    if max_duration <= 0 or max_history < 0:
        raise ValueError(f"need max_duration > 0 and max_history >= 0, got {max_duration}, {max_history}")
    transcript_path = aishell_dir / AISHELL_TRANSCRIPT
    if not transcript_path.is_file():
        raise InputError(f"AISHELL-1 transcript {transcript_path} not found")
    for split in splits:
        if not (aishell_dir / "wav" / split).is_dir():
            raise InputError(f"AISHELL-1 wav directory {aishell_dir / 'wav' / split} not found")
    ner_paths = {split: find_ner_transcript(ner_dir, split) for split in splits}

    aishell = read_transcript(transcript_path)
    ner_files = {path: read_transcript(path) for path in set(ner_paths.values())}
    trees = {split: scan_wav_tree(aishell_dir / "wav" / split) for split in splits}
    on_disk = speaker_splits(aishell_dir / "wav")

    def split_of(uttid: str) -> str | None:
        for split, tree in trees.items():
            if uttid in tree.ids:
                return split
        return on_disk.get(speaker_of(uttid) or "")

    # Lines of the all-split files that no split can claim: reported once, here.
    unassigned: list[str] = []
    for transcript in [aishell] + [t for t in ner_files.values() if t.path.name == NER_COMBINED_FILE]:
        unassigned += [rejection.line() for rejection in transcript.malformed]
        unassigned += [f"{uttid} unassigned no speaker directory under {aishell_dir / 'wav'} ({transcript.path})"
                       for uttid in transcript.line_numbers if split_of(uttid) is None]
    out.mkdir(parents=True, exist_ok=True)
    (out / "unassigned.txt").write_text("".join(f"{line}\n" for line in unassigned), encoding="utf-8")

    reports = []
    for split in splits:
        ner = ner_files[ner_paths[split]]
        if ner.path.name == NER_COMBINED_FILE:
            ner_ids = {uttid for uttid in ner.line_numbers if split_of(uttid) == split}
            malformed: Sequence[Rejection] = []  # reported as unassigned
        else:
            ner_ids, malformed = set(ner.line_numbers), ner.malformed
        aishell_ids = {uttid for uttid in aishell.line_numbers if split_of(uttid) == split}
        preparer = SplitPreparer(split, trees[split], aishell, ner, ner_ids, max_duration)
        ids = trees[split].ids | aishell_ids | ner_ids
        reports.append(preparer.prepare(ids, malformed, out / split, max_history))
    return reports, unassigned


def format_summary(reports: Sequence[SplitReport], unassigned: Sequence[str]) -> str:
    """A table of total / kept / rejected per split, then the rejections by reason."""
    lines = [f"{'split':<8}{'total':>8}{'kept':>8}{'rejected':>10}{'mismatch':>10}"]
    for report in reports:
        lines.append(f"{report.split:<8}{report.total:>8}{report.kept:>8}{len(report.rejections):>10}"
                     f"{report.mismatches:>10}")
    for report in reports:
        counts = report.reason_counts()
        for reason in REASONS:
            if counts[reason]:
                lines.append(f"  {report.split}: {counts[reason]} rejected, {reason} ({REASONS[reason]})")
    if unassigned:
        lines.append(f"  {len(unassigned)} transcript lines belong to no split (see unassigned.txt)")
    return "\n".join(lines)
